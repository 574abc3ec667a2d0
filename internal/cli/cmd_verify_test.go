package cli

import (
	"strings"
	"testing"
)

// TestVerifyHalfDoneThenDone: verify refuses a half-done table (exit 65,
// the rows left under OLD listed, capped) and passes once the run finished,
// in full and in sample mode.
func TestVerifyHalfDoneThenDone(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(500, o.Old, 1)
	o.interruptedRun()
	rotated := o.int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'`)

	r := o.cmd([]string{"verify", "--json", "--max-failures", "5"})
	o.mustCode(r, exitQuarantined)
	v := opDecode[verifyReport](t, r)
	left := 500 - rotated
	if v.OK || v.Rows.UnderOld != left || v.Rows.UnderNew != rotated || v.FailuresTotal != left {
		t.Errorf("half done: ok %v, rows %+v, %d failures; want not ok, %d under OLD, %d under NEW", v.OK, v.Rows, v.FailuresTotal, left, rotated)
	}
	if len(v.FailuresByCls) != 1 || v.FailuresByCls[failUnderOld] != left || len(v.Failures) != 5 {
		t.Errorf("half done: failures by class %v, %d listed; want only %d under_old, 5 listed", v.FailuresByCls, len(v.Failures), left)
	}
	if v.Opened != rotated || v.AuditChecked != rotated || !v.Audit.Checked || v.Audit.Rotated != rotated || v.Audit.AuditRows != rotated {
		t.Errorf("half done: opened %d, audit %+v; want %d opened and audited", v.Opened, v.Audit, rotated)
	}
	r = o.cmd([]string{"verify"})
	o.mustCode(r, exitQuarantined)
	for _, want := range []string{"FAIL  no row is left under OLD", "VERIFY FAILED", "under_old", "ok    every row under NEW opens with its own AAD"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("human verify lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, `"exit_code":65`) {
		t.Errorf("the failure is not logged with its exit code:\n%s", r.stderr)
	}

	o.mustCode(o.cmd([]string{"run"}), exitOK)
	r = o.cmd([]string{"verify", "--json"})
	o.mustCode(r, exitOK)
	v = opDecode[verifyReport](t, r)
	if !v.OK || v.Opened != 500 || v.AuditChecked != 500 || v.Rows.UnderOld != 0 || v.Audit.Rotated != 500 || v.Audit.AuditRows != 500 {
		t.Errorf("done: %+v; want ok, 500 opened and audited", v)
	}
	for _, c := range v.Checks {
		if !c.OK {
			t.Errorf("done: check failed: %+v", c)
		}
	}

	// A sample opens only N rows, drawn from the whole table.
	o.proxy.ResetCounts()
	r = o.cmd([]string{"verify", "--json", "--sample", "50"}, "DEK_CACHE_SIZE=0")
	o.mustCode(r, exitOK)
	v = opDecode[verifyReport](t, r)
	if v.Opened != 50 || v.AuditChecked != 50 || v.Rows.UnderNew != 500 || v.Sample != 50 {
		t.Errorf("sample: opened %d, audited %d of %d under NEW; want 50, 50, 500", v.Opened, v.AuditChecked, v.Rows.UnderNew)
	}
	if d := o.proxy.Counts()["Decrypt"]; d < 1 || d > 50 {
		t.Errorf("sample: %d Decrypt calls, want 1..50 (one per distinct wrapped key of the sample)", d)
	}
	r = o.cmd([]string{"verify"})
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stdout, "verified in") || strings.Contains(r.stdout, "FAIL") {
		t.Errorf("human verify of a good table:\n%s", r.stdout)
	}
}

// TestVerifyFindsEveryFailureClass: after a rotation, each kind of damage
// is found and named with its row id: a flipped ciphertext bit, a token
// moved to another row, a missing and a duplicated audit row, a NULL token,
// a row the live API wrote under OLD (and one under NEW without audit), and
// a quarantined row left under OLD.
func TestVerifyFindsEveryFailureClass(t *testing.T) {
	o := newOpEnv(t, "bigint")
	ids := o.Seed(300, o.Old, 1)
	o.setToken(ids[60], o.seal(o.Old, ids[61], []byte("moved before the run")))
	o.mustCode(o.cmd([]string{"run"}), exitQuarantined)

	tok := o.token(ids[10])
	tok[len(tok)-1] ^= 0x01
	o.setToken(ids[10], tok)
	o.setToken(ids[20], o.token(ids[21]))
	o.exec(`DELETE FROM payment_method_audit WHERE payment_method_id IN ($1::bigint, $2::bigint) AND action = 'token_reencrypted'`, ids[30], ids[31])
	o.exec(`INSERT INTO payment_method_audit SELECT * FROM payment_method_audit WHERE payment_method_id = $1::bigint AND action = 'token_reencrypted'`, ids[40])
	o.setToken(ids[50], nil)
	o.insertRow("10001", o.seal(o.Old, "10001", []byte("written under OLD by the live API")))
	o.insertRow("10002", o.seal(o.New, "10002", []byte("written under NEW by the live API")))

	want := map[string]string{
		ids[10]: failAuth, ids[20]: failAuth, ids[30]: failNoAudit, ids[31]: failNoAudit, ids[40]: failDuplicate,
		ids[50]: "null_token", "10001": failUnderOld, "10002": failNoAudit, ids[60]: failUnderOld, "": failAuditMissing,
	}
	r := o.cmd([]string{"verify", "--json"})
	o.mustCode(r, exitQuarantined)
	v := opDecode[verifyReport](t, r)
	got := map[string]string{}
	for _, f := range v.Failures {
		got[f.RowID] = f.Class
		if f.RowID == ids[60] && f.QuarantinedAs != "auth_failed" {
			t.Errorf("row %s: quarantined_as %q, want auth_failed", f.RowID, f.QuarantinedAs)
		}
	}
	if len(got) != len(want) || int(v.FailuresTotal) != len(want) {
		t.Errorf("got %d failures (%d listed), want %d", v.FailuresTotal, len(got), len(want))
	}
	for id, class := range want {
		if got[id] != class {
			t.Errorf("row %q: got class %q, want %q", id, got[id], class)
		}
	}
	if v.Audit.Rotated != 299 || v.Audit.AuditRows != 298 || v.Audit.Duplicates != 1 {
		t.Errorf("audit: %+v, want 299 rotated, 298 audit rows, 1 duplicate", v.Audit)
	}

	// --skip-audit drops the per-row audit requirement, not the rest.
	r = o.cmd([]string{"verify", "--json", "--skip-audit"})
	o.mustCode(r, exitQuarantined)
	v = opDecode[verifyReport](t, r)
	if v.FailuresByCls[failNoAudit] != 0 || v.FailuresTotal != int64(len(want)-3) {
		t.Errorf("--skip-audit: failures %v, want %d without no_audit", v.FailuresByCls, len(want)-3)
	}
}

// TestVerifyAfterRewrap: rows rewrapped keep a data key each (a legacy
// writer's), so verify unwraps one per row.
func TestVerifyAfterRewrap(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(200, o.Old, 1)
	o.mustCode(o.cmd([]string{"run"}, "MODE=rewrap"), exitOK)
	r := o.cmd([]string{"verify", "--json"}, "MODE=rewrap")
	o.mustCode(r, exitOK)
	if v := opDecode[verifyReport](t, r); v.Opened != 200 || v.DataKeys != 200 {
		t.Errorf("got %d opened with %d data keys, want 200 and 200", v.Opened, v.DataKeys)
	}
	// Verify needs both keys; the same key twice is refused.
	o.mustCode(o.cmd([]string{"verify"}, "NEW_KEY_ID="+o.Old.Ref), exitConfig)
}
