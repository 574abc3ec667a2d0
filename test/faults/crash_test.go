package faults

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

// redoBound is the most KMS calls one kill can cost: the pages in flight
// (RANGE_WORKERS=2 pages of BATCH_SIZE=100 Decrypts plus one GenerateDataKey
// each: one data key per legacy row) and one more preflight (2 DescribeKey,
// the round trip's GenerateDataKey and Decrypt, up to 3 sample Decrypts).
const redoBound = 2*(100+1) + 7

// reference rotates n fresh rows (rowsPerKey rows per legacy data key) once,
// without faults, with the same settings, and returns the KMS requests the
// run made and how long it took: the baseline of "KMS calls redone".
func reference(t *testing.T, n, rowsPerKey int, extra ...string) (calls int64, took time.Duration) {
	t.Helper()
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, rowsPerKey)
	w.proxy.ResetCounts()
	p := w.run("reference", 10*time.Minute, extra...)
	p.expectExit(t, exitOK)
	return kmsCalls(w.proxy.Counts()), p.took()
}

// Scenario 1: kill -9 at random moments, rerunning after each kill, then to
// completion.
func TestCrashStorm(t *testing.T) {
	t.Parallel()
	n, kills := pick(3000, 200_000), pick(5, 50)
	rate := pick("1500", "0") // stretch the short run so that kills land mid-run
	scen := fmt.Sprintf("1 crash storm (%d rows, %d kill -9)", n, kills)
	extra := []string{"KMS_RATE_LIMIT=" + rate, "RANGES=16"}

	clean, _ := reference(t, n, 1, extra...)

	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	w.proxy.ResetCounts()
	killed, partial, runs := 0, 0, 0
	var worst pageState
	for killed < kills {
		runs++
		// Each kill lets the process rotate a random number of rows, on
		// average an even share of what is left for the kills to come, and
		// lands 0-100 ms after that (at least 150 ms after the start): the
		// kills spread over the run on any machine, at any load. The last
		// sixth of the rows is kept for after the kills: a target near the
		// end let the process finish before the kill came (CI, stop 25).
		done := w.rotatedSoFar()
		limit := int64(n) - int64(n)/6
		share := max(limit-done, 0) / int64(kills-killed+1)
		target := min(done+rand.N(2*share+1), limit)
		p := w.start(fmt.Sprintf("storm#%d", runs), extra...)
		earliest := time.Now().Add(150 * time.Millisecond)
		testbed.Poll(10*time.Minute, func() bool {
			return p.exited() || (!time.Now().Before(earliest) && w.rotatedSoFar() >= target)
		})
		select {
		case <-p.done:
		case <-time.After(rand.N(100 * time.Millisecond)):
			p.kill(syscall.SIGKILL)
			<-p.done
		}
		if p.signal == 0 {
			p.expectExit(t, exitOK)
			break // finished before the kill came
		}
		killed++
		if a := w.readAtomic(); !a.ok() {
			partial++
			worst = a
			t.Logf("after kill %d: %s", killed, a)
		}
	}
	final := w.run("storm-final", 10*time.Minute, extra...)
	final.expectExit(t, exitOK)

	figure(t, scen, "kill -9 delivered mid-run", fmt.Sprintf(">= %d", kills), killed, killed >= kills)
	detail := fmt.Sprint(partial)
	if partial > 0 {
		detail += " (last: " + worst.String() + ")"
	}
	figure(t, scen, "kills that left a page in part or twice", "0", detail, partial == 0)
	w.checkDone(scen, int64(n))
	total := kmsCalls(w.proxy.Counts())
	perKill := float64(total-clean) / float64(max(killed, 1))
	bound := redoBound
	figure(t, scen, "KMS calls redone per kill", fmt.Sprintf("<= %d (2 pages in flight + a preflight)", bound),
		fmt.Sprintf("%.1f (%d calls vs %d in a clean run)", perKill, total, clean), perKill <= float64(bound))
}

// Scenario 1, chosen points: the process kills itself (the batch.Hooks that
// cmd/reencrypt-faults installs) after the KMS work of a page, before its
// UPDATE, before its COMMIT and just after it. After each crash every page
// is all or nothing; a rerun finishes.
func TestCrashPoints(t *testing.T) {
	t.Parallel()
	n := pick(2000, 20_000)
	scen := fmt.Sprintf("1 crash points (%d rows)", n)
	extra := []string{"RANGES=8"}
	clean, _ := reference(t, n, 1, extra...)

	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	w.proxy.ResetCounts()
	crashes := 0
	for i, point := range []string{"after_kms", "before_update", "before_commit", "after_commit"} {
		before := w.readAtomic()
		after := 1 + i%2 // let a page or two commit first
		p := w.run("crash-at-"+point, 5*time.Minute, append(extra,
			"REENCRYPT_CRASH_AT="+point, fmt.Sprintf("REENCRYPT_CRASH_AFTER=%d", after))...)
		killed := p.signal == syscall.SIGKILL
		if killed {
			crashes++
		}
		figure(t, scen, "process killed at "+point, "killed by SIGKILL", p.status(), killed)
		a := w.readAtomic()
		figure(t, scen, "after a crash at "+point+": page all or nothing", "audit = under NEW = checkpoint, no partial page",
			a.String(), a.ok())
		if point == "after_commit" {
			// The page whose COMMIT returned is there although the process
			// died before it could note it anywhere.
			figure(t, scen, "rows committed by the run killed just after COMMIT", "> 0",
				a.New-before.New, a.New > before.New)
		}
	}
	final := w.run("after-crash-points", 5*time.Minute, extra...)
	final.expectExit(t, exitOK)
	w.checkDone(scen, int64(n))
	total := kmsCalls(w.proxy.Counts())
	perKill := float64(total-clean) / float64(max(crashes, 1))
	bound := redoBound
	figure(t, scen, "KMS calls redone per crash", fmt.Sprintf("<= %d (2 pages in flight + a preflight)", bound),
		fmt.Sprintf("%.1f (%d calls vs %d in a clean run)", perKill, total, clean), perKill <= float64(bound))
}
