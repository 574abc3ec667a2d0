package main

// Tests that exit 0 of `run` is proven: every row reachable by the keyset
// cursor, the pass's status read, and a full recount of the rows under OLD.

import (
	"strings"
	"testing"
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
	for _, want := range []string{`id column \"id\" of public.payment_methods allows NULL`, "SET NOT NULL"} {
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
	if len(plan.Refusals) != 1 || !strings.Contains(plan.Refusals[0], `"id"`) {
		t.Errorf("plan refusals: got %q, want one naming the id column", plan.Refusals)
	}
}
