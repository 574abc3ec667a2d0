package checkpoint_test

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

//go:embed testdata/release1_schema.sql
var release1Schema string

func pool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func version(t *testing.T, db *pgxpool.Pool, schema string) int32 {
	t.Helper()
	var v int32
	if err := db.QueryRow(context.Background(), fmt.Sprintf(`SELECT version FROM %s.schema_version`, schema)).Scan(&v); err != nil {
		t.Fatalf("read version: %v", err)
	}
	return v
}

// asRole is dsn with another user (the test server trusts loopback).
func asRole(t *testing.T, dsn, role string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	return u.String()
}

func TestMigrateCreatesThenLeavesAlone(t *testing.T) {
	ctx := context.Background()
	db := pool(t, testbed.Database(t))
	// A schema name that needs quoting everywhere, the version table included.
	s := checkpoint.New(db, `Re "state".x`)
	for range 2 {
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	if got, want := version(t, db, `"Re ""state"".x"`), checkpoint.SchemaVersion(); got != want || want < 1 {
		t.Fatalf("version %d, want %d (>= 1)", got, want)
	}
	var tables int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'Re "state".x'`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables < 5 { // runs, ranges, quarantine, events, schema_version
		t.Fatalf("%d tables in the state schema, want at least 5", tables)
	}
	if err := s.CheckVersion(ctx); err != nil {
		t.Fatalf("check version: %v", err)
	}
}

// A least-privilege role that was granted DML on a state schema an admin
// created and migrated has no CREATE privilege anywhere: Migrate must not
// run any DDL for it (release 1 ran CREATE SCHEMA IF NOT EXISTS on every
// run, which Postgres refuses without the database's CREATE privilege).
func TestMigrateUpToDateNeedsNoDDLPrivilege(t *testing.T) {
	ctx := context.Background()
	dsn := testbed.Database(t)
	admin := pool(t, dsn)
	if err := checkpoint.New(admin, "reencrypt").Migrate(ctx); err != nil {
		t.Fatalf("admin migrate: %v", err)
	}
	role := "job_" + strings.ToLower(testbed.DatabaseName(t.Name()))
	role = role[:min(len(role), 60)]
	for _, q := range []string{
		fmt.Sprintf(`CREATE ROLE %q LOGIN`, role),
		fmt.Sprintf(`GRANT USAGE ON SCHEMA reencrypt TO %q`, role),
		fmt.Sprintf(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA reencrypt TO %q`, role),
		fmt.Sprintf(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA reencrypt TO %q`, role),
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %q`, role))
		_, _ = admin.Exec(context.Background(), fmt.Sprintf(`DROP ROLE %q`, role))
	})
	job := pool(t, asRole(t, dsn, role))
	var canCreate bool
	if err := job.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE') OR has_schema_privilege('reencrypt', 'CREATE')`).Scan(&canCreate); err != nil || canCreate {
		t.Fatalf("set-up: role can create (%v, %v)", canCreate, err)
	}
	s := checkpoint.New(job, "reencrypt")
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate as a role without CREATE: %v", err)
	}
	if err := s.CheckVersion(ctx); err != nil {
		t.Fatalf("check version: %v", err)
	}
}

// An older binary must not write a state schema a newer release migrated.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	db := pool(t, testbed.Database(t))
	s := checkpoint.New(db, "reencrypt")
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	newer := checkpoint.SchemaVersion() + 1
	if _, err := db.Exec(ctx, `UPDATE reencrypt.schema_version SET version = $1`, newer); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(context.Context) error{"Migrate": s.Migrate, "CheckVersion": s.CheckVersion} {
		err := f(ctx)
		if !errors.Is(err, checkpoint.ErrSchemaTooNew) {
			t.Fatalf("%s: got %v, want ErrSchemaTooNew", name, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprint(newer)) {
			t.Errorf("%s: message %q does not name version %d", name, err, newer)
		}
	}
	if got := version(t, db, "reencrypt"); got != newer {
		t.Fatalf("version changed to %d", got)
	}
}

// A state schema left by release 1 (no version table), holding a run, is
// adopted as version 1 and migrated in place with its rows kept.
func TestMigrateAdoptsRelease1Schema(t *testing.T) {
	ctx := context.Background()
	db := pool(t, testbed.Database(t))
	if _, err := db.Exec(ctx, fmt.Sprintf(release1Schema, "reencrypt")); err != nil {
		t.Fatalf("release 1 schema: %v", err)
	}
	if _, err := db.Exec(ctx, `
		INSERT INTO reencrypt.runs (run_id, table_name, old_key_arn, new_key_arn, mode, namespace, pass)
		VALUES ('r1', 'public.t', 'arn:old', 'arn:new', 'rekey', 'ns', 1);
		INSERT INTO reencrypt.ranges (run_id, pass, range_no, state, cursor, rows_rotated)
		VALUES ('r1', 1, 0, 'done', '100', 100), ('r1', 1, 1, 'pending', NULL, 0)`); err != nil {
		t.Fatal(err)
	}
	s := checkpoint.New(db, "reencrypt")
	if err := s.CheckVersion(ctx); err != nil {
		t.Fatalf("check version of an unversioned schema: %v", err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if got := version(t, db, "reencrypt"); got != checkpoint.SchemaVersion() {
		t.Fatalf("version %d, want %d", got, checkpoint.SchemaVersion())
	}
	var rotated, ranges int64
	if err := db.QueryRow(ctx, `SELECT sum(rows_rotated), count(*) FROM reencrypt.ranges WHERE run_id = 'r1'`).Scan(&rotated, &ranges); err != nil {
		t.Fatal(err)
	}
	if rotated != 100 || ranges != 2 {
		t.Fatalf("after migration: %d rotated in %d ranges, want 100 in 2", rotated, ranges)
	}
}

// Every pod of a Job migrates at start, at the same moment.
func TestMigrateConcurrently(t *testing.T) {
	ctx := context.Background()
	dsn := testbed.Database(t)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			p, err := pgxpool.New(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer p.Close()
			errs <- checkpoint.New(p, "reencrypt").Migrate(ctx)
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent migrate: %v", err)
		}
	}
}

// Migrate opens its own connection from the pool's configuration; it must
// run the pool's BeforeConnect too, or a pool that signs in with a token
// made per connection (DATABASE_IAM_AUTH, pkg/rdsauth) could not migrate.
// Here the token is a password only BeforeConnect knows.
func TestMigrateRunsThePoolsBeforeConnect(t *testing.T) {
	ctx := context.Background()
	pg := testbed.PrivatePostgres(t, testbed.PostgresOptions{})
	dsn, err := pg.CreateDatabase(ctx, "beforeconnect")
	if err != nil {
		t.Fatal(err)
	}
	admin := pool(t, dsn)
	for _, q := range []string{
		`CREATE ROLE token_role LOGIN PASSWORD 'made-per-connection'`,
		`GRANT CREATE ON DATABASE beforeconnect TO token_role`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := pg.PrependHBA(ctx, "host all token_role 127.0.0.1/32 scram-sha-256"); err != nil {
		t.Fatal(err)
	}
	pc, err := pgxpool.ParseConfig(asRole(t, dsn, "token_role"))
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	pc.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		calls.Add(1)
		cc.Password = "made-per-connection"
		return nil
	}
	db, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := checkpoint.New(db, "reencrypt")
	before := calls.Load()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate with a password only BeforeConnect sets: %v", err)
	}
	if calls.Load() == before {
		t.Error("Migrate connected without calling the pool's BeforeConnect")
	}
	if err := s.CheckVersion(ctx); err != nil {
		t.Fatalf("check version: %v", err)
	}
}
