package cli

import (
	"strings"
	"testing"
)

// TestStatusThroughARotation follows one table through a rotation: before
// any run (nothing recorded, nothing created), half done after a SIGTERM
// (stopped, rows under OLD counted exactly), and done with a quarantined row.
func TestStatusThroughARotation(t *testing.T) {
	o := newOpEnv(t, "uuid")
	ids := o.Seed(600, o.Old, 1)
	bad := ids[len(ids)/2]
	o.setToken(bad, o.seal(o.Old, ids[0], []byte("sealed for another row"))) // quarantined as auth_failed

	// Before any run: nothing recorded, and status creates nothing.
	r := o.cmd([]string{"status", "--json"})
	o.mustCode(r, exitOK)
	s := opDecode[statusReport](t, r)
	if len(s.Runs) != 0 || !strings.Contains(s.Note, "no run recorded yet") {
		t.Errorf("before any run: got %d runs, note %q; want none and a note", len(s.Runs), s.Note)
	}
	if s.Rows == nil || s.Rows.ByKey[o.Old.ARN] != 600 || s.Rows.Rows != 600 {
		t.Errorf("before any run: rows by key %+v, want 600 under OLD", s.Rows)
	}
	if o.schemaExists("reencrypt") {
		t.Fatal("status created the bookkeeping schema")
	}

	// Half done: a run stopped by a signal.
	o.interruptedRun()
	r = o.cmd([]string{"status", "--json"})
	o.mustCode(r, exitOK)
	s = opDecode[statusReport](t, r)
	if len(s.Runs) != 1 {
		t.Fatalf("got %d runs, want 1\n%s", len(s.Runs), r)
	}
	rs := s.Runs[0]
	rotated := o.int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'`)
	if rs.State != "stopped" || rs.Ranges.Running != 0 || rs.Ranges.Total != 8 {
		t.Errorf("half done: state %s, ranges %+v; want stopped, 8 ranges, none running", rs.State, rs.Ranges)
	}
	if rs.Rows.Rotated != rotated || rotated == 0 || rotated >= 600 {
		t.Errorf("half done: status says %d rotated, the audit table %d; want equal, between 1 and 599", rs.Rows.Rotated, rotated)
	}
	if rs.UnderOld == nil || *rs.UnderOld != 600-rotated {
		t.Errorf("half done: under OLD %v, want %d", rs.UnderOld, 600-rotated)
	}
	var perRange int64
	for _, d := range rs.RangeDetail {
		perRange += *d.UnderOld
	}
	if perRange != 600-rotated {
		t.Errorf("half done: rows under OLD summed over ranges %d, want %d", perRange, 600-rotated)
	}
	if rs.KeyspaceDone <= 0 || rs.KeyspaceDone >= 1 || !strings.Contains(rs.Hint, "rerun") {
		t.Errorf("half done: keyspace done %v, hint %q; want strictly between 0 and 1, and a rerun hint", rs.KeyspaceDone, rs.Hint)
	}
	if rs.OldKeyARN != o.Old.ARN || rs.NewKeyARN != o.New.ARN || rs.Mode != "rekey" || rs.Pass != 1 {
		t.Errorf("half done: run %+v", rs)
	}
	r = o.cmd([]string{"status"})
	o.mustCode(r, exitOK)
	for _, want := range []string{"STOPPED", "RANGE", "UNDER OLD", "under OLD", o.Old.ARN + "  ← OLD", "next: no process is working"} {
		if !strings.Contains(r.stdout, want) && !strings.Contains(r.stdout, strings.ToLower(want)) {
			t.Errorf("human status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = o.cmd([]string{"status", "--json", "--no-scan"})
	o.mustCode(r, exitOK)
	if s := opDecode[statusReport](t, r); s.Rows != nil || s.Runs[0].UnderOld != nil || s.Scanned {
		t.Errorf("--no-scan still counted rows: %+v", s)
	}

	// Done, with the quarantined row left under OLD.
	r = o.cmd([]string{"run"})
	o.mustCode(r, exitQuarantined)
	r = o.cmd([]string{"status", "--json", "--all-ranges"})
	o.mustCode(r, exitOK)
	rs = opDecode[statusReport](t, r).Runs[0]
	if rs.State != "done" || rs.KeyspaceDone != 1 || rs.ETASeconds != nil {
		t.Errorf("done: state %s, keyspace %v, ETA %v; want done, 1, none", rs.State, rs.KeyspaceDone, rs.ETASeconds)
	}
	if *rs.UnderOld != 1 || *rs.UnderOldBehind != 1 || rs.Rows.Rotated != 599 {
		t.Errorf("done: under OLD %d (%d behind), rotated %d; want 1 (1), 599", *rs.UnderOld, *rs.UnderOldBehind, rs.Rows.Rotated)
	}
	q := rs.Quarantine
	if q.Current != 1 || len(q.Rows) != 1 || q.Rows[0].RowID != bad || q.Rows[0].Class != "auth_failed" || q.ByClass["auth_failed"] != 1 {
		t.Errorf("done: quarantine %+v, want row %s auth_failed", q, bad)
	}
	if !strings.Contains(rs.Hint, "quarantined") || len(rs.RangeDetail) != 8 {
		t.Errorf("done: hint %q, %d ranges listed; want a quarantine hint and 8", rs.Hint, len(rs.RangeDetail))
	}
	r = o.cmd([]string{"status"})
	if !strings.Contains(r.stdout, bad+"  auth_failed") || !strings.Contains(r.stdout, "DONE") {
		t.Errorf("human status does not list the quarantined row:\n%s", r.stdout)
	}

	r = o.cmd([]string{"status", "--run", "0123456789abcdef"})
	o.mustCode(r, exitConfig)
}

// TestStatusTotalsAcrossPasses: a rerun after a finished pass is a new pass
// of the same run; status shows that pass and the run's totals over every
// pass (before, a rerun hid the run's work: "0 rotated, 600 skipped").
func TestStatusTotalsAcrossPasses(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(600, o.Old, 1)
	o.mustCode(o.cmd([]string{"run"}), exitOK)
	o.Seed(10, o.Old, 1) // the live API wrote under OLD after the pass
	o.mustCode(o.cmd([]string{"run"}), exitOK)

	r := o.cmd([]string{"status", "--json"})
	o.mustCode(r, exitOK)
	runs := opDecode[statusReport](t, r).Runs
	if len(runs) != 1 {
		t.Fatalf("got %d runs, want 1\n%s", len(runs), r)
	}
	rs := runs[0]
	if rs.Pass != 2 || rs.Rows.Rotated != 10 || rs.Rows.Skipped != 600 {
		t.Errorf("pass %d rows %+v; want pass 2 with 10 rotated and 600 skipped", rs.Pass, rs.Rows)
	}
	if want := (rowCounts{Read: 1210, Rotated: 610, Skipped: 600}); rs.RunTotal != want {
		t.Errorf("run total %+v, want %+v (pass 1: 600 rotated; pass 2: 10 rotated, 600 skipped)", rs.RunTotal, want)
	}
	if got := o.int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'`); got != rs.RunTotal.Rotated {
		t.Errorf("the audit table has %d rotations, status's run total %d", got, rs.RunTotal.Rotated)
	}
	r = o.cmd([]string{"status"})
	for _, want := range []string{"this pass", "run total", "610 rotated over 2 passes"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("human status lacks %q:\n%s", want, r.stdout)
		}
	}
}
