package checkpoint_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// TestJoinRecordsBuilds: the process that creates a run records its build as
// first_build; every process that joins later, of any build and in any pass,
// moves last_build; a process that names no build changes neither.
func TestJoinRecordsBuilds(t *testing.T) {
	ctx := context.Background()
	db := pool(t, testbed.Database(t))
	spec := checkpoint.RunSpec{Table: "public.t", OldARN: "arn:old", NewARN: "arn:new", Mode: "rekey", Namespace: "ns"}
	plan := func(context.Context) ([]checkpoint.Bounds, error) { return []checkpoint.Bounds{{}}, nil }
	join := func(build string, start time.Time) checkpoint.Run {
		t.Helper()
		s := checkpoint.New(db, "reencrypt")
		s.SetBuild(build)
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("migrate: %v", err)
		}
		run, err := s.Join(ctx, spec, start, plan)
		if err != nil {
			t.Fatalf("join as %q: %v", build, err)
		}
		return run
	}
	builds := func() (first, last *string, at *time.Time) {
		t.Helper()
		if err := db.QueryRow(ctx, `SELECT first_build, last_build, last_build_at FROM reencrypt.runs WHERE run_id = $1`,
			spec.ID()).Scan(&first, &last, &at); err != nil {
			t.Fatal(err)
		}
		return first, last, at
	}
	str := func(p *string) string {
		if p == nil {
			return "NULL"
		}
		return *p
	}

	long := time.Now().Add(-time.Hour) // joins the pass in progress
	join("v1.0.0@aaa", long)
	first, last, at1 := builds()
	if str(first) != "v1.0.0@aaa" || str(last) != "v1.0.0@aaa" || at1 == nil {
		t.Fatalf("after the first join: first %s, last %s, at %v; want v1.0.0@aaa twice and a time", str(first), str(last), at1)
	}

	// A pod of a newer build joins the same pass.
	join("v1.1.0@bbb-dirty", long)
	first, last, at2 := builds()
	if str(first) != "v1.0.0@aaa" || str(last) != "v1.1.0@bbb-dirty" {
		t.Fatalf("after a newer pod joined: first %s, last %s; want v1.0.0@aaa, v1.1.0@bbb-dirty", str(first), str(last))
	}
	if at2 == nil || at2.Before(*at1) {
		t.Errorf("last_build_at went from %v to %v, want it not to go back", at1, at2)
	}

	// No build named: nothing recorded, nothing erased.
	join("", long)
	if first, last, _ := builds(); str(first) != "v1.0.0@aaa" || str(last) != "v1.1.0@bbb-dirty" {
		t.Errorf("after a join naming no build: first %s, last %s; want them unchanged", str(first), str(last))
	}
}

// TestBuildsOfRunsBeforeMigration: a run created before migration 004 keeps
// first_build NULL (unknown) when a process of a known build joins it.
func TestBuildsOfRunsBeforeMigration(t *testing.T) {
	ctx := context.Background()
	db := pool(t, testbed.Database(t))
	if _, err := db.Exec(ctx, fmt.Sprintf(release1Schema, "reencrypt")); err != nil {
		t.Fatal(err)
	}
	spec := checkpoint.RunSpec{Table: "public.t", OldARN: "arn:old", NewARN: "arn:new", Mode: "rekey", Namespace: "ns"}
	if _, err := db.Exec(ctx, `
		INSERT INTO reencrypt.runs (run_id, table_name, old_key_arn, new_key_arn, mode, namespace, pass)
		VALUES ($1, 'public.t', 'arn:old', 'arn:new', 'rekey', 'ns', 1)`, spec.ID()); err != nil {
		t.Fatal(err)
	}
	s := checkpoint.New(db, "reencrypt")
	s.SetBuild("v2.0.0@ccc")
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Join(ctx, spec, time.Now().Add(-time.Hour), func(context.Context) ([]checkpoint.Bounds, error) {
		return []checkpoint.Bounds{{}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var first, last *string
	if err := db.QueryRow(ctx, `SELECT first_build, last_build FROM reencrypt.runs WHERE run_id = $1`, spec.ID()).Scan(&first, &last); err != nil {
		t.Fatal(err)
	}
	if first != nil || last == nil || *last != "v2.0.0@ccc" {
		t.Errorf("first_build %v, last_build %v; want NULL and v2.0.0@ccc", first, last)
	}
}
