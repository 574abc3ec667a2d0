package cli

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/registry"
)

// deniedRe parses Postgres's "permission denied for <kind> <name>".
var deniedRe = regexp.MustCompile(`^permission denied for (table|schema|sequence|database|relation|view) (.+)$`)

// explainRefusal adds to a refusal what this configuration can tell: for a
// missing privilege (42501), the GRANT that gives the command what it needs
// on the object named (docs/privileges.md has the whole list).
func (a *app) explainRefusal(command string, r *batch.RefusedError) error {
	var pgErr *pgconn.PgError
	if r.Code != "42501" || !errors.As(r.Err, &pgErr) {
		return r
	}
	m := deniedRe.FindStringSubmatch(pgErr.Message)
	if m == nil {
		return r
	}
	if hint := a.grantFor(command, m[1], m[2]); hint != "" {
		return &batch.RefusedError{Code: r.Code, Err: r.Err,
			Advice: fmt.Sprintf("the database role %s lacks a privilege on %s %s (SQLSTATE 42501): %s (docs/privileges.md)",
				a.role(), m[1], m[2], hint)}
	}
	return r
}

// grantFor is the statement that gives command what it needs on the object.
func (a *app) grantFor(command, kind, name string) string {
	c := a.cfg
	role := pgx.Identifier{a.role()}.Sanitize()
	q := func(parts ...string) string { return pgx.Identifier(parts).Sanitize() }
	token, audit, state := q(c.TableSchema, c.Table), q(c.TableSchema, c.AuditTable), q(c.StateSchema)
	writes := command == "run"
	switch {
	case kind == "database":
		return fmt.Sprintf("let an admin create the state schema beforehand: CREATE SCHEMA %s AUTHORIZATION %s", state, role)
	case kind == "schema" && name == c.StateSchema && writes:
		// USAGE, or CREATE to migrate it: the message does not say which.
		return fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s; until the state schema is migrated, the role must also own it "+
			"(ALTER SCHEMA %[1]s OWNER TO %[2]s), or an admin must create and migrate it beforehand", state, role)
	case kind == "schema":
		return fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", q(name), role)
	case kind == "sequence":
		return fmt.Sprintf("GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO %s", state, role)
	case name == c.Table && writes:
		return fmt.Sprintf("GRANT SELECT (%s, %s), UPDATE (%[2]s) ON %s TO %s", q(c.IDColumn), q(c.TokenColumn), token, role)
	case name == c.Table:
		return fmt.Sprintf("GRANT SELECT (%s, %s) ON %s TO %s", q(c.IDColumn), q(c.TokenColumn), token, role)
	case name == c.AuditTable && writes:
		return fmt.Sprintf("GRANT INSERT (%s, action, actor_type, details) ON %s TO %s", q(c.AuditIDColumn), audit, role)
	case name == c.AuditTable:
		return fmt.Sprintf("GRANT SELECT (%s, action, details) ON %s TO %s", q(c.AuditIDColumn), audit, role)
	case name == registry.Table:
		return fmt.Sprintf("GRANT SELECT, INSERT, UPDATE ON %s TO %s", q(c.TableSchema, registry.Table), role)
	case writes:
		return fmt.Sprintf("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %s TO %s", state, role)
	}
	return fmt.Sprintf("GRANT SELECT ON ALL TABLES IN SCHEMA %s TO %s", state, role)
}

// role is the database role the commands log in as.
func (a *app) role() string {
	if a.pool != nil {
		if u := a.pool.Config().ConnConfig.User; u != "" {
			return u
		}
	}
	if cc, err := pgconn.ParseConfig(a.cfg.DatabaseURL); err == nil && cc.User != "" {
		return cc.User
	}
	return "<role>"
}
