package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/testbed"
)

// TestPauseResumeThrottle: an operator steers a running Job from another
// shell. `pause` returns once the pod reports paused, nothing is rotated
// while paused, status says so and who did it, `throttle` caps the KMS
// rate, and `resume` lets the run finish with every row rotated once.
func TestPauseResumeThrottle(t *testing.T) {
	t.Parallel()
	const rows = 3_000
	e := fixture.New(t, "uuid")
	ids := e.Seed(rows, e.Old, 1)
	env := cliEnv(e, "BATCH_SIZE=50", "KMS_CONCURRENCY=4", "KMS_RATE_LIMIT=300", "LEASE_TTL=10s", "STOP_GRACE=2s")
	p := startCLI(t, env, "run")
	testbed.Poll(time.Minute, func() bool { return rotated(t, e) >= 300 })

	op, code := runCLI(t, env, time.Minute, "pause", "--reason", "incident 42")
	if code != exitOK {
		t.Fatalf("pause: exit %d\n%s%s", code, op.stdout, tail(op.stderr.String()))
	}
	if out := op.stdout.String(); !strings.Contains(out, "paused") || !strings.Contains(out, "incident 42") {
		t.Errorf("pause does not say what it did:\n%s", out)
	}
	// The pod reports paused when one range worker is held; a page another
	// had in flight may still commit. Then nothing may move.
	atPause := rotated(t, e)
	since := time.Now()
	testbed.WaitFor(t, "the count to stop moving", time.Minute, func() bool {
		if n := rotated(t, e); n != atPause {
			since, atPause = time.Now(), n
		}
		return time.Since(since) >= 500*time.Millisecond
	})
	// Then the pod, alive, reports itself paused for a further heartbeat
	// period (its pacer polls every second) while the count stays put: a
	// wait on the pod's own heartbeats, not a fixed pause.
	settled := e.Int(`SELECT (extract(epoch FROM now()) * 1000)::int8`)
	testbed.WaitFor(t, "a paused heartbeat a second after the count settled", 30*time.Second, func() bool {
		return e.Int(`SELECT count(*) FROM reencrypt.pacers WHERE table_name = 'public.payment_methods' AND state = 'paused'
			AND seen_at >= to_timestamp($1 / 1000.0) + interval '1 second'`, settled) > 0
	})
	if n := rotated(t, e); n != atPause {
		t.Errorf("%d rows rotated while paused", n-atPause)
	}
	if n := rotated(t, e); n >= rows {
		t.Fatalf("the run finished before the pause: the test proves nothing")
	}
	st, code := runCLI(t, env, time.Minute, "status", "--no-scan")
	if code != exitOK || !strings.Contains(st.stdout.String(), "pace: paused (incident 42) (set by postgres") ||
		!strings.Contains(st.stdout.String(), "paused") {
		t.Errorf("status does not show the pause (exit %d):\n%s", code, st.stdout)
	}

	if op, code := runCLI(t, env, time.Minute, "throttle", "--kms-rate", "120"); code != exitOK ||
		!strings.Contains(op.stdout.String(), "KMS capped at 120 requests/s") {
		t.Errorf("throttle: exit %d\n%s", code, op.stdout)
	}
	if op, code := runCLI(t, env, time.Minute, "throttle"); code != exitUsage {
		t.Errorf("throttle without a rate: exit %d, want %d (a missing flag)\n%s", code, exitUsage, op.stderr)
	}
	if _, code := runCLI(t, env, time.Minute, "resume"); code != exitOK {
		t.Fatalf("resume: exit %d", code)
	}
	if code := p.wait(t, 2*time.Minute); code != exitOK {
		t.Fatalf("run after resume: exit %d\n%s", code, tail(p.stderr.String()))
	}
	var events []string
	rs, err := e.DB.Query(t.Context(), `SELECT event || ':' || owner FROM reencrypt.events WHERE table_name = 'public.payment_methods' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var s string
		if err := rs.Scan(&s); err != nil {
			t.Fatal(err)
		}
		events = append(events, s)
	}
	if got := strings.Join(events, " "); got != "paused:postgres throttled:postgres resumed:postgres" {
		t.Errorf("events %q, want the pause, the throttle and the resume, each with the role", got)
	}
	if !strings.Contains(p.stderr.String(), `"pages held back","reason":"paused"`) {
		t.Errorf("the run never logged that it was held back by the pause:\n%s", tail(p.stderr.String()))
	}
	assertRotatedOnce(t, e, ids)
}
