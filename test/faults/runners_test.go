package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// metricsAddr is the address the process logged it serves /metrics on.
func (p *proc) metricsAddr() string {
	for _, l := range p.logLines() {
		if l["msg"] == "serving metrics" {
			s, _ := l["addr"].(string)
			return s
		}
	}
	return ""
}

// scrape fetches /metrics from a running process ("" when it cannot).
func (p *proc) scrape() string {
	addr := p.metricsAddr()
	if addr == "" {
		return ""
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

var fencedRe = regexp.MustCompile(`(?m)^reencrypt_fenced_commits_total (\S+)$`)

func fencedMetric(body string) int {
	m := fencedRe.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	return int(f)
}

// Scenario 5: a paused pod wakes after its lease was taken over. Runner A is
// stopped (SIGSTOP) mid-page, its leases expire, runner B claims its ranges,
// then A resumes (SIGCONT) with its page in flight. The fence must refuse A,
// and no row may be rotated twice.
func TestPausedRunnerIsFenced(t *testing.T) {
	t.Parallel()
	n := pick(3000, 30_000)
	scen := fmt.Sprintf("5 two runners: paused pod wakes after takeover (%d rows)", n)
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	extra := []string{"RANGES=4", "KMS_RATE_LIMIT=" + pick("500", "2000"), "METRICS_ADDR=127.0.0.1:0"}

	a := w.start("runner-A", extra...)
	waitFor(t, "A commits pages", time.Minute, func() bool { return w.pages() >= 2 || a.exited() })
	if a.exited() {
		t.Fatalf("A ended early: %s", a.status())
	}
	// Pause A while it holds a range (it may be between two claims).
	var held map[int]int64
	var stoppedAt time.Time
	for try := 0; ; try++ {
		a.kill(syscall.SIGSTOP)
		stoppedAt = time.Now()
		if held = w.heldBy(a); len(held) > 0 {
			break
		}
		if try == 20 || a.exited() {
			t.Fatalf("A holds no range to be paused with (%s)", a.statusNow())
		}
		a.kill(syscall.SIGCONT)
		time.Sleep(50 * time.Millisecond) // the point: let A run until it claims a range, then stop it again
	}
	// Expire A's leases in the database instead of waiting out LEASE_TTL,
	// then start B. If A was stopped inside a page transaction it holds the
	// range row's lock: the UPDATE waits until the server ends that
	// transaction (idle_in_transaction_session_timeout, LEASE_TTL/2).
	w.expireLeases(held)
	b := w.start("runner-B", extra...)
	waitFor(t, "B takes over every range A held", time.Minute, func() bool {
		for rng, token := range held {
			var cur int64
			var state string
			if err := w.DB.QueryRow(context.Background(),
				`SELECT lease_token, state FROM reencrypt.ranges WHERE range_no = $1 AND pass = 1`, rng).Scan(&cur, &state); err != nil {
				t.Fatal(err)
			}
			if cur == token && state != "done" {
				return false
			}
		}
		return true
	})
	a.kill(syscall.SIGCONT)
	paused := time.Since(stoppedAt)

	// Scrape A's metrics until it exits: the last scrape holds the count.
	fenced := 0
	for !a.exited() {
		if f := fencedMetric(a.scrape()); f > fenced {
			fenced = f
		}
		time.Sleep(100 * time.Millisecond) // scrape interval while A runs (the scrapes are what is measured)
	}
	a.wait(t, 3*time.Minute)
	b.wait(t, 3*time.Minute)
	lost := a.count("lease lost")
	figure(t, scen, "A's work refused by the fence after it woke (log \"lease lost\" / reencrypt_fenced_commits_total)", ">= 1",
		fmt.Sprintf("%d / %d (A held ranges %v, paused %s)", lost, fenced, sortedKeys(heldString(held)), paused.Round(time.Millisecond)),
		lost >= 1 || fenced >= 1)
	figure(t, scen, "exit codes A / B", "0 or 75 / 0", a.status()+" / "+b.status(),
		a.signal == 0 && (a.code == exitOK || a.code == exitRetry) && b.signal == 0 && b.code == exitOK)
	_, dup := w.auditCounts(w.DB, "token_reencrypted")
	figEq(t, scen, "rows rotated twice (audit rows per row > 1)", 0, dup)
	w.checkDone(scen, int64(n))
}

// expireLeases makes the leases held (range → lease token, of pass 1)
// expired now, as if their TTL had passed.
func (w *world) expireLeases(held map[int]int64) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for rng, token := range held {
		if _, err := w.DB.Exec(ctx, `UPDATE reencrypt.ranges SET lease_expires_at = now() - interval '1s'
			WHERE pass = 1 AND range_no = $1 AND lease_token = $2 AND state = 'running'`, rng, token); err != nil {
			w.t.Fatalf("expire the lease on range %d: %v", rng, err)
		}
	}
}

// heldBy maps the ranges p holds (running, owner naming its pid) to their
// lease tokens.
func (w *world) heldBy(p *proc) map[int]int64 {
	w.t.Helper()
	rs, err := w.DB.Query(context.Background(), `
		SELECT range_no, lease_token FROM reencrypt.ranges
		WHERE pass = 1 AND state = 'running' AND owner LIKE '%/' || $1 || '/%'`, strconv.Itoa(p.cmd.Process.Pid))
	if err != nil {
		w.t.Fatal(err)
	}
	defer rs.Close()
	held := map[int]int64{}
	for rs.Next() {
		var r int
		var tok int64
		if err := rs.Scan(&r, &tok); err != nil {
			w.t.Fatal(err)
		}
		held[r] = tok
	}
	return held
}

func heldString(m map[int]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		out[strings.TrimSpace(strconv.Itoa(k))] = v
	}
	return out
}
