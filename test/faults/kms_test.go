package faults

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

type kmsCase struct {
	name   string
	faults kmsfault.Faults
	// window: 0 = the fault lasts the whole run (preflight included); else
	// it starts once a few pages committed, lasts window, and is cleared.
	window time.Duration
	extra  []string
}

// Scenario 3: KMS faults through the kmsfault proxy. The run must lose no
// row, keep every one-second window under KMS_RATE_LIMIT (retries count),
// and recover soon after a fault clears.
func TestKMSFaults(t *testing.T) {
	t.Parallel()
	n := pick(2500, 20_000)
	limit := pick(500, 1000)
	// Throttling comes "for a while" (then clears): a page is all or
	// nothing, so under sustained 50% throttling every page waits for its
	// unluckiest call's backoff (up to 8 attempts, 5 s cap) and the run
	// crawls; the windows keep the short run within the CI budget.
	win := pick(4*time.Second, 30*time.Second)
	cases := []kmsCase{
		{name: fmt.Sprintf("throttle 10%% for %s", win), faults: kmsfault.Faults{Throttle: 0.10}, window: win},
		{name: fmt.Sprintf("throttle 50%% for %s", win), faults: kmsfault.Faults{Throttle: 0.50}, window: win},
		{name: fmt.Sprintf("throttle 100%% for %s", win*3/4), faults: kmsfault.Faults{Throttle: 1}, window: win * 3 / 4},
		{name: "latency 20ms + jitter 0-40ms", faults: kmsfault.Faults{Latency: 20 * time.Millisecond, Jitter: 40 * time.Millisecond}},
		{name: "5xx 20%", faults: kmsfault.Faults{Error5xx: 0.20}},
		{name: "connection resets 10%", faults: kmsfault.Faults{Reset: 0.10}},
		{name: "hang 100% for 2s, PAGE_TIMEOUT=4s", faults: kmsfault.Faults{Hang: 1}, window: 2 * time.Second,
			extra: []string{"PAGE_TIMEOUT=4s"}},
	}
	for _, c := range cases {
		t.Run(strings.NewReplacer(" ", "_", "%", "pct", ",", "").Replace(c.name), func(t *testing.T) {
			t.Parallel()
			scen := fmt.Sprintf("3 kms: %s (%d rows, KMS_RATE_LIMIT=%d)", c.name, n, limit)
			w := newWorld(t, worldOpts{})
			w.Seed(n, w.Old, 1)
			w.proxy.ResetCounts()
			extra := append([]string{"KMS_RATE_LIMIT=" + strconv.Itoa(limit)}, c.extra...)
			if c.window == 0 {
				w.proxy.Set(c.faults)
			}
			p := w.start("kms", extra...)
			if c.window > 0 {
				waitFor(t, "three committed pages", time.Minute, func() bool { return w.pages() >= 3 || p.exited() })
				if p.exited() {
					t.Fatalf("run ended before the fault: %s", p.status())
				}
				rotated0 := w.rotatedSoFar()
				w.proxy.Set(c.faults)
				time.Sleep(c.window) // the point: the fault lasts this window, then is lifted
				fwd, pages := kmsCalls(w.proxy.Counts()), w.pages()
				during := float64(w.rotatedSoFar()-rotated0) / c.window.Seconds()
				// Not a bound: how far throughput falls while the fault lasts
				// (each page waits for its unluckiest KMS call's backoff).
				figure(t, scen, "rows rotated per second while the fault lasts (informational)",
					fmt.Sprintf("budget %d KMS calls/s = %d rows/s without faults", limit, limit),
					fmt.Sprintf("%.0f rows/s", during), true)
				cleared := time.Now()
				w.proxy.Set(kmsfault.Faults{})
				if p.exited() {
					figure(t, scen, "time to recover after the fault clears (first KMS success / first page)",
						"< 10s (SDK backoff cap 5s, PAGE_TIMEOUT)", "0 (the run finished under the fault)", true)
				} else {
					var kmsBack time.Duration
					waitFor(t, "KMS answers again", time.Minute, func() bool {
						if kmsBack == 0 && kmsCalls(w.proxy.Counts()) > fwd {
							kmsBack = time.Since(cleared)
						}
						return kmsBack > 0 || p.exited()
					})
					waitFor(t, "a page commits again", time.Minute, func() bool { return w.pages() > pages || p.exited() })
					pageBack := time.Since(cleared)
					figure(t, scen, "time to recover after the fault clears (first KMS success / first page)",
						"< 10s (SDK backoff cap 5s, PAGE_TIMEOUT)", fmt.Sprintf("%s / %s",
							kmsBack.Round(time.Millisecond), pageBack.Round(time.Millisecond)), pageBack < 10*time.Second)
				}
			}
			p.wait(t, 5*time.Minute)
			w.proxy.Set(kmsfault.Faults{})
			figure(t, scen, "exit code", "0", p.status(), p.signal == 0 && p.code == exitOK)
			c0 := w.tally()
			var quarantined int64
			if hasState(w.DB) {
				_ = w.DB.QueryRow(context.Background(), `SELECT count(*) FROM reencrypt.quarantine`).Scan(&quarantined)
			}
			figEq(t, scen, "failed rows (quarantined or left under OLD)", 0, quarantined+c0.Old)
			peak := w.proxy.MaxRate()
			figure(t, scen, "KMS requests in the busiest second (retries included)",
				fmt.Sprintf("<= %d/s (KMS_RATE_LIMIT, +2%% window skew)", limit),
				fmt.Sprintf("%.0f/s; %d requests, %d faulted, in %s", peak, w.proxy.Total(),
					w.proxy.Total()-kmsCalls(w.proxy.Counts()), p.took().Round(time.Millisecond)),
				peak <= float64(limit)*1.02)
			w.checkDone(scen, int64(n))
		})
	}
}

// Scenario 3, in process: the engine under KMS faults leaves no goroutine
// behind once Run returned and its pool and client are closed.
func TestKMSFaultsNoGoroutineLeak(t *testing.T) {
	n := pick(600, 5000)
	scen := fmt.Sprintf("3 kms: in-process engine under throttling, 5xx, resets (%d rows)", n)
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	ctx := context.Background()
	for _, kv := range w.KMS.Env() {
		name, val, _ := strings.Cut(kv, "=")
		t.Setenv(name, val)
	}
	t.Setenv("AWS_ENDPOINT_URL_KMS", w.proxy.Endpoint())
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")

	ignore := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	}
	err := func() error {
		pool, err := pgxpool.New(ctx, w.URL)
		if err != nil {
			return err
		}
		defer pool.Close()
		budget := kmsclient.NewBudget(float64(pick(400, 1000)), 1)
		api, err := kmsclient.New(ctx, kmsclient.Options{Budget: budget, MaxBackoff: 200 * time.Millisecond})
		if err != nil {
			return err
		}
		w.proxy.Set(kmsfault.Faults{Throttle: 0.3, Error5xx: 0.1, Reset: 0.05, Jitter: 5 * time.Millisecond})
		defer w.proxy.Set(kmsfault.Faults{})
		cache := kmsclient.NewCache(1024, time.Minute)
		defer cache.Purge()
		kc := kmsclient.NewClient(api, "payment_methods", cache)
		checked, err := batch.Preflight(ctx, pool, kc, batch.PreflightOptions{Spec: refSpec(), OldRef: w.Old.ARN, NewRef: w.New.ARN, Namespace: "payment_methods", Mode: batch.Rekey})
		if err != nil {
			return err
		}
		store := checkpoint.New(pool, "reencrypt")
		if err := store.Migrate(ctx); err != nil {
			return err
		}
		eng, err := batch.New(batch.Config{Table: checked.Table, Old: checked.Old, New: checked.New,
			BatchSize: 100, Ranges: 8, LeaseTTL: 2 * time.Second, StopGrace: time.Second, Workers: 8, Owner: "leak-test"},
			batch.Deps{DB: pool, Store: store, KMS: kc, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return err
		}
		sum, err := eng.Run(ctx)
		t.Logf("in-process run: %+v", sum.Process)
		if closer, ok := api.(interface{ CloseIdleConnections() }); ok {
			closer.CloseIdleConnections()
		}
		return err
	}()
	if err != nil {
		t.Fatalf("in-process run: %v", err)
	}
	_ = w.proxy.Close() // its server-side connection goroutines go with it
	leak := goleak.Find(ignore...)
	result := "none"
	if leak != nil {
		result = leak.Error()
	}
	figure(t, scen, "goroutines left after Run (goleak)", "none", result, leak == nil)
	w.checkDone(scen, int64(n))
}
