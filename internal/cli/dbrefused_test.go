package cli

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/reencrypt/reencrypt/internal/testbed"
)

// TestDatabaseRefusalsAreConfiguration: a wrong password (28P01), an
// unknown role (28000) or a missing database (3D000) will not pass by
// retrying; every command exits 78 with a message saying what to fix in
// DATABASE_URL, against a real server.
func TestDatabaseRefusalsAreConfiguration(t *testing.T) {
	o := newOpEnv(t, "uuid")
	pg := testbed.PrivatePostgres(t, testbed.PostgresOptions{})
	ctx := context.Background()
	admin, err := pg.CreateDatabase(ctx, "refusals")
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.PrependHBA(ctx, "host all pw_role 127.0.0.1/32 scram-sha-256"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE ROLE pw_role LOGIN PASSWORD 'right-password'`); err != nil {
		t.Fatal(err)
	}
	with := func(raw string, f func(u *url.URL)) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		f(u)
		return u.String()
	}
	for _, c := range []struct {
		name, url string
		says      []string
	}{
		{"wrong password", with(admin, func(u *url.URL) { u.User = url.UserPassword("pw_role", "wrong-password") }),
			[]string{"28P01", "password", "DATABASE_URL"}},
		{"unknown role", with(o.URL, func(u *url.URL) { u.User = url.User("no_such_role") }),
			[]string{"28000", "no_such_role", "DATABASE_URL"}},
		{"missing database", with(o.URL, func(u *url.URL) { u.Path = "/no_such_database" }),
			[]string{"3D000", "no_such_database", "DATABASE_URL"}},
	} {
		for _, args := range [][]string{{"run"}, {"plan"}, {"status"}, {"verify"}, {"keys", "list"}} {
			t.Run(fmt.Sprintf("%s/%s", strings.ReplaceAll(c.name, " ", "_"), strings.Join(args, "_")), func(t *testing.T) {
				r := o.cmd(args, "DATABASE_URL="+c.url)
				if r.code != exitConfig {
					t.Errorf("exit %d, want %d\n%s", r.code, exitConfig, r)
				}
				for _, s := range c.says {
					if !strings.Contains(r.stderr, s) {
						t.Errorf("stderr does not say %q:\n%s", s, r.stderr)
					}
				}
				if strings.Contains(r.stderr, "wrong-password") {
					t.Errorf("stderr shows the password:\n%s", r.stderr)
				}
			})
		}
	}
}
