// Command online measures the harm a rotation does to a live payment API
// that shares its database and its KMS quota (issue 11, `make
// bench-online`). It starts a durable primary and a real streaming replica
// (pg_basebackup on loopback), local-kms behind a proxy that enforces a KMS
// quota Q like an account's, and a simulated tokenization API sending a
// fixed rate of requests. Then, side by side in one run, with the API
// running throughout:
//
//	baseline  the API alone
//	unpaced   a rotation as before issue 11: static KMS budget (KMS_ADAPTIVE=false), no replica watch
//	default   a rotation at default settings (adaptive KMS budget, MAX_REPLICA_LAG 5s on REPLICA_URLS)
//	gentle    a rotation with MAX_REPLICA_LAG=1s and the adaptive budget
//	pause     two pods; `reencrypt pause` a quarter in, `reencrypt resume` 3 s later
//
// Every rotation is `reencrypt run MODE=rewrap` with KMS_RATE_LIMIT=Q (the
// user's guess of the whole quota: too high, since the API uses part of
// it), alternating direction between OLD and NEW so every phase has the
// same legacy data (a data key per row) to rotate.
//
//	go run ./bench/online                 # 30,000 rows, 30 s baseline, quota 700/s, API 200/s
//	go run ./bench/online -smoke          # CI: pause obeyed, 0 API errors, every row rotated; no timing judged
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type options struct {
	rows     int
	baseline time.Duration
	apiRate  float64
	quota    float64
	batch    int
	smoke    bool
	jsonOut  string
	bin      string
}

func main() { os.Exit(realMain()) }

// realMain is main with an exit code, so that its deferred calls run.
func realMain() int {
	o := options{}
	flag.IntVar(&o.rows, "rows", 30_000, "legacy rows (one data key each) every rotation phase rotates")
	flag.DurationVar(&o.baseline, "baseline", 30*time.Second, "length of the API-alone phase")
	flag.Float64Var(&o.apiRate, "api-rate", 200, "API requests per second (70 % reads, 30 % writes)")
	flag.Float64Var(&o.quota, "quota", 700, "the KMS quota Q the proxy enforces, requests/s for engine and API together")
	flag.IntVar(&o.batch, "batch", 500, "BATCH_SIZE of the rotations")
	flag.BoolVar(&o.smoke, "smoke", false, "CI size: 3,000 rows, short phases; checks only what is deterministic")
	flag.StringVar(&o.jsonOut, "json", "", "write the report as JSON to this file")
	flag.StringVar(&o.bin, "bin", "", "reencrypt binary (default: go build ./cmd/reencrypt)")
	flag.Parse()
	if o.smoke {
		o.rows, o.baseline, o.apiRate, o.quota, o.batch = 3_000, 5*time.Second, 50, 400, 100
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o)
	if rep != nil {
		rep.print(os.Stdout, o)
		if o.jsonOut != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, "bench-online:", werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-online:", err)
		return 1
	}
	if len(rep.Failures) > 0 {
		fmt.Fprintf(os.Stderr, "\nbench-online: FAILED:\n  %s\n", strings.Join(rep.Failures, "\n  "))
		return 1
	}
	fmt.Println("\nbench-online: OK")
	return 0
}
