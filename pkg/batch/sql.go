package batch

import (
	"fmt"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// statements are the engine's SQL for one table, built once from quoted
// identifiers; the audit rows follow tokentable's audit contract. Values
// always travel as parameters. The keyset reads are
// tokentable's (ReadPage, ReadIDs).
type statements struct {
	swap        string // compare-and-swap of tokens + audit rows
	auditFailed string // audit rows for newly quarantined rows
}

func newStatements(t *tokentable.Table) statements {
	return statements{
		// The WHERE compares the token with the one we read: a row the live
		// API rewrote meanwhile is not overwritten; it is re-read instead.
		// The statement returns how many rows it swapped: usually all of
		// them, and a page's 1,000 swapped ids need not travel back; when
		// some were not (changed or deleted meanwhile), the page finds which
		// by reading them again in its transaction (swapConflicts).
		// The page's rows are first locked in id order ("locked", run whole
		// before the UPDATE by the scalar subquery, an InitPlan), whatever
		// the input's order or the join's plan: a multi-row API transaction
		// that locks in id order then waits for the page, never deadlocks
		// with it.
		swap: fmt.Sprintf(`
			WITH locked AS MATERIALIZED (
				SELECT t.%[2]s FROM %[1]s AS t
				WHERE t.%[2]s = ANY($1::text[]::%[6]s[])
				ORDER BY t.%[2]s
				FOR UPDATE
			), swapped AS (
				UPDATE %[1]s AS t SET %[3]s = v.new_token
				FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS v(id, old_token, new_token)
				WHERE t.%[2]s = v.id::%[6]s AND t.%[3]s = v.old_token
				  AND (SELECT count(*) FROM locked) >= 0
				RETURNING t.%[2]s
			), audited AS (
				INSERT INTO %[4]s (%[5]s, action, actor_type, details)
				SELECT %[2]s, '%[7]s', '%[8]s', $4::jsonb FROM swapped
			)
			SELECT count(*) FROM swapped`,
			t.QuotedName(), t.QuotedID(), t.QuotedToken(), t.QuotedAudit(), t.QuotedAuditID(), t.IDType,
			tokentable.ActionReencrypted, tokentable.ActorSystem),
		auditFailed: fmt.Sprintf(`
			INSERT INTO %[1]s (%[2]s, action, actor_type, details)
			SELECT v.id::%[3]s, '%[4]s', '%[5]s', $3::jsonb || jsonb_build_object('%[6]s', v.class)
			FROM unnest($1::text[], $2::text[]) AS v(id, class)`,
			t.QuotedAudit(), t.QuotedAuditID(), t.IDType,
			tokentable.ActionReencryptFailed, tokentable.ActorSystem, tokentable.DetailErrorClass),
	}
}
