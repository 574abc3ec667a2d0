package batch_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestPreflightRefuses: every configuration the issue lists as bad is
// refused by Preflight, with an error of the right class and a message that
// says what to fix, and before anything is written: no bookkeeping schema,
// not one row version of the token table changed, no audit row.
func TestPreflightRefuses(t *testing.T) {
	t.Parallel()
	type setup struct {
		db        batch.DB
		spec      tokentable.Spec
		old, new  string
		namespace string
	}
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, e *fixture.Env, s *setup)
		is      error         // errors.Is target; nil = must pass
		says    []string      // substrings of the message
		fields  []batch.Field // the settings a *batch.FieldError names, if any
	}{
		{name: "good configuration passes", prepare: func(*testing.T, *fixture.Env, *setup) {}},
		{name: "same key as alias and ARN", is: batch.ErrConfig, says: []string{"same KMS key"}, fields: []batch.Field{batch.FieldOldKey, batch.FieldNewKey},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) { s.new = e.Old.ARN }},
		{name: "unknown table", is: batch.ErrConfig, says: []string{"public.payment_methodz", "does not exist"},
			fields:  []batch.Field{tokentable.FieldTableSchema, tokentable.FieldTable, tokentable.FieldAuditTable, batch.FieldDatabase},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) { s.spec.Name = "payment_methodz" }},
		{name: "hostile table name", is: batch.ErrConfig, says: []string{"does not exist"},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) {
				s.spec.Name = `payment_methods"; DROP TABLE payment_methods; --`
			}},
		{name: "unknown token column", is: batch.ErrConfig, says: []string{`"token"`}, fields: []batch.Field{tokentable.FieldTokenColumn},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) { s.spec.TokenColumn = "token" }},
		{name: "token column not bytea", is: batch.ErrConfig, says: []string{"encrypted_token", "text", "not bytea"},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) {
				e.Exec(`CREATE TABLE text_tokens (id uuid PRIMARY KEY, encrypted_token text)`)
				s.spec.Name = "text_tokens"
			}},
		{name: "disabled new key", is: kmsclient.ErrKeyUnusable, says: []string{"Disabled"}, fields: []batch.Field{batch.FieldNewKey},
			prepare: func(t *testing.T, e *fixture.Env, s *setup) { disable(t, e, e.New) }},
		{name: "disabled old key", is: kmsclient.ErrKeyUnusable, says: []string{"Disabled"}, fields: []batch.Field{batch.FieldOldKey},
			prepare: func(t *testing.T, e *fixture.Env, s *setup) { disable(t, e, e.Old) }},
		{name: "new key pending deletion", is: kmsclient.ErrKeyUnusable, says: []string{"PendingDeletion"}, fields: []batch.Field{batch.FieldNewKey},
			prepare: func(t *testing.T, e *fixture.Env, s *setup) {
				if _, err := e.API.ScheduleKeyDeletion(context.Background(), &kms.ScheduleKeyDeletionInput{
					KeyId: aws.String(e.New.ID), PendingWindowInDays: aws.Int32(7)}); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "unknown key", is: kmsclient.ErrKeyUnusable, says: []string{"alias/no-such-key"}, fields: []batch.Field{batch.FieldNewKey},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) { s.new = "alias/no-such-key-" + e.New.ID }},
		{name: "wrong namespace", is: batch.ErrConfig, says: []string{"do not open"}, fields: []batch.Field{batch.FieldNamespace, batch.FieldOldKey},
			prepare: func(_ *testing.T, e *fixture.Env, s *setup) { s.namespace = "payment_method" }},
		{name: "unreachable database", is: batch.ErrTransient, says: []string{"cannot reach the database"}, fields: []batch.Field{batch.FieldDatabase},
			prepare: func(t *testing.T, e *fixture.Env, s *setup) {
				pool, err := pgxpool.New(context.Background(),
					fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", closedPort(t)))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(pool.Close)
				s.db = pool
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := fixture.New(t, "uuid")
			e.Seed(30, e.Old, 1)
			digest, versions := e.TableDigest(), e.RowVersions()
			s := &setup{db: e.DB, spec: e.Spec(), old: e.Old.Ref, new: e.New.Ref, namespace: fixture.Namespace}
			if !strings.HasPrefix(s.old, "alias/") {
				t.Fatalf("fixture OLD ref %q: want an alias", s.old)
			}
			tc.prepare(t, e, s)

			kc := kmsclient.NewClient(e.API, s.namespace, nil)
			checked, err := batch.Preflight(context.Background(), s.db, kc, batch.PreflightOptions{Spec: s.spec, OldRef: s.old, NewRef: s.new, Namespace: s.namespace, Mode: batch.Rekey})
			switch {
			case tc.is == nil && err != nil:
				t.Fatalf("Preflight: got %v, want nil", err)
			case tc.is == nil:
				if checked.Old.ARN != e.Old.ARN || checked.New.ARN != e.New.ARN {
					t.Errorf("resolved %s -> %s, want %s -> %s", checked.Old.ARN, checked.New.ARN, e.Old.ARN, e.New.ARN)
				}
			case err == nil:
				t.Fatalf("Preflight: got nil, want an error matching %v", tc.is)
			case !errors.Is(err, tc.is):
				t.Errorf("Preflight: got %v, want an error matching %v", err, tc.is)
			}
			for _, w := range tc.says {
				if err != nil && !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not say %q", err, w)
				}
			}
			if tc.fields != nil {
				var fe *batch.FieldError
				if !errors.As(err, &fe) || !slices.Equal(fe.Fields, tc.fields) {
					t.Errorf("Preflight: got %v, want a *batch.FieldError naming %v", err, tc.fields)
				}
				if strings.Contains(fmt.Sprint(err), "_KEY_ID") || strings.Contains(fmt.Sprint(err), "DATABASE_URL") ||
					strings.Contains(fmt.Sprint(err), "NAMESPACE") || strings.Contains(fmt.Sprint(err), "TABLE_SCHEMA") ||
					strings.Contains(fmt.Sprint(err), "_COLUMN") {
					t.Errorf("message %q names a variable of the command's: the engine names fields", err)
				}
			}
			if errors.Is(err, kmsclient.ErrKeyUnusable) && errors.Is(err, batch.ErrConfig) {
				t.Errorf("error %v is both a key and a configuration error", err)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
			// Nothing written.
			if e.SchemaExists("reencrypt") {
				t.Errorf("the bookkeeping schema exists after Preflight")
			}
			if got := e.TableDigest(); got != digest {
				t.Errorf("tokens changed: digest %s, want %s", got, digest)
			}
			if got := e.RowVersions(); got != versions {
				t.Errorf("rows written: versions %s, want %s", got, versions)
			}
			if got := e.AuditTotal(); got != 0 {
				t.Errorf("audit rows: %d, want 0", got)
			}
		})
	}
}

// TestPreflightRewrapChecksNamespace: in rewrap mode no token is opened, so
// Preflight has KMS re-encrypt one sampled wrapped key from OLD to NEW with
// the configured encryption context; local-kms refuses a wrong context, and
// Preflight must refuse the run naming the namespace, writing nothing.
func TestPreflightRewrapChecksNamespace(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	e.Seed(30, e.Old, 1)
	digest, versions := e.TableDigest(), e.RowVersions()
	ctx := context.Background()
	for _, tc := range []struct {
		ns   string
		want error
	}{{fixture.Namespace, nil}, {"payment_method", batch.ErrConfig}} {
		api := &countingKMS{KMS: e.API}
		kc := kmsclient.NewClient(api, tc.ns, nil)
		_, err := batch.Preflight(ctx, e.DB, kc, batch.PreflightOptions{Spec: e.Spec(), OldRef: e.Old.Ref, NewRef: e.New.Ref, Namespace: tc.ns, Mode: batch.Rewrap})
		if tc.want == nil && err != nil {
			t.Fatalf("namespace %q: Preflight: %v, want nil", tc.ns, err)
		}
		var fe *batch.FieldError
		if tc.want != nil && (!errors.Is(err, tc.want) || !errors.As(err, &fe) || !slices.Contains(fe.Fields, batch.FieldNamespace)) {
			t.Fatalf("namespace %q: Preflight: got %v, want %v naming the namespace field", tc.ns, err, tc.want)
		}
		if n := api.reencrypt.Load(); n < 1 || n > 3 {
			t.Errorf("namespace %q: %d ReEncrypt calls, want 1..3", tc.ns, n)
		}
		t.Logf("namespace %q: %v (%d ReEncrypt)", tc.ns, err, api.reencrypt.Load())
	}
	if e.SchemaExists("reencrypt") || e.TableDigest() != digest || e.RowVersions() != versions || e.AuditTotal() != 0 {
		t.Errorf("Preflight wrote something")
	}
}

func disable(t *testing.T, e *fixture.Env, k kmsclient.Key) {
	t.Helper()
	if _, err := e.API.DisableKey(context.Background(), &kms.DisableKeyInput{KeyId: aws.String(k.ID)}); err != nil {
		t.Fatalf("disable key: %v", err)
	}
}

// closedPort is a loopback port nothing listens on (a moment ago).
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}
