package faults

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// exitCodes lists the statuses of a world's processes whose name starts
// with prefix, in order ("exit 75, exit 0").
func (w *world) exitCodes(prefix string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var s []string
	for _, p := range w.procs {
		if strings.HasPrefix(p.name, prefix) && p.exited() {
			s = append(s, p.status())
		}
	}
	return strings.Join(s, ", ")
}

// Scenario 2a: pg_terminate_backend of every reencrypt connection about
// once a second while the run lasts.
func TestDBTerminateBackends(t *testing.T) {
	t.Parallel()
	n := pick(3000, 50_000)
	scen := fmt.Sprintf("2 db: pg_terminate_backend every 1s (%d rows)", n)
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	extra := []string{"KMS_RATE_LIMIT=" + pick("800", "4000")}

	stop := make(chan struct{})
	var terminated atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var k int64
			err := w.DB.QueryRow(context.Background(), `
				SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = 'reencrypt' AND datname = current_database()`).Scan(&k)
			if err == nil {
				terminated.Add(k)
			}
		}
	})
	// The terminations go on through the reruns: each run must either ride
	// them out or exit with the retry code.
	runs := w.runToEnd("terminate", 40, 5*time.Minute, extra...)
	close(stop)
	wg.Wait()

	figure(t, scen, "backends terminated", "> 0", terminated.Load(), terminated.Load() > 0)
	// Pages, claims and status reads retry a dropped connection, so the
	// first run rides the terminations out; a second run is tolerated for a
	// page unlucky six times in a row. Before claims retried, the 50,000-row
	// soak needed 40 runs that each died within a second.
	figure(t, scen, "runs until exit 0", "≤ 2 (the run rides them out)",
		fmt.Sprintf("%d: %s", runs, w.exitCodes("terminate")), runs <= 2)
	w.checkDone(scen, int64(n))
}

// Scenario 2b: an immediate Postgres shutdown (crash, then recovery) in the
// middle of a run, on a durable server.
func TestDBRestartImmediate(t *testing.T) {
	t.Parallel()
	n := pick(3000, 50_000)
	scen := fmt.Sprintf("2 db: immediate restart mid-run (%d rows)", n)
	w := newWorld(t, worldOpts{durable: true})
	w.Seed(n, w.Old, 1)
	extra := []string{"KMS_RATE_LIMIT=" + pick("800", "4000")}

	p := w.start("restart#1", extra...)
	waitFor(t, "a few committed pages", time.Minute, func() bool { return w.pages() >= 3 || p.exited() })
	if p.exited() {
		t.Fatalf("run finished before the restart: %s", p.status())
	}
	before := w.readAtomic()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	restartAt := time.Now()
	if err := w.pg.Restart(ctx, true); err != nil {
		t.Fatal(err)
	}
	restartTook := time.Since(restartAt)
	w.DB.Reset() // the test's own connections died with the server
	after := w.readAtomic()
	p.wait(t, 5*time.Minute)
	if p.signal != 0 || (p.code != exitOK && p.code != exitRetry) {
		p.expectExit(t, exitRetry)
	}
	runs := 1
	if p.code != exitOK {
		runs += w.runToEnd("restart-rerun", 5, 5*time.Minute, extra...)
	}
	figure(t, scen, "commits acknowledged before the crash and lost", "0",
		fmt.Sprintf("%d (rows under NEW %d before, %d after recovery; restart took %s)",
			max(before.New-after.New, 0), before.New, after.New, restartTook.Round(time.Millisecond)),
		after.New >= before.New && after.ok())
	figure(t, scen, "the run across the restart", "reconnects (exit 0) or exit 75 and a rerun finishes",
		fmt.Sprintf("%s; %d run(s) in all", p.status(), runs), true)
	w.checkDone(scen, int64(n))
}

// Scenario 2c: the connection is cut at the COMMIT of a page, by a TCP proxy
// in front of Postgres: before the COMMIT reaches the server (rolled back)
// or just after (committed, but the engine cannot know).
func TestDBCommitCut(t *testing.T) {
	t.Parallel()
	for _, mode := range []CutMode{CutBeforeCommit, CutAfterCommit} {
		t.Run(mode.String(), func(t *testing.T) {
			n := pick(2000, 20_000)
			scen := fmt.Sprintf("2 db: connection cut %s (%d rows)", strings.ReplaceAll(mode.String(), "_", " "), n)
			w := newWorld(t, worldOpts{})
			w.Seed(n, w.Old, 1)
			u, err := url.Parse(w.URL)
			if err != nil {
				t.Fatal(err)
			}
			px, err := StartPGProxy(u.Host)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = px.Close() })
			u.Host = px.Addr()
			w.dbURL = u.String()
			extra := []string{"KMS_RATE_LIMIT=" + pick("1000", "4000")}

			cuts := pick(1, 10)
			p := w.start("cut#1", extra...)
			waitFor(t, "a committed page", time.Minute, func() bool { return w.pages() >= 1 || p.exited() })
			px.Arm(mode, cuts)
			p.wait(t, 5*time.Minute)
			if p.signal != 0 || (p.code != exitOK && p.code != exitRetry) {
				p.expectExit(t, exitRetry)
			}
			first := w.readAtomic()
			figure(t, scen, "COMMITs cut", fmt.Sprint(cuts), px.Cuts(), px.Cuts() == cuts)
			if p.code == exitOK {
				// Exit 0 means every row under OLD was rotated (docs/design.md).
				figEq(t, scen, "rows left under OLD by the run that exited 0", 0, first.Old)
			}
			figure(t, scen, "after the cut run: pages all or nothing, checkpoint agrees with the rows",
				"audit = under NEW = checkpoint, no partial page", first.String(), first.ok())
			runs := 1
			if p.code != exitOK || first.Old > 0 {
				runs += w.runToEnd("cut-rerun", 5, 5*time.Minute, extra...)
			}
			figure(t, scen, "the run across the cut", "reconnects (exit 0) or exit 75 and a rerun finishes",
				fmt.Sprintf("%s; %d run(s) in all", p.status(), runs), true)
			w.checkDone(scen, int64(n))
		})
	}
}

// sortedKeys is for stable logs.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Scenario 2d: the database connection is lost at the start of a run,
// outside any page: while the bookkeeping schema is created, while the run
// is joined, while the database clock is read. Like a loss mid-page, that is
// a failure worth a retry (exit 75, docs/design.md), and the rerun finishes.
func TestDBLostAtStart(t *testing.T) {
	t.Parallel()
	// The schema step is not retried: the run exits 75 and the Job reruns
	// it. Reading the clock and joining are retried in the run like a page.
	for _, c := range []struct {
		name, stmt string
		retried    bool
	}{
		{"creating the bookkeeping schema", "pg_advisory_lock", false},
		{"joining the run", "ON CONFLICT (run_id) DO NOTHING", true},
		{"reading the database clock", "SELECT now()", true},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			n := pick(300, 3000)
			scen := "2 db: connection lost while " + c.name
			w := newWorld(t, worldOpts{})
			w.Seed(n, w.Old, 1)
			u, err := url.Parse(w.URL)
			if err != nil {
				t.Fatal(err)
			}
			px, err := StartPGProxy(u.Host)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = px.Close() })
			u.Host = px.Addr()
			w.dbURL = u.String()
			px.CutOn(c.stmt, 1)
			p := w.run("lost", 2*time.Minute)
			figEq(t, scen, "connections cut", 1, int64(px.Cuts()))
			if c.retried {
				figure(t, scen, "exit code", "0 (retried in the run)", fmt.Sprintf("%s %s", p.status(), tail(p.failure(), 120)),
					p.signal == 0 && p.code == exitOK)
			} else {
				figure(t, scen, "exit code", "75 (retry: database gone)", fmt.Sprintf("%s %s", p.status(), tail(p.failure(), 120)),
					p.signal == 0 && p.code == exitRetry)
			}
			r := w.run("rerun", 2*time.Minute)
			figure(t, scen, "rerun", "exit 0", r.status(), r.signal == 0 && r.code == exitOK)
			w.checkDone(scen, int64(n))
		})
	}
}
