package cli

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestSearchPathPinned: a role that may create objects in public shadows
// unnest and jsonb_build_object there, and the database's default
// search_path puts public before pg_catalog. Every command pins its
// search_path to pg_catalog, pg_temp, so none of them calls a shadow.
func TestSearchPathPinned(t *testing.T) {
	o := newOpEnv(t, "uuid")
	ids := o.Seed(60, o.Old, 1)
	o.SetToken(ids[5], []byte{0x01, 0x01, 0x00}) // quarantined: audited with jsonb_build_object
	ctx := context.Background()
	role := fmt.Sprintf("shadow_%d", time.Now().UnixNano())
	for _, q := range []string{
		`CREATE TABLE public.shadow_calls (fn text, app text)`,
		`GRANT INSERT ON public.shadow_calls TO PUBLIC`,
		`CREATE ROLE ` + role + ` NOLOGIN`,
		`GRANT CREATE, USAGE ON SCHEMA public TO ` + role,
		`SET ROLE ` + role,
		`CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE sql AS $$
			INSERT INTO public.shadow_calls VALUES ('unnest', current_setting('application_name'));
			SELECT pg_catalog.unnest(a) $$`,
		`CREATE FUNCTION public.jsonb_build_object(k text, v text) RETURNS jsonb LANGUAGE sql AS $$
			INSERT INTO public.shadow_calls VALUES ('jsonb_build_object', current_setting('application_name'));
			SELECT pg_catalog.jsonb_build_object(k, v) $$`,
		`RESET ROLE`,
		`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog', current_database()); END $$`,
	} {
		o.exec(q)
	}
	t.Cleanup(func() {
		o.exec(`DROP OWNED BY ` + role)
		o.exec(`DROP ROLE ` + role)
	})
	// The shadows work: a session with the database's defaults calls them.
	conn, err := pgx.Connect(ctx, o.URL)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM unnest($1::text[]) AS v(a)
		WHERE jsonb_build_object('k', v.a) IS NOT NULL`, []string{"x"}).Scan(&n)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Env.Int(`SELECT count(DISTINCT fn) FROM public.shadow_calls`); got != 2 {
		t.Logf("calls: %d unnest", o.Env.Int(`SELECT count(*) FROM public.shadow_calls WHERE fn = 'unnest'`))
		t.Fatalf("a plain session called %d of the 2 shadows; the test does not shadow what it means to", got)
	}

	o.mustCode(o.cmd([]string{"plan"}), exitOK)
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)
	o.mustCode(o.cmd([]string{"run"}), exitQuarantined)
	o.mustCode(o.cmd([]string{"status"}), exitOK)
	o.mustCode(o.cmd([]string{"verify"}), exitQuarantined)
	o.mustCode(o.cmd([]string{"keys", "list"}), exitOK)
	if calls := o.Env.Int(`SELECT count(*) FROM public.shadow_calls WHERE app = 'reencrypt'`); calls != 0 {
		t.Errorf("reencrypt called the shadowing functions %d times (unnest: %d)", calls,
			o.Env.Int(`SELECT count(*) FROM public.shadow_calls WHERE app = 'reencrypt' AND fn = 'unnest'`))
	}
}
