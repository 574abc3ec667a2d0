package batch

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// CheckWritePrivileges refuses (ErrConfig), before any write, a role that
// lacks a privilege `run` needs on the token and audit tables, naming every
// GRANT missing (docs/privileges.md). Without it the first page's swap
// would be refused after the run was already recorded.
func CheckWritePrivileges(ctx context.Context, db DB, t *tokentable.Table) error {
	s := t.Spec
	need := []struct{ table, qtable, column, priv string }{
		{s.Name, t.QuotedName(), s.IDColumn, "SELECT"},
		{s.Name, t.QuotedName(), s.TokenColumn, "SELECT"},
		{s.Name, t.QuotedName(), s.TokenColumn, "UPDATE"},
		{s.AuditTable, t.QuotedAudit(), s.AuditIDColumn, "INSERT"},
		{s.AuditTable, t.QuotedAudit(), "action", "INSERT"},
		{s.AuditTable, t.QuotedAudit(), "actor_type", "INSERT"},
		{s.AuditTable, t.QuotedAudit(), "details", "INSERT"},
	}
	var role string
	var missing []string
	cols := map[string][]string{} // "PRIV ON table" → columns lacking it
	for _, n := range need {
		var ok bool
		if err := db.QueryRow(ctx, `SELECT current_user, has_column_privilege($1, $2, $3)`, n.qtable, n.column, n.priv).
			Scan(&role, &ok); err != nil {
			return fmt.Errorf("check privileges on %s: %w", n.table, err)
		}
		if k := n.priv + "\x00" + n.qtable; !ok {
			if cols[k] == nil {
				missing = append(missing, k)
			}
			cols[k] = append(cols[k], quote(n.column))
		}
	}
	for i, k := range missing {
		priv, table, _ := strings.Cut(k, "\x00")
		missing[i] = fmt.Sprintf("GRANT %s (%s) ON %s TO %s", priv, strings.Join(cols[k], ", "), table, quote(role))
	}
	if len(missing) > 0 {
		return configErrorf("the database role %s lacks privileges the run needs (docs/privileges.md): %s",
			role, strings.Join(missing, "; "))
	}
	return nil
}

func quote(parts ...string) string { return pgx.Identifier(parts).Sanitize() }
