package pacer

import (
	"testing"
	"time"
)

// The database_busy rule: quiet commits cost nothing, one slow commit
// little, a database that stays busy slows the engine by its excess.
func TestBusyRule(t *testing.T) {
	ms := time.Millisecond
	var r busyRule
	for range 50 {
		if w := r.observe(5 * ms); w != 0 {
			t.Fatalf("steady 5 ms commits wait %s, want 0", w)
		}
	}
	// One fsync stall of 60 ms among quiet pages: at most one short wait.
	var stall time.Duration
	for i, c := range []time.Duration{60 * ms, 5 * ms, 5 * ms, 5 * ms, 5 * ms, 5 * ms} {
		w := r.observe(c)
		stall += w
		if i > 1 && w != 0 {
			t.Errorf("page %d after one slow commit waits %s, want 0", i, w)
		}
	}
	if stall > 30*ms {
		t.Errorf("one 60 ms commit cost %s of waiting, want under its own excess", stall)
	}
	// The database gets busy: commits of 50 ms for 100 pages. The engine
	// waits about the excess over the baseline on every page.
	var waits []time.Duration
	for range 100 {
		waits = append(waits, r.observe(50*ms))
	}
	for i, w := range waits[5:] {
		if w < 25*ms || w > 50*ms {
			t.Fatalf("busy page %d waits %s, want about the 45 ms excess (25..50 ms)", i+5, w)
		}
	}
	// Quiet again: within a few pages no wait.
	var w time.Duration
	for range 6 {
		w = r.observe(5 * ms)
	}
	if w != 0 {
		t.Errorf("6 quiet pages after the busy spell still wait %s, want 0", w)
	}
	// Never more than busyMaxWait, however slow.
	var worst time.Duration
	for range 20 {
		worst = max(worst, r.observe(20*time.Second))
	}
	if worst != busyMaxWait {
		t.Errorf("20 s commits wait %s, want the cap %s", worst, busyMaxWait)
	}
}
