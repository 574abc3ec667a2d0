package checkpoint

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
)

// migrations are the state schema's versions, applied in order by tern.
// A release only ever adds files; a file once released is never edited.
//
//go:embed migrations/*.sql
var migrations embed.FS

// versionTable is tern's one-row table holding the schema's version, in the
// state schema itself.
const versionTable = "schema_version"

// ErrSchemaTooNew means the state schema was migrated by a newer release than
// this binary: it refuses to read or write it (a configuration error: run
// the newer release, or roll the schema back by hand).
var ErrSchemaTooNew = errors.New("state schema is newer than this release")

// SchemaVersion is the state schema version this binary writes.
func SchemaVersion() int32 {
	n, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		panic(err) // the pattern is a constant
	}
	return int32(len(n))
}

// Migrate brings the state schema to this release's version. It runs DDL
// only when something is missing: CREATE SCHEMA only when the schema does
// not exist (so a least-privilege role that owns, or was granted, a schema
// created beforehand by an admin never needs the database's CREATE
// privilege), and a migration only when the schema is older than this
// release. Every pod of a Job may call it at once: tern serialises them on
// an advisory lock. A schema newer than this release is refused
// (ErrSchemaTooNew) before anything is written.
//
// The store's DB must be a *pgxpool.Pool: the migration runs on a dedicated
// connection made from its configuration whose search_path is the state
// schema alone, because tern issues RESET ALL between migrations.
func (s *Store) Migrate(ctx context.Context) error {
	pool, ok := s.db.(*pgxpool.Pool)
	if !ok {
		return fmt.Errorf("migrate state schema %s: need a connection pool, got %T", s.name, s.db)
	}
	pc := pool.Config()
	cc := pc.ConnConfig.Copy()
	cc.RuntimeParams["search_path"] = s.schema
	// What the pool does before each of its own connections (an RDS IAM
	// token as the password, pkg/rdsauth) this one needs too.
	if pc.BeforeConnect != nil {
		if err := pc.BeforeConnect(ctx, cc); err != nil {
			return fmt.Errorf("migrate state schema %s: connect: %w", s.name, err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("migrate state schema %s: connect: %w", s.name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return migrateOn(ctx, conn, s.name, s.schema)
}

// schemaLock serialises the pods that check for and create the schema at
// the same moment: CREATE SCHEMA IF NOT EXISTS alone races on the catalog
// (23505 on pg_namespace_nspname_index), and tern's own lock comes later.
const schemaLock = "reencrypt.state_schema"

func migrateOn(ctx context.Context, conn *pgx.Conn, name, quoted string) error {
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext($1))`, schemaLock); err != nil {
		return fmt.Errorf("lock state schema %s: %w", name, err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext($1))`, schemaLock)
	}()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up state schema %s: %w", name, err)
	}
	if !exists {
		// IF NOT EXISTS: another pod may create it at the same moment.
		if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+quoted); err != nil {
			return fmt.Errorf("create state schema %s: %w", name, err)
		}
	}
	// The version table is found through search_path (the state schema
	// alone on this connection), so any schema name works.
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return fmt.Errorf("state schema %s: version table: %w", name, err)
	}
	m.Data["schema"] = quoted
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	if err := m.LoadMigrations(sub); err != nil {
		return fmt.Errorf("load state schema migrations: %w", err)
	}
	current, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return fmt.Errorf("read state schema version of %s: %w", name, err)
	}
	latest := int32(len(m.Migrations))
	if current > latest {
		return &schemaTooNewError{schema: name, have: current, know: latest}
	}
	if current == latest {
		return nil
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate state schema %s from version %d to %d: %w", name, current, latest, err)
	}
	return nil
}

// CheckVersion refuses (ErrSchemaTooNew) a state schema migrated by a newer
// release; the read-only commands call it instead of Migrate. A schema that
// does not exist yet, or predates versioning, passes.
func (s *Store) CheckVersion(ctx context.Context) error {
	var v *int32
	err := s.db.QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT version FROM %s.%s)`, s.schema, versionTable)).Scan(&v)
	if err != nil {
		var exists bool
		if qerr := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.schema+"."+versionTable).Scan(&exists); qerr == nil && !exists {
			return nil
		}
		return fmt.Errorf("read state schema version of %s: %w", s.name, err)
	}
	if v != nil && *v > SchemaVersion() {
		return &schemaTooNewError{schema: s.name, have: *v, know: SchemaVersion()}
	}
	return nil
}

type schemaTooNewError struct {
	schema     string
	have, know int32
}

func (e *schemaTooNewError) Error() string {
	return fmt.Sprintf("state schema %s is at version %d, and this release knows versions up to %d: "+
		"run the release that migrated it (or a newer one)", e.schema, e.have, e.know)
}

func (e *schemaTooNewError) Is(target error) bool { return target == ErrSchemaTooNew }

func quoteIdent(name string) string {
	return pgx.Identifier{strings.ToValidUTF8(name, "")}.Sanitize()
}
