package cli

// Tests that exit 0 of `run` is proven: every row reachable by the keyset
// cursor, the pass's status read, and a full recount of the rows under OLD.

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestNullableIDRefused: a unique id column that allows NULL hides rows from
// the keyset cursor (id > $1 is never true for NULL). run must refuse it
// (exit 78) before any write, naming the column and the fix; plan still
// counts the table and reports the rows the cursor cannot reach.
func TestNullableIDRefused(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(500, o.Old, 1) // the NULL row comes after the preflight's sample of the heap's first rows
	o.exec(`ALTER TABLE payment_methods DROP CONSTRAINT payment_methods_pkey`)
	o.exec(`ALTER TABLE payment_methods ALTER COLUMN id DROP NOT NULL`)
	o.exec(`CREATE UNIQUE INDEX payment_methods_id_key ON payment_methods (id)`)
	hidden := o.seal(o.Old, "", []byte("tok_hidden"))
	o.exec(`INSERT INTO payment_methods (id, encrypted_token) VALUES (NULL, $1)`, hidden)

	r := o.cmd([]string{"run"}, "BATCH_SIZE=100")
	o.mustCode(r, exitConfig)
	for _, want := range []string{`ID_COLUMN: id column \"id\" of public.payment_methods allows NULL`, "SET NOT NULL"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("run's refusal does not say %q:\n%s", want, r.stderr)
		}
	}
	if o.schemaExists("reencrypt") || o.int(`SELECT count(*) FROM payment_method_audit`) != 0 {
		t.Errorf("run wrote before refusing: state schema %v, audit rows %d", o.schemaExists("reencrypt"),
			o.int(`SELECT count(*) FROM payment_method_audit`))
	}

	p := o.cmd([]string{"plan", "--json"}, "BATCH_SIZE=100")
	o.mustCode(p, exitConfig)
	plan := opDecode[planReport](t, p)
	if plan.Rows.Unreachable != 1 || plan.Rows.UnreachableUnderOld != 1 || plan.Rows.UnderOld != 500 {
		t.Errorf("plan rows: got %+v, want 500 under OLD reachable and 1 unreachable (NULL id), under OLD", plan.Rows)
	}
	if len(plan.Refusals) != 1 || !strings.Contains(plan.Refusals[0], `"id"`) || !strings.Contains(plan.Refusals[0], "ID_COLUMN") {
		t.Errorf("plan refusals: got %q, want one naming the id column", plan.Refusals)
	}
	if testing.Verbose() {
		t.Log(o.cmd([]string{"plan"}, "BATCH_SIZE=100").stdout)
	}

	// The fix the refusal names: every row gets an id, the column NOT NULL.
	// A unique index on a NOT NULL column is enough; no primary key needed.
	const given = "00000000-0000-4000-8000-000000000000"
	o.exec(`UPDATE payment_methods SET id = $1::uuid, encrypted_token = $2 WHERE id IS NULL`,
		given, o.seal(o.Old, given, []byte("tok_hidden"))) // the token is bound to its row id

	o.exec(`ALTER TABLE payment_methods ALTER COLUMN id SET NOT NULL`)
	o.mustCode(o.cmd([]string{"run"}, "BATCH_SIZE=100"), exitOK)
}

// TestRecountCatchesWritesBehindTheCursor: while the run works on its last
// range (held back by a row lock, as a live API transaction would), the
// live API writes under OLD into ranges already done: two rewrites and one
// insert. The pass ends with every range done and nothing quarantined or
// conflicted, but three rows are under OLD: run must recount, exit 75 and
// say how many; a rerun then finishes with exit 0.
func TestRecountCatchesWritesBehindTheCursor(t *testing.T) {
	o := newOpEnv(t, "bigint")
	ids := o.Seed(400, o.Old, 1)
	ctx := context.Background()
	lock, err := o.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }()
	last := ids[len(ids)-1]
	if _, err := lock.Exec(ctx, `SELECT 1 FROM payment_methods WHERE id = $1::bigint FOR UPDATE`, last); err != nil {
		t.Fatal(err)
	}

	done := make(chan opResult, 1)
	go func() { done <- o.cmdCtx(ctx, []string{"run"}, nil, "BATCH_SIZE=50", "RANGE_WORKERS=1") }()
	// One range worker claims the ranges in order: once its swap waits on
	// the locked row, the last range's, every other range is done.
	deadline := time.Now().Add(30 * time.Second)
	for o.int(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reencrypt' AND wait_event_type = 'Lock'`) == 0 {
		select {
		case r := <-done:
			t.Fatalf("run ended before it reached the locked row:\n%s", r)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("run never reached the locked row")
		}
	}
	if n := o.int(`SELECT count(*) FROM reencrypt.ranges WHERE state <> 'done'`); n != 1 {
		t.Fatalf("%d ranges not done while the last one waits, want 1", n)
	}
	o.setToken(ids[0], o.seal(o.Old, ids[0], []byte("tok_late_"+ids[0])))
	// A writer that names OLD by its alias: under OLD all the same.
	o.setToken(ids[1], o.sealKid(o.Old, o.Old.Alias(), "payment_methods", ids[1]))
	o.insertRow("0", o.seal(o.Old, "0", []byte("tok_late_0")))
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	r := <-done
	o.mustCode(r, exitRetry)
	if !strings.Contains(r.stderr, "3 rows under the old key") {
		t.Errorf("run does not say how many rows it found under OLD:\n%s", r)
	}
	o.mustCode(o.cmd([]string{"run"}, "BATCH_SIZE=50"), exitOK)
	if got := o.KeyCounts(); got[o.New.ARN] != 401 || len(got) != 1 {
		t.Errorf("after the rerun: %v, want all 401 rows under NEW", got)
	}
}
