package cli

// Shared helpers of the operator-command tests (plan, status, verify, keys,
// observability, canary). Every test runs the real `run` function against a
// throwaway Postgres and local-kms, the KMS traffic going through the
// counting proxy of internal/kmsfault.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// opEnv is one operator test's world: database, keys, the KMS proxy the
// commands talk to, and the environment they are given.
type opEnv struct {
	*fixture.Env
	t     *testing.T
	proxy *kmsfault.Proxy
	vars  map[string]string
}

// newOpEnv builds the world. The AWS SDK reads its endpoint and credentials
// from the process environment, so these tests use t.Setenv and do not run
// in parallel.
func newOpEnv(t *testing.T, idType string) *opEnv {
	t.Helper()
	e := fixture.New(t, idType)
	p, err := kmsfault.Start(e.KMS.Endpoint())
	if err != nil {
		t.Fatalf("kms proxy: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	for _, kv := range e.KMS.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_ENDPOINT_URL_KMS", p.Endpoint())
	return &opEnv{Env: e, t: t, proxy: p, vars: map[string]string{
		"DATABASE_URL": e.URL,
		"OLD_KEY_ID":   e.Old.Ref,
		"NEW_KEY_ID":   e.New.Ref,
		"PROGRESS":     "off",
		"LEASE_TTL":    "5s",
		"STOP_GRACE":   "2s",
		"RANGES":       "8",
	}}
}

// opResult is one command's outcome.
type opResult struct {
	code           int
	stdout, stderr string
}

func (r opResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// cmd runs `reencrypt args...` in-process with the world's variables plus
// extra ones ("NAME=value").
func (o *opEnv) cmd(args []string, extra ...string) opResult {
	return o.cmdCtx(context.Background(), args, nil, extra...)
}

func (o *opEnv) cmdCtx(ctx context.Context, args []string, stderr *testbed.SyncBuffer, extra ...string) opResult {
	o.t.Helper()
	vars := map[string]string{}
	for k, v := range o.vars {
		vars[k] = v
	}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var stdout bytes.Buffer
	if stderr == nil {
		stderr = &testbed.SyncBuffer{}
	}
	code := run(ctx, args, &stdout, stderr, vars)
	r := opResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
	if testing.Verbose() {
		o.t.Logf("reencrypt %s → %s", strings.Join(args, " "), r)
	}
	return r
}

// mustCode fails the test unless the command exited with want.
func (o *opEnv) mustCode(r opResult, want int) {
	o.t.Helper()
	if r.code != want {
		o.t.Fatalf("got exit %d, want %d\n%s", r.code, want, r)
	}
}

// decode parses a command's --json output.
func opDecode[T any](t *testing.T, r opResult) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("decode JSON output: %v\n%s", err, r)
	}
	return v
}

// seal returns a token for row id sealed under key with a data key of its
// own, as the live API writes it.
func (o *opEnv) seal(key kmsclient.Key, id string, plaintext []byte) []byte {
	o.t.Helper()
	dek, wdek, err := o.Client.GenerateDataKey(context.Background(), key.ARN)
	if err != nil {
		o.t.Fatalf("generate data key: %v", err)
	}
	defer dek.Zero()
	env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: key.ARN, WDEK: wdek, Namespace: fixture.Namespace, RowID: id}, plaintext)
	if err != nil {
		o.t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		o.t.Fatal(err)
	}
	return b
}

func (o *opEnv) exec(sql string, args ...any) int64 {
	o.t.Helper()
	tag, err := o.DB.Exec(context.Background(), sql, args...)
	if err != nil {
		o.t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

func (o *opEnv) int(sql string, args ...any) int64 {
	o.t.Helper()
	var n int64
	if err := o.DB.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		o.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (o *opEnv) token(id string) []byte {
	o.t.Helper()
	var tok []byte
	if err := o.DB.QueryRow(context.Background(), `SELECT encrypted_token FROM payment_methods WHERE id::text = $1`, id).Scan(&tok); err != nil {
		o.t.Fatalf("read token of %s: %v", id, err)
	}
	return tok
}

func (o *opEnv) setToken(id string, tok []byte) {
	o.t.Helper()
	if n := o.exec(`UPDATE payment_methods SET encrypted_token = $2 WHERE id::text = $1`, id, tok); n != 1 {
		o.t.Fatalf("set token of %s: %d rows", id, n)
	}
}

// insertRow adds a row with the given token (the live API writing).
func (o *opEnv) insertRow(id string, tok []byte) {
	o.t.Helper()
	o.exec(`INSERT INTO payment_methods (id, encrypted_token) VALUES ($1::text::`+o.IDType+`, $2)`, id, tok)
}

// schemaExists reports whether a schema exists.
func (o *opEnv) schemaExists(name string) bool {
	return o.int(`SELECT count(*) FROM pg_namespace WHERE nspname = $1`, name) > 0
}

// tableExists reports whether schema.table exists.
func (o *opEnv) tableExists(qualified string) bool {
	return o.int(`SELECT count(*) FROM pg_class WHERE oid = to_regclass($1)`, qualified) > 0
}

// keyState asks KMS (directly, not through the proxy) for a key's state.
func (o *opEnv) keyState(arn string) string {
	o.t.Helper()
	out, err := o.API.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(arn)})
	if err != nil {
		o.t.Fatalf("describe key: %v", err)
	}
	return string(out.KeyMetadata.KeyState)
}

// rotatedSoFar is the bookkeeping's count of rotated rows (0 before the
// schema exists).
func (o *opEnv) rotatedSoFar() int64 {
	if !o.tableExists("reencrypt.ranges") {
		return 0
	}
	return o.int(`SELECT coalesce(sum(rows_rotated), 0)::bigint FROM reencrypt.ranges`)
}

// interruptedRun starts `run` slowly (a tight KMS budget, small pages) and
// cancels it once some rows are committed, leaving a half-done table as a
// SIGTERM would. It returns the run's result (exit 75).
func (o *opEnv) interruptedRun(extra ...string) opResult {
	o.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan opResult, 1)
	args := append([]string{"KMS_RATE_LIMIT=150", "BATCH_SIZE=20"}, extra...)
	go func() { done <- o.cmdCtx(ctx, []string{"run"}, nil, args...) }()
	deadline := time.Now().Add(30 * time.Second)
	for o.rotatedSoFar() == 0 {
		select {
		case r := <-done:
			o.t.Fatalf("run ended before it could be interrupted:\n%s", r)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			o.t.Fatal("run committed nothing in 30s")
		}
	}
	cancel()
	r := <-done
	if r.code != exitRetry {
		o.t.Fatalf("interrupted run: got exit %d, want %d\n%s", r.code, exitRetry, r)
	}
	return r
}

// opLogs parses the JSON log lines of a command's stderr (other lines,
// such as a progress bar's, are skipped).
func opLogs(stderr string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(stderr, "\n") {
		i := strings.Index(line, "{")
		if i < 0 {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line[i:]), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
