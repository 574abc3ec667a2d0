// Command bench is reencrypt's side-by-side benchmark (issue 5): on one
// throwaway durable Postgres and one KMS endpoint it runs, in one invocation
// and in alternating order over several rounds, each on a fresh copy of the
// same seeded table:
//
//	server-ceiling  the page work done by Postgres alone (PL/pgSQL, no client)
//	server-locked   the same plus the engine's id-ordered row locks
//	client-min      the same page work driven by a minimal Go client (client.go)
//	pg-ceiling   the engine's own path in process against an instant fake KMS (fakekms.go)
//	kms-ceiling  KMS Decrypt (and ReEncrypt) operations per second at the engine's concurrency
//	naive        one row at a time: read, Decrypt + GenerateDataKey, one transaction per row
//	rekey        `reencrypt run` MODE=rekey on legacy data (one data key per row)
//	rewrap       `reencrypt run` MODE=rewrap on the same legacy data
//	second       `reencrypt run` MODE=rekey again, on what a rekey produced (one data key per page)
//
// and prints a table (medians over rounds) plus a JSON file under
// bench/results/. See bench/README.md for what each number means.
//
//	go run ./bench                                  # 200,000 rows, 3 rounds
//	go run ./bench -rows 1000000
//	go run ./bench -rows 30000 -only rekey,rewrap -kms-latency 10ms -kms-jitter 2ms -kms-budget 1000
//	go run ./bench -smoke                           # CI: correctness and KMS calls per row only
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Scenario names, in their round-1 order.
const (
	scServer = "server-ceiling"
	scLocked = "server-locked"
	scClient = "client-min"
	scPG     = "pg-ceiling"
	scKMS    = "kms-ceiling"
	scNaive  = "naive"
	scRekey  = "rekey"
	scRewrap = "rewrap"
	scSecond = "second"
	// scSecondB is the second rotation by the -bin-b build, in the same
	// rounds: an A/B of two engine builds measured side by side.
	scSecondB = "second-b"
)

var allScenarios = []string{scServer, scLocked, scClient, scPG, scKMS, scNaive, scRekey, scRewrap, scSecond, scSecondB}

type options struct {
	rows        int
	rounds      int
	batch       int
	kmsLatency  time.Duration
	kmsJitter   time.Duration
	kmsBudget   float64
	only        []string
	jsonOut     string
	smoke       bool
	kmsEndpoint string // "local" or "env"
	proxy       bool
	naiveRows   int
	kmsOps      int
	verify      string // "auto", "full", "sample"
	bin         string
	binB        string
	keys        []string
	keep        bool
	cpuProfile  string
	waitIdle    time.Duration
	rssBase     string
	statements  bool
	walStats    bool
}

func main() {
	os.Exit(realMain())
}

func realMain() int {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	b, err := setup(ctx, o)
	if b != nil {
		defer b.close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: setup:", err)
		return 1
	}
	rep, err := b.runAll(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if rep == nil {
			return 1
		}
	}
	rep.print(os.Stdout)
	if o.jsonOut != "" {
		if werr := rep.writeJSON(o.jsonOut); werr != nil {
			fmt.Fprintln(os.Stderr, "bench: write json:", werr)
			return 1
		}
		fmt.Printf("\nJSON: %s\n", o.jsonOut)
	}
	if err != nil {
		return 1
	}
	if o.smoke && len(rep.Failures) > 0 {
		fmt.Fprintf(os.Stderr, "\nbench -smoke: FAILED (%d check(s)):\n  %s\n", len(rep.Failures), strings.Join(rep.Failures, "\n  "))
		return 1
	}
	if len(rep.Failures) > 0 {
		fmt.Fprintf(os.Stderr, "\nbench: correctness checks failed:\n  %s\n", strings.Join(rep.Failures, "\n  "))
		return 1
	}
	if o.smoke {
		fmt.Println("\nbench -smoke: OK (every row rotated and correct, KMS calls per row as expected; timings not asserted)")
	}
	return 0
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.rows, "rows", 200_000, "tokens to seed (legacy: one data key per row)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; the order of the scenarios alternates (reversed every other round)")
	fs.IntVar(&o.batch, "batch", 1000, "BATCH_SIZE: rows per page")
	fs.DurationVar(&o.kmsLatency, "kms-latency", 0, "latency the proxy adds to every KMS request (e.g. 10ms)")
	fs.DurationVar(&o.kmsJitter, "kms-jitter", 0, "uniform extra latency in [0, jitter) per KMS request")
	fs.Float64Var(&o.kmsBudget, "kms-budget", 0, "KMS_RATE_LIMIT for the engine and the in-process scenarios, requests/s (0 = unlimited, for ceiling comparisons)")
	only := fs.String("only", "", "comma list of scenarios to run: "+strings.Join(allScenarios, ","))
	fs.StringVar(&o.jsonOut, "json-out", "", "JSON output (default bench/results/<date>-<rows>.json; none with -smoke unless given)")
	fs.BoolVar(&o.smoke, "smoke", false, "CI size (3,000 rows, 1 round, BATCH_SIZE 200, RANGES 4, naive on 1,000 rows): check every row and the KMS calls per row, exit non-zero if wrong; never asserts timings")
	fs.StringVar(&o.kmsEndpoint, "kms-endpoint", "local", "local: start local-kms; env: use AWS_ENDPOINT_URL_KMS and the SDK's usual variables (moto, LocalStack, real AWS)")
	fs.BoolVar(&o.proxy, "kms-proxy", true, "put the counting/delaying proxy in front of the KMS endpoint (turn off only for an endpoint that refuses a proxied Host header)")
	fs.IntVar(&o.naiveRows, "naive-rows", 20_000, "rows the naive baseline rotates per round (it runs at ~1k rows/s; 0 = all)")
	fs.IntVar(&o.kmsOps, "kms-ops", 60_000, "operations per kind the KMS ceiling times per round (0 = one per row)")
	fs.StringVar(&o.verify, "verify", "auto", "correctness check after each run: full (open every token), sample (kid of every row, open 500), auto (full with -smoke)")
	fs.StringVar(&o.bin, "bin", "", "prebuilt reencrypt binary (default: go build ./cmd/reencrypt once)")
	fs.StringVar(&o.binB, "bin-b", "", "a second prebuilt reencrypt binary: adds scenario second-b, the second rotation by this build, in the same rounds (A/B)")
	keys := fs.String("keys", "", "existing keys OLD,NEW,NEW2 to use instead of creating three (real AWS)")
	fs.BoolVar(&o.keep, "keep", false, "keep the databases and servers' temp dirs (debugging)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "profile mode: run the rekey engine in-process once on a fresh copy and write a CPU profile here (no table)")
	fs.DurationVar(&o.waitIdle, "wait-idle", 30*time.Second, "before each scenario, wait up to this long for other processes to leave the CPUs idle (0 = don't)")
	fs.StringVar(&o.rssBase, "rss-baseline", "", "JSON of an earlier run (e.g. at 100,000 rows): check each engine scenario's peak RSS is within 1.25x of its peak there")
	fs.BoolVar(&o.walStats, "walstats", false, "print each scenario's WAL by record type (pg_walinspect, Postgres 15+; read right after the scenario)")
	fs.BoolVar(&o.statements, "statements", false, "load pg_stat_statements and print each scenario's Postgres time by statement (costs some server CPU: compare runs with the same setting)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.smoke {
		if !set["rows"] {
			o.rows = 3000
		}
		if !set["rounds"] {
			o.rounds = 1
		}
		if !set["naive-rows"] {
			o.naiveRows = 1000 // it is the slowest part, and its KMS count is exact at any size
		}
		if !set["kms-ops"] {
			o.kmsOps = 0
		}
		if !set["wait-idle"] {
			o.waitIdle = 0
		}
		if !set["batch"] {
			o.batch = 200 // with RANGES=4: ~750 rows per range, several pages each
		}
	}
	if *only != "" {
		for _, s := range strings.Split(*only, ",") {
			s = strings.TrimSpace(s)
			if !contains(allScenarios, s) {
				return nil, fmt.Errorf("-only: unknown scenario %q (want some of %s)", s, strings.Join(allScenarios, ","))
			}
			if !contains(o.only, s) {
				o.only = append(o.only, s)
			}
		}
	} else {
		for _, s := range allScenarios {
			if s != scSecondB || o.binB != "" {
				o.only = append(o.only, s)
			}
		}
	}
	if contains(o.only, scSecondB) != (o.binB != "") {
		return nil, fmt.Errorf("scenario %s and -bin-b go together", scSecondB)
	}
	// Keep the canonical order whatever order -only listed them in.
	var ordered []string
	for _, s := range allScenarios {
		if contains(o.only, s) {
			ordered = append(ordered, s)
		}
	}
	o.only = ordered
	if *keys != "" {
		o.keys = strings.Split(*keys, ",")
		if len(o.keys) != 3 {
			return nil, fmt.Errorf("-keys wants three keys OLD,NEW,NEW2")
		}
	}
	switch {
	case o.rows < 1:
		return nil, fmt.Errorf("-rows %d: want >= 1", o.rows)
	case o.rounds < 1:
		return nil, fmt.Errorf("-rounds %d: want >= 1", o.rounds)
	case o.batch < 1 || o.batch > 100_000:
		return nil, fmt.Errorf("-batch %d: want 1..100000", o.batch)
	case o.kmsBudget < 0:
		return nil, fmt.Errorf("-kms-budget %v: want >= 0", o.kmsBudget)
	case o.kmsEndpoint != "local" && o.kmsEndpoint != "env":
		return nil, fmt.Errorf("-kms-endpoint %q: want local or env", o.kmsEndpoint)
	case o.verify != "auto" && o.verify != "full" && o.verify != "sample":
		return nil, fmt.Errorf("-verify %q: want auto, full or sample", o.verify)
	}
	if o.verify == "auto" {
		o.verify = "sample"
		if o.smoke {
			o.verify = "full"
		}
	}
	if o.kmsEndpoint == "env" && os.Getenv("AWS_ENDPOINT_URL_KMS") == "" && o.proxy {
		return nil, fmt.Errorf("-kms-endpoint=env needs AWS_ENDPOINT_URL_KMS (the proxy forwards to it); for real AWS set it to https://kms.<region>.amazonaws.com, or pass -kms-proxy=false")
	}
	if !o.proxy && (o.kmsLatency > 0 || o.kmsJitter > 0) {
		return nil, fmt.Errorf("-kms-latency and -kms-jitter need the proxy (-kms-proxy=true)")
	}
	if o.jsonOut == "" && !o.smoke && o.cpuProfile == "" {
		root, err := moduleRoot()
		if err != nil {
			return nil, err
		}
		o.jsonOut = filepath.Join(root, "bench", "results", fmt.Sprintf("%s-%d.json", time.Now().Format("2006-01-02"), o.rows))
	}
	return o, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// moduleRoot walks up from the working directory to the go.mod of this module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/reencrypt/reencrypt") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run the bench from inside the reencrypt module (no go.mod of github.com/reencrypt/reencrypt above %s)", dir)
		}
		dir = parent
	}
}
