package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
)

// Scenario 6: SIGTERM during a page, as Kubernetes sends it before the
// Job's terminationGracePeriodSeconds (60 s in deploy/job.yaml) runs out.
// "finishes": the page in flight can finish within STOP_GRACE and commits.
// "rolled back": KMS answers take longer than STOP_GRACE, the page is
// rolled back. Either way the process exits 75 within STOP_GRACE plus a few
// seconds, releases its leases, leaves every page whole, and a rerun ends.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	const grace = time.Second // STOP_GRACE in world.env
	for _, variant := range []string{"page finishes", "page rolled back"} {
		t.Run(variant, func(t *testing.T) {
			t.Parallel()
			n := pick(3000, 10_000)
			scen := fmt.Sprintf("6 SIGTERM mid-page, %s (%d rows, STOP_GRACE=%s)", variant, n, grace)
			w := newWorld(t, worldOpts{})
			w.Seed(n, w.Old, 1)
			// Slow pages (about 3 a second per range worker): "pages committed
			// after SIGTERM" counts from the moment the signal is sent, and a
			// loaded machine can take a while to run the process's handler.
			extra := []string{"KMS_RATE_LIMIT=600"}
			p := w.start("sigterm", extra...)
			waitFor(t, "two committed pages", time.Minute, func() bool { return w.pages() >= 2 || p.exited() })
			if variant == "page rolled back" {
				w.proxy.Set(kmsfault.Faults{Latency: 5 * time.Second}) // outlasts STOP_GRACE
				// The point: a page starts and stalls in the slow KMS before
				// the signal (the proxy has no in-flight count to wait on).
				time.Sleep(300 * time.Millisecond)
			} else {
				time.Sleep(rand.N(300 * time.Millisecond)) // the point: SIGTERM at a random moment mid-run
			}
			if p.exited() {
				t.Fatalf("run ended before SIGTERM: %s", p.status())
			}
			pagesBefore := w.pages()
			termAt := time.Now()
			p.kill(syscall.SIGTERM)
			p.wait(t, time.Minute)
			took := p.ended.Sub(termAt)
			w.proxy.Set(kmsfault.Faults{})

			figure(t, scen, "seconds from SIGTERM to exit", "< STOP_GRACE + 4s and < 60s (terminationGracePeriodSeconds)",
				fmt.Sprintf("%.2f", took.Seconds()), took < grace+4*time.Second)
			figure(t, scen, "exit code", "75 (retry)", p.status(), p.signal == 0 && p.code == exitRetry)
			committed := w.pages() - pagesBefore
			if variant == "page rolled back" {
				figEq(t, scen, "pages committed after SIGTERM (rolled back)", 0, committed)
			} else {
				figure(t, scen, "pages committed after SIGTERM (the pages in flight)", "<= 2 (RANGE_WORKERS)", committed, committed <= 2)
			}
			var held int64
			_ = w.DB.QueryRow(context.Background(), `SELECT count(*) FROM reencrypt.ranges WHERE state = 'running'`).Scan(&held)
			figEq(t, scen, "leases still held after the exit", 0, held)
			w.checkAtomic(scen)
			w.runToEnd("rerun", 3, 5*time.Minute, extra...)
			w.checkDone(scen+", then rerun", int64(n))
		})
	}
}
