package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/pkg/registry"
)

type keysOutput struct {
	Registry string         `json:"registry"`
	Exists   bool           `json:"exists"`
	Keys     []registry.Key `json:"keys"`
}

func (o *opEnv) registry(extra ...string) map[string]registry.Key {
	o.t.Helper()
	r := o.cmd([]string{"keys", "list", "--json"}, extra...)
	o.mustCode(r, exitOK)
	out := map[string]registry.Key{}
	for _, k := range opDecode[keysOutput](o.t, r).Keys {
		out[k.KeyID] = k
	}
	return out
}

// TestKeysLifecycle walks the registry through a whole rotation, with every
// refusal on the way: retiring a key rows are still under, retiring the
// active key, deleting a key that is not retired, deleting a key a row came
// back under, a pending window KMS would refuse.
func TestKeysLifecycle(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(300, o.Old, 1)

	r := o.cmd([]string{"keys"})
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stdout, "does not exist yet") || o.tableExists("public.token_encryption_keys") {
		t.Fatalf("list on a fresh database must say the registry is absent and not create it:\n%s", r)
	}

	// begin: OLD → rotating, NEW → active, both by ARN with their aliases.
	r = o.cmd([]string{"keys", "begin"})
	o.mustCode(r, exitOK)
	reg := o.registry()
	old, nk := reg[o.Old.ARN], reg[o.New.ARN]
	if len(reg) != 2 || old.Status != registry.StatusRotating || nk.Status != registry.StatusActive {
		t.Fatalf("after begin: %+v, want OLD rotating and NEW active", reg)
	}
	if old.KeyVersion != "1" || nk.KeyVersion != "2" || old.Alias != o.Old.Ref || nk.Alias != o.New.Ref ||
		old.Algorithm != registry.Algorithm || old.Provider != registry.Provider || old.CreatedAt == nil {
		t.Errorf("after begin: OLD %+v, NEW %+v", old, nk)
	}
	r = o.cmd([]string{"keys", "begin"})
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stdout, "already begun") {
		t.Errorf("a second begin must change nothing:\n%s", r.stdout)
	}

	refusals := []struct {
		name string
		args []string
		code int
		says string
	}{
		{"retire a key rows are under", []string{"keys", "retire", "--key", o.Old.Ref}, exitConfig, "still under " + o.Old.ARN + ": 300 rows of public.payment_methods"},
		{"retire the active key", []string{"keys", "retire", "--key", o.New.ARN}, exitConfig, "is the active key"},
		{"delete a rotating key", []string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "7"}, exitConfig, "not retired"},
		{"retire without --key", []string{"keys", "retire"}, exitUsage, "needs --key"},
		{"unknown sub-command", []string{"keys", "destroy"}, exitUsage, `unknown command "destroy"`},
	}
	for _, c := range refusals {
		r := o.cmd(c.args)
		if r.code != c.code || !strings.Contains(r.stderr, c.says) {
			t.Errorf("%s: got exit %d, want %d with %q\n%s", c.name, r.code, c.code, c.says, r)
		}
	}
	if reg := o.registry(); reg[o.Old.ARN].Status != registry.StatusRotating {
		t.Fatalf("a refused retire changed the registry: %+v", reg[o.Old.ARN])
	}

	// After the run no row is under OLD: retire succeeds, and is idempotent.
	o.mustCode(o.cmd([]string{"run"}), exitOK)
	r = o.cmd([]string{"keys", "retire", "--key", o.Old.Ref})
	o.mustCode(r, exitOK)
	old = o.registry()[o.Old.ARN]
	if old.Status != registry.StatusRetired || old.RetiredAt == nil {
		t.Fatalf("after retire: %+v", old)
	}
	r = o.cmd([]string{"keys", "retire", "--key", o.Old.ARN})
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stdout, "already retired") {
		t.Errorf("second retire:\n%s", r.stdout)
	}
	// A retired key is not made active again.
	r = o.cmd([]string{"keys", "begin"}, "OLD_KEY_ID="+o.New.Ref, "NEW_KEY_ID="+o.Old.Ref)
	if r.code != exitConfig || !strings.Contains(r.stderr, "retired") {
		t.Errorf("begin back to a retired key: got exit %d\n%s", r.code, r)
	}

	// The live API writes a row under the retired key: deletion is refused.
	o.insertRow("00000000-0000-4000-8000-00000000abcd", o.seal(o.Old, "00000000-0000-4000-8000-00000000abcd", []byte("late writer")))
	r = o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "7"})
	if r.code != exitConfig || !strings.Contains(r.stderr, "1 rows of public.payment_methods") {
		t.Errorf("delete a key a row is under: got exit %d\n%s", r.code, r)
	}
	if got := o.keyState(o.Old.ARN); got != "Enabled" {
		t.Fatalf("a refused deletion reached KMS: key is %s", got)
	}
	o.exec(`DELETE FROM payment_methods WHERE id = '00000000-0000-4000-8000-00000000abcd'`)

	r = o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "3"})
	o.mustCode(r, exitConfig)
	r = o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.Ref, "--pending-days", "7"})
	o.mustCode(r, exitOK)
	if got := o.keyState(o.Old.ARN); got != "PendingDeletion" {
		t.Errorf("after schedule-deletion the key is %s, want PendingDeletion", got)
	}
	old = o.registry()[o.Old.ARN]
	if old.DeletionScheduledAt == nil || old.DeletionDate == nil {
		t.Fatalf("deletion not recorded: %+v", old)
	}
	if d := time.Until(*old.DeletionDate); d < 6*24*time.Hour || d > 8*24*time.Hour {
		t.Errorf("deletion date %s is not about 7 days away", old.DeletionDate)
	}
	r = o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "7"})
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stdout, "already pending deletion") {
		t.Errorf("second schedule-deletion:\n%s", r.stdout)
	}
	r = o.cmd([]string{"keys"})
	o.mustCode(r, exitOK)
	for _, want := range []string{"VERSION", "retired", "active", o.Old.ARN, o.New.Ref, registry.Algorithm, "aws-kms"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("keys list lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestKeysRollbackAndThirdKey: begin with the keys swapped is the rollback
// (the old key active again); a third active key refuses a begin.
func TestKeysRollbackAndThirdKey(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)
	o.mustCode(o.cmd([]string{"keys", "begin"}, "OLD_KEY_ID="+o.New.Ref, "NEW_KEY_ID="+o.Old.Ref), exitOK)
	reg := o.registry()
	if reg[o.Old.ARN].Status != registry.StatusActive || reg[o.New.ARN].Status != registry.StatusRotating {
		t.Fatalf("after the rollback begin: %+v", reg)
	}
	third := o.NewKey("third-" + t.Name())
	r := o.cmd([]string{"keys", "begin"}, "OLD_KEY_ID="+third.Ref)
	if r.code != exitConfig || !strings.Contains(r.stderr, "finish that rotation") {
		t.Errorf("begin from a key that is not the active one: got exit %d\n%s", r.code, r)
	}
	if n := o.int(`SELECT count(*) FROM token_encryption_keys WHERE status = 'active'`); n != 1 {
		t.Errorf("%d active keys, want 1", n)
	}
}

// TestKeysHandMadeRegistry: a registry the runbook created by hand, with only
// its columns, is used as it is (never altered: no alias column is added);
// one lacking a runbook column is refused.
func TestKeysHandMadeRegistry(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.exec(`CREATE TABLE token_encryption_keys (key_id text PRIMARY KEY, key_version int NOT NULL,
		status text NOT NULL, algorithm text, provider text, retired_at timestamptz)`)
	o.exec(`INSERT INTO token_encryption_keys VALUES ($1, 7, 'active', 'AES-256-GCM', 'aws-kms', NULL)`, o.Old.ARN)
	r := o.cmd([]string{"keys", "--json"})
	o.mustCode(r, exitOK)
	if k := opDecode[keysOutput](t, r).Keys; len(k) != 1 || k[0].KeyVersion != "7" || k[0].Alias != "" {
		t.Errorf("list of a hand-made registry: %+v", k)
	}
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)
	reg := o.registry()
	if reg[o.Old.ARN].Status != registry.StatusRotating || reg[o.New.ARN].KeyVersion != "8" || reg[o.New.ARN].Alias != "" {
		t.Errorf("begin on a hand-made registry: %+v", reg)
	}

	o.exec(`DROP TABLE token_encryption_keys`)
	o.exec(`CREATE TABLE token_encryption_keys (key_id text PRIMARY KEY, status text NOT NULL)`)
	r = o.cmd([]string{"keys", "begin"})
	if r.code != exitConfig || !strings.Contains(r.stderr, "has no column key_version, algorithm, provider, retired_at") {
		t.Errorf("begin on a registry without the runbook's columns: got exit %d\n%s", r.code, r)
	}
}
