package faults

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/config"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

const fuzzState = "fz_state" // bookkeeping schema of the fuzz runs

// Scenario 8: configured identifiers with quotes, dots, uppercase, unicode,
// SQL and NUL. Names Postgres can hold are accepted by the configuration and
// used, quoted, exactly as given: the engine inspects and rotates a few rows
// in the table so named and changes nothing else in the database (a canary
// table and the catalog are compared). Names that cannot be made safe (NUL,
// invalid UTF-8, over 63 bytes, empty) are refused by config.Validate with a
// message naming the variable. The seed corpus runs in every `go test`;
// `go test -fuzz FuzzIdentifiers ./test/faults/` explores further.
func FuzzIdentifiers(f *testing.F) {
	for _, s := range [][6]string{
		{"public", "payment_methods", "id", "encrypted_token", "payment_method_audit", "payment_method_id"},
		{"Billing", "PaymentMethods", "ID", "EncryptedToken", "AuditLog", "PaymentMethodID"},
		{`we"ird`, `tab"le`, `i"d`, `to""ken`, `au"dit`, `pm"id`},
		{"a.b", "c.d", "e.f", "public.canary", "i.j", "k.l"},
		{"schéma", "tökens💳", "ид", "トークン", "監査", "支払い_id"},
		{"s", `t"; DROP TABLE public.canary; --`, "id", "tok", `audit"; DELETE FROM public.canary; --`, "pmid"},
		{"s", "t%d%s%[1]v", "$1", "tok?", "aud%%", "pm$2"},
		{" sp ace ", " t ", " id", "tok ", "a u d i t", "p m"},
		{"s", "x\x00y", "id", "tok", "audit", "pmid"},
		{"s\x00", "t", "id", "tok", "audit", "pmid"},
		{"s", "t", "id", "tok\x00", "audit", "pmid"},
		{"s", strings.Repeat("x", 64), "id", "tok", "audit", "pmid"},
		{"s", "t", "id", "tok", "audit", "\xff\xfe"},
		{"s", "", "id", "tok", "audit", "pmid"}, // empty: unset, the default applies
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5])
	}
	fuzzing := false
	if fl := flag.Lookup("test.fuzz"); fl != nil && fl.Value.String() != "" {
		fuzzing = true
	}
	ctx := context.Background()
	k := testbed.LocalKMS(f)
	api, err := k.Client(ctx)
	if err != nil {
		f.Fatal(err)
	}
	newKey := func(name string) kmsclient.Key {
		if _, err := k.CreateKey(ctx, name); err != nil {
			f.Fatal(err)
		}
		key, err := kmsclient.Resolve(ctx, api, "alias/"+name)
		if err != nil {
			f.Fatal(err)
		}
		return key
	}
	suffix := fmt.Sprint(time.Now().UnixNano())
	oldKey, newKeyK := newKey("fz-old-"+suffix), newKey("fz-new-"+suffix)
	kc := kmsclient.NewClient(api, "payment_methods", nil)

	f.Fuzz(func(t *testing.T, schema, table, idCol, tokCol, audit, auditID string) {
		names := [][2]string{{"TABLE_SCHEMA", schema}, {"TABLE", table}, {"ID_COLUMN", idCol},
			{"TOKEN_COLUMN", tokCol}, {"AUDIT_TABLE", audit}, {"AUDIT_ID_COLUMN", auditID}}
		label := fmt.Sprintf("%q.%q(%q,%q) audit %q(%q)", schema, table, idCol, tokCol, audit, auditID)
		scen := "8 identifiers"
		report := func(figureName, expected string, result any, ok bool) {
			if fuzzing {
				if !ok {
					t.Errorf("%s: %s = %v, expected %s", label, figureName, result, expected)
				}
				return
			}
			figure(t, scen, figureName, expected, result, ok)
		}

		// 1. The configuration: refused exactly when a name cannot be quoted safely.
		environ := map[string]string{"OLD_KEY_ID": oldKey.ARN, "NEW_KEY_ID": newKeyK.ARN, "STATE_SCHEMA": fuzzState}
		var bad []string
		for _, n := range names {
			environ[n[0]] = n[1]
			// An empty variable is unset: its default applies (caarlos0/env).
			if len(n[1]) > 63 || strings.ContainsRune(n[1], 0) || !utf8.ValidString(n[1]) {
				bad = append(bad, n[0])
			}
		}
		cfg, err := config.Load(environ, nil, nil)
		if len(bad) > 0 {
			named := err != nil
			for _, v := range bad {
				named = named && strings.Contains(err.Error(), v+":")
			}
			nulOK := true
			for _, n := range names {
				if strings.ContainsRune(n[1], 0) {
					nulOK = err != nil && strings.Contains(err.Error(), "NUL")
				}
			}
			msg := "accepted"
			if err != nil {
				msg = strings.ReplaceAll(err.Error(), "\n", "; ")
			}
			report(label+": refused by config.Validate, naming "+strings.Join(bad, ", "), "refused", msg, named && nulOK)
			return
		}
		if err != nil {
			report(label+": accepted by config.Validate", "accepted", err, false)
			return
		}
		spec := tokentable.Spec{Schema: cfg.TableSchema, Name: cfg.Table, IDColumn: cfg.IDColumn,
			TokenColumn: cfg.TokenColumn, AuditTable: cfg.AuditTable, AuditIDColumn: cfg.AuditIDColumn}
		if slices.Contains([]string{spec.Schema, spec.Name, spec.IDColumn, spec.TokenColumn, spec.AuditTable, spec.AuditIDColumn}, "") {
			report(label+": an empty variable takes its default", "non-empty names", fmt.Sprintf("%+v", spec), false)
			return
		}
		schema, table, idCol, tokCol, audit, auditID = spec.Schema, spec.Name, spec.IDColumn, spec.TokenColumn, spec.AuditTable, spec.AuditIDColumn
		if spec.Name == spec.AuditTable || spec.IDColumn == spec.TokenColumn || schema == fuzzState ||
			slices.Contains([]string{"action", "actor_type", "details", "created_at"}, auditID) ||
			(schema == "public" && (table == "canary" || audit == "canary")) {
			t.Skip("names collide with each other or with the test's own tables")
		}

		// 2. A fresh database holding a canary, the configured tables and 3 tokens.
		url := testbed.Database(t)
		db, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		q := func(s string) string { return pgx.Identifier{s}.Sanitize() }
		qs, qt, qa := q(schema), q(schema)+"."+q(table), q(schema)+"."+q(audit)
		setup := []string{
			`CREATE TABLE public.canary (note text NOT NULL)`,
			`INSERT INTO public.canary VALUES ('still here')`,
			`CREATE SCHEMA IF NOT EXISTS ` + qs,
			fmt.Sprintf(`CREATE TABLE %s (%s bigint PRIMARY KEY, %s bytea, other text DEFAULT 'untouched')`, qt, q(idCol), q(tokCol)),
			fmt.Sprintf(`CREATE TABLE %s (%s bigint, action text NOT NULL, actor_type text NOT NULL, details jsonb, created_at timestamptz DEFAULT now())`,
				qa, q(auditID)),
		}
		for _, s := range setup {
			if _, err := db.Exec(ctx, s); err != nil {
				t.Skipf("Postgres will not create these names (%v): %s", err, s)
			}
		}
		dek, wdek, err := kc.GenerateDataKey(ctx, oldKey.ARN)
		if err != nil {
			t.Fatal(err)
		}
		ids := []string{"1", "2", "3"}
		for _, id := range ids {
			env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: oldKey.ARN, WDEK: wdek, Namespace: "payment_methods", RowID: id}, []byte("tok_fuzz_"+id))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := env.Marshal()
			if _, err := db.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (%s, %s) VALUES ($1::text::bigint, $2)`, qt, q(idCol), q(tokCol)), id, b); err != nil {
				t.Fatal(err)
			}
		}
		dek.Zero()
		before := catalog(t, db)

		// 3. Preflight (Inspect, key checks, the sample of tokens) and a run.
		err = func() error {
			checked, err := batch.Preflight(ctx, db, kc, batch.PreflightOptions{Spec: spec, OldRef: oldKey.ARN, NewRef: newKeyK.ARN, Namespace: "payment_methods", Mode: batch.Rekey})
			if err != nil {
				return fmt.Errorf("preflight: %w", err)
			}
			store := checkpoint.New(db, fuzzState)
			if err := store.Migrate(ctx); err != nil {
				return err
			}
			eng, err := batch.New(batch.Config{Table: checked.Table, Old: checked.Old, New: checked.New,
				BatchSize: 2, Ranges: 1, RangeWorkers: 1, LeaseTTL: 2 * time.Second, StopGrace: time.Second, Workers: 2, Owner: "fuzz"},
				batch.Deps{DB: db, Store: store, KMS: kc, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				return err
			}
			_, err = eng.Run(ctx)
			return err
		}()
		if err != nil {
			report(label+": rotated through the engine", "3 rows rotated", err, false)
			return
		}

		// 4. What changed: the tokens and the audit rows, nothing else.
		after := catalog(t, db)
		var canary string
		cerr := db.QueryRow(ctx, `SELECT string_agg(note, ',') FROM public.canary`).Scan(&canary)
		var rotated, untouched, audited int
		rs, err := db.Query(ctx, fmt.Sprintf(`SELECT %s::text, %s, other FROM %s ORDER BY 1`, q(idCol), q(tokCol), qt))
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var id, other string
			var tok []byte
			if err := rs.Scan(&id, &tok, &other); err != nil {
				t.Fatal(err)
			}
			if other == "untouched" {
				untouched++
			}
			env, err := envelope.Parse(tok)
			if err != nil || env.KID != newKeyK.ARN {
				continue
			}
			d, err := kc.Decrypt(ctx, newKeyK.ARN, env.WDEK)
			if err != nil {
				continue
			}
			if pt, err := envelope.Open(env, d, "payment_methods", id); err == nil && string(pt) == "tok_fuzz_"+id {
				rotated++
			}
			d.Zero()
		}
		rs.Close()
		_ = db.QueryRow(ctx, fmt.Sprintf(`SELECT count(DISTINCT %s) FROM %s WHERE action = 'token_reencrypted' AND actor_type = 'system'`,
			q(auditID), qa)).Scan(&audited)
		ok := cerr == nil && canary == "still here" && slices.Equal(before, after) && rotated == 3 && untouched == 3 && audited == 3
		result := fmt.Sprintf("canary %q, catalog unchanged %t, rows rotated %d/3, audit rows %d/3", canary, slices.Equal(before, after), rotated, audited)
		if !slices.Equal(before, after) {
			result += fmt.Sprintf(" (catalog diff: %v)", diff(before, after))
		}
		report(label+": used as given", "canary intact, catalog unchanged, 3 rows rotated and audited", result, ok)
	})
}

// catalog lists every schema, relation, column and function of the
// database outside the system schemas and the fuzz bookkeeping schema.
func catalog(t *testing.T, db *pgxpool.Pool) []string {
	t.Helper()
	rs, err := db.Query(context.Background(), `
		SELECT 'schema ' || nspname FROM pg_namespace
		WHERE nspname NOT IN ('pg_catalog', 'information_schema', $1) AND nspname NOT LIKE 'pg\_to%' AND nspname NOT LIKE 'pg\_temp%'
		UNION ALL
		SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\_to%' AND n.nspname NOT LIKE 'pg\_temp%'
		UNION ALL
		SELECT 'col ' || n.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1)
		  AND n.nspname NOT LIKE 'pg\_to%' AND n.nspname NOT LIKE 'pg\_temp%'
		UNION ALL
		SELECT 'func ' || n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', $1)
		ORDER BY 1`, fuzzState)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var s string
		if err := rs.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func diff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, "-"+s)
		}
	}
	for _, s := range b {
		if !slices.Contains(a, s) {
			out = append(out, "+"+s)
		}
	}
	return out
}
