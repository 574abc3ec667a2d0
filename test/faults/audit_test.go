package faults

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Scenario 11: the audit trail of a run. Every rotated row has exactly one
// token_reencrypted audit row of this run (joined one to one, naming both
// key ARNs, the mode and the run), nothing else is audited, each process's
// start and end are recorded, and a rerun after success adds nothing.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	n := pick(1000, 20_000)
	scen := fmt.Sprintf("11 audit (%d rows)", n)
	ctx := context.Background()
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	// Two processes share the run, as two pods would.
	a := w.start("pod-0", "KMS_RATE_LIMIT="+pick("1000", "4000"))
	b := w.start("pod-1", "KMS_RATE_LIMIT="+pick("1000", "4000"))
	a.wait(t, 5*time.Minute)
	b.wait(t, 5*time.Minute)
	a.expectExit(t, exitOK)
	b.expectExit(t, exitOK)

	var runID string
	if err := w.DB.QueryRow(ctx, `SELECT run_id FROM reencrypt.runs`).Scan(&runID); err != nil {
		t.Fatal(err)
	}
	var rotated, audited, oneToOne, orphans, unaudited, wrongDetails int64
	err := w.DB.QueryRow(ctx, `
		WITH a AS (
			SELECT payment_method_id AS id, count(*) AS c FROM payment_method_audit
			WHERE action = 'token_reencrypted' AND details->>'run_id' = $1 GROUP BY 1)
		SELECT
			(SELECT coalesce(sum(rows_rotated), 0) FROM reencrypt.ranges WHERE run_id = $1),
			(SELECT coalesce(sum(c), 0) FROM a),
			(SELECT count(*) FROM a JOIN payment_methods p USING (id) WHERE a.c = 1),
			(SELECT count(*) FROM a LEFT JOIN payment_methods p USING (id) WHERE p.id IS NULL),
			(SELECT count(*) FROM payment_methods p LEFT JOIN a USING (id) WHERE a.id IS NULL),
			(SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted' AND NOT (
				actor_type = 'system' AND details->>'run_id' = $1 AND details->>'old_key_arn' = $2
				AND details->>'new_key_arn' = $3 AND details->>'mode' = 'rekey'))`,
		runID, w.Old.ARN, w.New.ARN).Scan(&rotated, &audited, &oneToOne, &orphans, &unaudited, &wrongDetails)
	if err != nil {
		t.Fatal(err)
	}
	figure(t, scen, "rows rotated (checkpoint) = token_reencrypted audit rows of the run = rows joined one to one", "all equal "+fmt.Sprint(n),
		fmt.Sprintf("%d / %d / %d", rotated, audited, oneToOne), rotated == int64(n) && audited == int64(n) && oneToOne == int64(n))
	figEq(t, scen, "audit rows naming no row, rows without audit row", 0, orphans+unaudited)
	figEq(t, scen, "audit rows without actor system, run id, both key ARNs and mode", 0, wrongDetails)

	events := func() (started, done, stopped int64) {
		if err := w.DB.QueryRow(ctx, `SELECT count(*) FILTER (WHERE event = 'process_started'),
			count(*) FILTER (WHERE event = 'process_done'), count(*) FILTER (WHERE event = 'process_stopped')
			FROM reencrypt.events WHERE run_id = $1`, runID).Scan(&started, &done, &stopped); err != nil {
			t.Fatal(err)
		}
		return
	}
	s1, d1, x1 := events()
	figure(t, scen, "run start and end recorded (process_started / process_done / process_stopped events)", "2 / 2 / 0",
		fmt.Sprintf("%d / %d / %d", s1, d1, x1), s1 == 2 && d1 == 2 && x1 == 0)

	// Rerun after success: a new pass that finds nothing to do.
	w.proxy.ResetCounts()
	before, _ := w.auditCounts(w.DB, "token_reencrypted")
	r := w.run("rerun", 2*time.Minute)
	r.expectExit(t, exitOK)
	after, dup := w.auditCounts(w.DB, "token_reencrypted")
	c := w.proxy.Counts()
	// The preflight's round trip on NEW is one GenerateDataKey and one Decrypt.
	rotationCalls := c["GenerateDataKey"] + c["Decrypt"] + c["ReEncrypt"] - 2
	figEq(t, scen, "rerun after success: new audit rows", 0, after-before)
	figEq(t, scen, "rerun after success: KMS calls beyond the preflight round trip", 0, rotationCalls)
	s2, d2, _ := events()
	figure(t, scen, "rerun recorded", "one more process_started and process_done", fmt.Sprintf("%d / %d", s2-s1, d2-d1), s2-s1 == 1 && d2-d1 == 1)
	figEq(t, scen, "duplicate audit rows", 0, dup)
	w.checkDone(scen, int64(n))
}
