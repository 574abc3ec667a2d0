package cli

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The GRANTs of docs/privileges.md, for the reference schema. %[1]s is the
// Job's role, %[2]s the operator's.
const (
	jobGrants = `
		GRANT USAGE ON SCHEMA public TO %[1]s;
		GRANT SELECT (id, encrypted_token), UPDATE (encrypted_token) ON public.payment_methods TO %[1]s;
		GRANT INSERT (payment_method_id, action, actor_type, details) ON public.payment_method_audit TO %[1]s;`
	// The state schema made and migrated by an admin beforehand.
	jobStateGrants = `
		GRANT USAGE ON SCHEMA reencrypt TO %[1]s;
		GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA reencrypt TO %[1]s;
		GRANT USAGE ON ALL SEQUENCES IN SCHEMA reencrypt TO %[1]s;`
	// Once the state schema is migrated: keys begin records the table.
	operatorKeyTables = `GRANT INSERT, UPDATE ON reencrypt.key_tables TO %[2]s;`
	operatorGrants    = `
		GRANT USAGE ON SCHEMA public TO %[2]s;
		GRANT SELECT (id, encrypted_token) ON public.payment_methods TO %[2]s;
		GRANT SELECT (payment_method_id, action, details) ON public.payment_method_audit TO %[2]s;
		GRANT SELECT, INSERT, UPDATE ON public.token_encryption_keys TO %[2]s;
		GRANT USAGE ON SCHEMA reencrypt TO %[2]s;`
	operatorStateGrants = `GRANT SELECT ON ALL TABLES IN SCHEMA reencrypt TO %[2]s;`
	// The registry as the tool creates it, made beforehand by an admin.
	registryDDL = `
		CREATE TABLE public.token_encryption_keys (
			key_id text PRIMARY KEY, key_version integer NOT NULL,
			status text NOT NULL CHECK (status IN ('active', 'rotating', 'retired')),
			algorithm text NOT NULL, provider text NOT NULL, alias text,
			created_at timestamptz NOT NULL DEFAULT now(), retired_at timestamptz,
			deletion_scheduled_at timestamptz, deletion_date timestamptz);
		CREATE UNIQUE INDEX token_encryption_keys_one_active ON public.token_encryption_keys (status) WHERE status = 'active';`
)

// TestLeastPrivilege runs the runbook's commands under the roles of
// docs/privileges.md and nothing more: the Job's role (no CREATE on the
// database) runs `run`; the operator's role runs plan, keys begin, status,
// verify, keys retire and list. The state schema is either owned by the Job's role
// (created empty by an admin: the Job migrates it) or made and migrated by
// an admin who grants the Job DML on it. A command missing a privilege is
// refused with exit 78, naming the object and the GRANT.
func TestLeastPrivilege(t *testing.T) {
	for _, owned := range []bool{true, false} {
		name := map[bool]string{true: "state_schema_owned_by_the_job", false: "state_schema_made_by_an_admin"}[owned]
		t.Run(name, func(t *testing.T) {
			o := newOpEnv(t, "uuid")
			ids := o.Seed(200, o.Old, 1)
			suffix := fmt.Sprint(time.Now().UnixNano())
			job, op := "job_"+suffix, "op_"+suffix
			admin := func(sql string) {
				t.Helper()
				o.exec(fmt.Sprintf(sql, job, op))
			}
			admin(`CREATE ROLE %[1]s LOGIN; CREATE ROLE %[2]s LOGIN`)
			t.Cleanup(func() {
				admin(`DROP OWNED BY %[1]s`)
				admin(`DROP OWNED BY %[2]s`)
				admin(`DROP ROLE %[1]s; DROP ROLE %[2]s`)
			})
			o.exec(registryDDL)
			as := func(role string) string {
				u, err := url.Parse(o.URL)
				if err != nil {
					t.Fatal(err)
				}
				u.User = url.User(role)
				return "DATABASE_URL=" + u.String()
			}
			if owned {
				admin(`CREATE SCHEMA reencrypt AUTHORIZATION %[1]s`)
				admin(`ALTER DEFAULT PRIVILEGES FOR ROLE %[1]s IN SCHEMA reencrypt GRANT SELECT ON TABLES TO %[2]s`)
				o.mustCode(o.cmd([]string{"migrate"}, as(job)), exitOK) // the owner, no CREATE on the database
			} else {
				o.mustCode(o.cmd([]string{"migrate"}), exitOK) // an admin
				admin(jobStateGrants)
				admin(operatorStateGrants)
			}
			admin(operatorKeyTables)
			admin(jobGrants)
			admin(operatorGrants)
			if n := o.Env.Int(fmt.Sprintf(`SELECT count(*) FROM pg_roles WHERE rolname IN ('%s', '%s')
				AND (rolsuper OR rolcreatedb OR has_database_privilege(rolname, current_database(), 'CREATE'))`, job, op)); n != 0 {
				t.Fatalf("%d of the roles may create in the database", n)
			}

			o.mustCode(o.cmd([]string{"plan"}, as(op)), exitOK)
			o.mustCode(o.cmd([]string{"keys", "begin"}, as(op)), exitOK)
			// The operator may not run the rotation: refused before any write.
			r := o.cmd([]string{"run"}, as(op))
			o.mustCode(r, exitConfig)
			for _, s := range []string{"lacks privileges", op, `GRANT UPDATE ("encrypted_token") ON "public"."payment_methods"`,
				`GRANT INSERT ("payment_method_id", "action", "actor_type", "details") ON "public"."payment_method_audit"`, "docs/privileges.md"} {
				if !strings.Contains(strings.ReplaceAll(r.stderr, `\"`, `"`), s) { // stderr is JSON
					t.Errorf("the operator's refused run does not say %q:\n%s", s, r.stderr)
				}
			}
			if n := o.Env.Int(`SELECT count(*) FROM payment_method_audit`); n != 0 {
				t.Fatalf("the refused run wrote %d audit rows", n)
			}
			// A Job without UPDATE on the token column: refused before it
			// records anything, naming the GRANT.
			o.exec(fmt.Sprintf(`REVOKE UPDATE (encrypted_token) ON public.payment_methods FROM %s`, job))
			r = o.cmd([]string{"run"}, as(job))
			o.mustCode(r, exitConfig)
			if want := fmt.Sprintf(`GRANT UPDATE ("encrypted_token") ON "public"."payment_methods" TO "%s"`, job); !strings.Contains(strings.ReplaceAll(r.stderr, `\"`, `"`), want) {
				t.Errorf("the refused run does not say %q:\n%s", want, r.stderr)
			}
			if o.Env.Int(`SELECT count(*) FROM pg_tables WHERE schemaname = 'reencrypt' AND tablename = 'runs'`) > 0 &&
				o.Env.Int(`SELECT count(*) FROM reencrypt.runs`) != 0 {
				t.Error("the refused run recorded a run")
			}
			admin(jobGrants)
			o.mustCode(o.cmd([]string{"run"}, as(job)), exitOK)
			o.mustCode(o.cmd([]string{"status"}, as(op)), exitOK)
			o.mustCode(o.cmd([]string{"verify"}, as(op)), exitOK)
			o.mustCode(o.cmd([]string{"keys", "retire", "--key", o.Old.Ref}, as(op)), exitOK)
			o.mustCode(o.cmd([]string{"keys", "list"}, as(op)), exitOK)
			if n := o.Env.Int(`SELECT count(*) FROM public.token_encryption_keys WHERE status = 'retired'`); n != 1 {
				t.Errorf("retired keys in the registry: %d, want 1", n)
			}
			if got := o.KeyCounts(); got[o.New.ARN] != len(ids) {
				t.Errorf("rows by key after the run: %v, want all %d under NEW", got, len(ids))
			}
		})
	}
}
