package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// sealKid returns a token for row id whose data key is wrapped under key
// but whose envelope names kid (a key id, alias or alias ARN, as a client
// configured with one of those writes it).
func (o *opEnv) sealKid(key kmsclient.Key, kid, namespace, id string) []byte {
	o.t.Helper()
	dek, wdek, err := o.Client.GenerateDataKey(context.Background(), key.ARN)
	if err != nil {
		o.t.Fatalf("generate data key: %v", err)
	}
	defer dek.Zero()
	env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: key.ARN, WDEK: wdek, Namespace: namespace, RowID: id}, []byte("card "+id))
	if err != nil {
		o.t.Fatal(err)
	}
	env.KID = kid // Seal refuses an alias; Marshal writes what older writers wrote
	b, err := env.Marshal()
	if err != nil {
		o.t.Fatal(err)
	}
	return b
}

func newUUID(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

// rotated begins the rotation and runs it to the end: what most guard
// tests start from.
func (o *opEnv) rotated(extra ...string) {
	o.t.Helper()
	o.mustCode(o.cmd([]string{"keys", "begin"}, extra...), exitOK)
	o.mustCode(o.cmd([]string{"run"}, extra...), exitOK)
}

// TestKeysRetireRecordedTable: TABLE is wrong at retire time (an empty
// table); the table the rotation was begun on still has rows under OLD, and
// retire is refused naming it.
func TestKeysRetireRecordedTable(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(50, o.Old, 5)
	o.exec(`CREATE TABLE payment_methods_v2 (LIKE payment_methods INCLUDING ALL)`)
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)

	r := o.cmd([]string{"keys", "retire", "--key", o.Old.ARN}, "TABLE=payment_methods_v2")
	if r.code != exitConfig || !strings.Contains(r.stderr, "50 rows of public.payment_methods") {
		t.Errorf("retire with TABLE naming an empty table: got exit %d, want %d naming public.payment_methods\n%s", r.code, exitConfig, r)
	}
	if s := o.registry()[o.Old.ARN].Status; s != "rotating" {
		t.Errorf("after a refused retire OLD is %s", s)
	}
}

// TestKeysSecondTableBlocksDeletion: a second table (another schema, another
// namespace) holds rows under OLD; the deletion is refused naming it, and
// nothing reaches KMS.
func TestKeysSecondTableBlocksDeletion(t *testing.T) {
	o := newOpEnv(t, "uuid")
	ctx := context.Background()
	if err := seed.Schema(ctx, o.DB, "tenant2", "uuid"); err != nil {
		t.Fatal(err)
	}
	o.mustCode(o.cmd([]string{"keys", "begin"}, "TABLE_SCHEMA=tenant2", "NAMESPACE=tenant2"), exitOK)
	o.Seed(20, o.Old, 4)
	o.rotated()
	o.mustCode(o.cmd([]string{"keys", "retire", "--key", o.Old.ARN}), exitOK)

	// The API of the second tenant writes under OLD after the retire.
	for i := 1; i <= 2; i++ {
		o.exec(`INSERT INTO tenant2.payment_methods (id, encrypted_token) VALUES ($1, $2)`,
			newUUID(i), o.sealKid(o.Old, o.Old.ARN, "tenant2", newUUID(i)))
	}
	r := o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "7"})
	if r.code != exitConfig || !strings.Contains(r.stderr, "2 rows of tenant2.payment_methods") {
		t.Errorf("schedule-deletion with a second table under OLD: got exit %d, want %d naming tenant2.payment_methods\n%s", r.code, exitConfig, r)
	}
	if got := o.keyState(o.Old.ARN); got != "Enabled" {
		t.Fatalf("a refused deletion reached KMS: key is %s", got)
	}
}

// TestKeysKidForms: tokens whose kid is OLD's key id, alias name or alias
// ARN are under OLD; a kid KMS does not know is reported, not counted.
func TestKeysKidForms(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(10, o.Old, 2)
	o.rotated()
	aliasARN := strings.Replace(o.Old.ARN, ":key/"+o.Old.ID, ":"+o.Old.Alias(), 1)
	for i, kid := range []string{o.Old.ID, o.Old.Alias(), aliasARN} {
		o.insertRow(newUUID(i+1), o.sealKid(o.Old, kid, "payment_methods", newUUID(i+1)))
	}
	gone := fmt.Sprintf("alias/gone-%d", time.Now().UnixNano())
	o.insertRow(newUUID(9), o.sealKid(o.Old, gone, "payment_methods", newUUID(9)))

	// A kid KMS will not resolve (here: access denied) fails the check: no
	// status change.
	o.proxy.Set(kmsfault.Faults{Deny: []string{o.Old.Alias()}})
	r := o.cmd([]string{"keys", "retire", "--key", o.Old.ARN})
	o.proxy.Set(kmsfault.Faults{})
	if r.code == exitOK || o.registry()[o.Old.ARN].Status != "rotating" {
		t.Errorf("retire when a kid cannot be resolved: got exit %d, OLD %s; want a failure and no change\n%s", r.code, o.registry()[o.Old.ARN].Status, r)
	}

	r = o.cmd([]string{"keys", "retire", "--key", o.Old.ARN})
	if r.code != exitConfig || !strings.Contains(r.stderr, "3 rows of public.payment_methods") {
		t.Fatalf("retire with rows whose kid is OLD's key id, alias and alias ARN: got exit %d, want %d with 3 rows\n%s", r.code, exitConfig, r)
	}
	o.exec(`DELETE FROM payment_methods WHERE id IN ($1, $2, $3)`, newUUID(1), newUUID(2), newUUID(3))
	r = o.cmd([]string{"keys", "retire", "--key", o.Old.ARN})
	o.mustCode(r, exitOK)
	if !strings.Contains(r.stdout, "1 rows") || !strings.Contains(r.stdout, "unresolvable") {
		t.Errorf("retire must report the row whose kid KMS does not know:\n%s", r)
	}
}

// TestKeysRetireConcurrentWrite: a page transaction writing under OLD (it
// holds the engine's shared lock on OLD) commits while retire waits: retire
// counts after it and refuses.
func TestKeysRetireConcurrentWrite(t *testing.T) {
	o := newOpEnv(t, "uuid")
	ctx := context.Background()
	o.Seed(10, o.Old, 2)
	o.rotated()

	tx, err := o.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1)`, checkpoint.KeyLockID(o.Old.ARN)); err != nil {
		t.Fatal(err)
	}
	id := newUUID(77)
	if _, err := tx.Exec(ctx, `INSERT INTO payment_methods (id, encrypted_token) VALUES ($1, $2)`,
		id, o.seal(o.Old, id, []byte("rolled back"))); err != nil {
		t.Fatal(err)
	}
	done := make(chan opResult, 1)
	go func() { done <- o.cmd([]string{"keys", "retire", "--key", o.Old.ARN}) }()
	lock := uint64(checkpoint.KeyLockID(o.Old.ARN))
	var r opResult
	finished := false
	for {
		select {
		case r = <-done:
			finished = true // retire did not wait for the writer
		case <-time.After(20 * time.Millisecond):
		}
		if finished || o.int(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND classid::bigint = $1 AND objid::bigint = $2`, int64(lock>>32), int64(lock&0xffffffff)) > 0 {
			break
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if finished {
		t.Errorf("retire did not wait for the writer holding OLD's lock")
	} else {
		r = <-done
	}
	if r.code != exitConfig || !strings.Contains(r.stderr, "1 rows of public.payment_methods") {
		t.Errorf("retire while a writer under OLD commits: got exit %d, want %d\n%s", r.code, exitConfig, r)
	}
}

// TestKeysQuarantinedRowBlocksRetire: a row the run quarantined (its token
// does not parse) has only OLD to hope for: retire is refused while it is in
// the table.
func TestKeysQuarantinedRowBlocksRetire(t *testing.T) {
	o := newOpEnv(t, "uuid")
	ids := o.Seed(10, o.Old, 2)
	o.setToken(ids[3], []byte("\x01garbage"))
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)
	o.mustCode(o.cmd([]string{"run"}), exitQuarantined)

	r := o.cmd([]string{"keys", "retire", "--key", o.Old.ARN})
	if r.code != exitConfig || !strings.Contains(r.stderr, "1 quarantined") {
		t.Fatalf("retire with a quarantined row: got exit %d, want %d naming 1 quarantined row\n%s", r.code, exitConfig, r)
	}
	o.exec(`DELETE FROM payment_methods WHERE id = $1`, ids[3])
	o.mustCode(o.cmd([]string{"keys", "retire", "--key", o.Old.ARN}), exitOK)
}

// TestKeysScheduleDeletionWindow: --pending-days is required, and the key,
// its alias, the tables counted and their counts are printed before the KMS
// call (here KMS refuses it, and they are printed all the same).
func TestKeysScheduleDeletionWindow(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(10, o.Old, 2)
	o.rotated()
	o.mustCode(o.cmd([]string{"keys", "retire", "--key", o.Old.ARN}), exitOK)

	r := o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN})
	if r.code != exitUsage || !strings.Contains(r.stderr, "--pending-days") {
		t.Errorf("schedule-deletion without --pending-days: got exit %d, want %d\n%s", r.code, exitUsage, r)
	}
	if got := o.keyState(o.Old.ARN); got != "Enabled" {
		t.Fatalf("schedule-deletion without a window reached KMS: key is %s", got)
	}

	o.proxy.Set(kmsfault.Faults{Deny: []string{o.Old.ARN}})
	r = o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "7"})
	o.proxy.Set(kmsfault.Faults{})
	if r.code != exitKeyUnusable {
		t.Errorf("schedule-deletion KMS refuses: got exit %d, want %d\n%s", r.code, exitKeyUnusable, r)
	}
	for _, want := range []string{o.Old.ARN, o.Old.Alias(), "public.payment_methods", "0 rows"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("schedule-deletion printed no %q before the KMS call:\n%s", want, r)
		}
	}
	if got := o.keyState(o.Old.ARN); got != "Enabled" {
		t.Fatalf("key is %s", got)
	}
	r = o.cmd([]string{"keys", "schedule-deletion", "--key", o.Old.ARN, "--pending-days", "7"})
	o.mustCode(r, exitOK)
	if i, j := strings.Index(r.stdout, "public.payment_methods"), strings.Index(r.stdout, "KMS deletes"); i < 0 || j < i {
		t.Errorf("the counts must come before the result:\n%s", r.stdout)
	}
}

// TestKeysRunbookRegistry: the runbook's own table, exactly as it exists
// (text key_version, a row naming OLD by alias or key id, provider
// 'aws_kms'): begin marks that row instead of adding a duplicate, gives NEW
// the next version in the same pattern, and never changes the columns.
func TestKeysRunbookRegistry(t *testing.T) {
	for _, form := range []string{"alias", "key id"} {
		t.Run(form, func(t *testing.T) {
			o := newOpEnv(t, "uuid")
			ctx := context.Background()
			alias := fmt.Sprintf("alias/molam-tokenization-%d", time.Now().UnixNano())
			if _, err := o.API.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(o.Old.ID)}); err != nil {
				t.Fatal(err)
			}
			o.exec(`CREATE TABLE token_encryption_keys (key_id text PRIMARY KEY, key_version text NOT NULL,
				status text NOT NULL, algorithm text NOT NULL, provider text NOT NULL,
				created_at timestamptz NOT NULL DEFAULT now(), retired_at timestamptz)`)
			keyID := alias
			if form == "key id" {
				keyID = o.Old.ID
			}
			o.exec(`INSERT INTO token_encryption_keys (key_id, key_version, status, algorithm, provider)
				VALUES ($1, 'v1', 'active', 'AES-256-GCM', 'aws_kms')`, keyID)
			o.Seed(10, o.Old, 2)

			r := o.cmd([]string{"keys", "begin"}, "OLD_KEY_ID="+alias)
			o.mustCode(r, exitOK)
			if n := o.int(`SELECT count(*) FROM token_encryption_keys`); n != 2 {
				t.Errorf("begin left %d rows, want 2 (no duplicate for OLD)", n)
			}
			if n := o.int(`SELECT count(*) FROM token_encryption_keys WHERE key_version = 'v1' AND status = 'rotating'`); n != 1 {
				t.Errorf("the v1 row is not rotating")
			}
			if n := o.int(`SELECT count(*) FROM token_encryption_keys WHERE key_id = $1 AND key_version = 'v2' AND status = 'active' AND provider = 'aws_kms'`, o.New.ARN); n != 1 {
				t.Errorf("NEW is not recorded as v2, active, aws_kms")
			}
			if n := o.int(`SELECT count(*) FROM information_schema.columns WHERE table_name = 'token_encryption_keys'`); n != 7 {
				t.Errorf("the registry has %d columns, want the runbook's 7", n)
			}
			r = o.cmd([]string{"keys", "begin"}, "OLD_KEY_ID="+alias)
			o.mustCode(r, exitOK)
			if !strings.Contains(r.stdout, "already begun") {
				t.Errorf("second begin:\n%s", r)
			}
			o.mustCode(o.cmd([]string{"run"}, "OLD_KEY_ID="+alias), exitOK)
			o.mustCode(o.cmd([]string{"keys", "retire", "--key", alias}), exitOK)
			if n := o.int(`SELECT count(*) FROM token_encryption_keys WHERE key_version = 'v1' AND status = 'retired' AND retired_at IS NOT NULL`); n != 1 {
				t.Errorf("the v1 row is not retired")
			}
			r = o.cmd([]string{"keys", "--json"})
			o.mustCode(r, exitOK)
			if !strings.Contains(r.stdout, `"v2"`) {
				t.Errorf("keys list:\n%s", r)
			}
		})
	}
}

// TestRunPageWaitsForKeyLock: a page writing under NEW takes NEW's lock
// shared, so while keys retire (or schedule-deletion) holds it exclusively
// for NEW no page commits; the run goes on once it is released.
func TestRunPageWaitsForKeyLock(t *testing.T) {
	o := newOpEnv(t, "uuid")
	ctx := context.Background()
	o.Seed(20, o.Old, 2)
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)

	tx, err := o.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, checkpoint.KeyLockID(o.New.ARN)); err != nil {
		t.Fatal(err)
	}
	done := make(chan opResult, 1)
	go func() { done <- o.cmd([]string{"run"}, "RANGES=1") }()
	lock := uint64(checkpoint.KeyLockID(o.New.ARN))
	for {
		select {
		case r := <-done:
			t.Fatalf("run finished while NEW's lock was held exclusively:\n%s", r)
		case <-time.After(20 * time.Millisecond):
		}
		if o.int(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND classid::bigint = $1 AND objid::bigint = $2`, int64(lock>>32), int64(lock&0xffffffff)) > 0 {
			break
		}
	}
	if n := o.KeyCounts()[o.New.ARN]; n != 0 {
		t.Errorf("%d rows under NEW committed while its lock was held", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	o.mustCode(<-done, exitOK)
	if n := o.KeyCounts()[o.New.ARN]; n != 20 {
		t.Errorf("%d rows under NEW after the run, want 20", n)
	}
}

// TestKeysRecordedTableGone: a table recorded for the key that no longer
// exists cannot be proved empty: retire is refused, naming it.
func TestKeysRecordedTableGone(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.exec(`CREATE TABLE payment_methods_old (LIKE payment_methods INCLUDING ALL)`)
	o.mustCode(o.cmd([]string{"keys", "begin"}, "TABLE=payment_methods_old"), exitOK)
	o.Seed(10, o.Old, 2)
	o.rotated()
	o.exec(`DROP TABLE payment_methods_old`)
	r := o.cmd([]string{"keys", "retire", "--key", o.Old.ARN})
	if r.code != exitConfig || !strings.Contains(r.stderr, "public.payment_methods_old (recorded for this key) no longer exists") {
		t.Errorf("retire with a recorded table gone: got exit %d, want %d naming it\n%s", r.code, exitConfig, r)
	}
}

// TestKeysRunbookRegistryEmpty: the runbook's table with no row yet: the
// versions start the runbook's pattern, 'v1' then 'v2'.
func TestKeysRunbookRegistryEmpty(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.exec(`CREATE TABLE token_encryption_keys (key_id text PRIMARY KEY, key_version text NOT NULL,
		status text NOT NULL, algorithm text NOT NULL, provider text NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now(), retired_at timestamptz)`)
	o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK)
	if n := o.int(`SELECT count(*) FROM token_encryption_keys WHERE (key_id, key_version, status) IN (($1, 'v1', 'rotating'), ($2, 'v2', 'active'))`,
		o.Old.ARN, o.New.ARN); n != 2 {
		t.Errorf("begin on the runbook's empty table: want OLD v1 rotating and NEW v2 active")
	}
}
