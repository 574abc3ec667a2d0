package batch_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// faultyKMS puts the fault proxy between the engine and the emulator. The
// SDK client retries like kmsclient.New's (no client-side retry quota).
func faultyKMS(t *testing.T, e *fixture.Env) (*kmsfault.Proxy, *kms.Client) {
	t.Helper()
	p, err := kmsfault.Start(e.KMS.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	api := kms.New(e.API.Options(), func(o *kms.Options) {
		o.BaseEndpoint = aws.String(p.Endpoint())
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 8
			so.MaxBackoff = 100 * time.Millisecond
			so.RateLimiter = ratelimit.None
		})
	})
	return p, api
}

// TestKMSThrottlingAndErrors: throttling, 5xx answers and connection resets
// are retried (KMS attempts, then pages); they never quarantine a row, and
// the run ends as if nothing happened.
func TestKMSThrottlingAndErrors(t *testing.T) {
	t.Parallel()
	const rows = 2000
	e := fixture.New(t, "uuid")
	ids := e.Seed(rows, e.Old, 1)
	proxy, api := faultyKMS(t, e)
	proxy.Set(kmsfault.Faults{Throttle: 0.2, Error5xx: 0.05, Reset: 0.02})
	sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 200, api: api})
	if err != nil {
		t.Fatalf("run under KMS faults: got %v, want nil", err)
	}
	counts := proxy.Counts()
	t.Logf("%d KMS requests seen, %d forwarded Decrypt, %d forwarded GenerateDataKey", proxy.Total(), counts["Decrypt"], counts["GenerateDataKey"])
	if proxy.Total() <= counts["Decrypt"]+counts["GenerateDataKey"] {
		t.Errorf("no request was faulted (%d seen, %v forwarded): the test proves nothing", proxy.Total(), counts)
	}
	if sum.PassAll.Counts.Quarantined != 0 || len(e.Quarantined()) != 0 {
		t.Errorf("rows quarantined for KMS faults: %+v", sum.PassAll.Counts)
	}
	e.AssertAll(fixture.Check{Under: e.New})
	assertOneAuditEach(t, e, ids)
}

// TestKeyDeniedMidRun: when KMS starts denying the old key in the middle of
// a run (a policy change, a disabled key), that is an error of the
// environment: the run stops with ErrKeyUnusable, quarantines nothing,
// leaves every row either rotated or untouched, and gives its leases back.
// Once access is restored, a rerun finishes the job.
func TestKeyDeniedMidRun(t *testing.T) {
	t.Parallel()
	const rows = 4000
	e := fixture.New(t, "bigint")
	ids := e.Seed(rows, e.Old, 1)
	before := map[string][]byte{}
	for _, r := range e.Rows() {
		before[r.ID] = r.Token
	}
	proxy, api := faultyKMS(t, e)

	type result struct {
		sum batch.Summary
		err error
	}
	done := make(chan result, 1)
	db := newPool(t, e, 6)
	go func() {
		sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 100, api: api, db: db})
		done <- result{sum, err}
	}()
	testbed.WaitFor(t, "400 rows audited", time.Minute, func() bool { return e.AuditTotal() >= 400 })
	proxy.Set(kmsfault.Faults{Deny: []string{e.Old.ARN}})
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the run did not stop within a minute of the key being denied")
	}
	if !errors.Is(r.err, kmsclient.ErrKeyUnusable) {
		t.Fatalf("run: got %v, want ErrKeyUnusable", r.err)
	}
	var p *batch.PartialError
	if errors.As(r.err, &p) {
		t.Errorf("run: got a PartialError %v, want a plain key error", p)
	}
	byKey := e.KeyCounts()
	t.Logf("stopped with %d rows under NEW and %d under OLD: %v", byKey[e.New.ARN], byKey[e.Old.ARN], r.err)
	if byKey[e.New.ARN]+byKey[e.Old.ARN] != rows || byKey[e.Old.ARN] == 0 {
		t.Fatalf("rows by key %v: want every row under OLD or NEW, some still under OLD", byKey)
	}
	if q := e.Quarantined(); len(q) != 0 {
		t.Errorf("rows quarantined for a key error: %d, want 0", len(q))
	}
	if n := e.Int(`SELECT count(*) FROM payment_method_audit WHERE action <> 'token_reencrypted'`); n != 0 {
		t.Errorf("failure audit rows for a key error: %d, want 0", n)
	}
	if got, want := e.AuditTotal(), int64(byKey[e.New.ARN]); got != want {
		t.Errorf("audit rows %d, want one per row under NEW (%d)", got, want)
	}
	untouched := map[string]bool{}
	for _, row := range e.Rows() {
		if bytes.Equal(row.Token, before[row.ID]) {
			untouched[row.ID] = true
		}
	}
	if len(untouched) != byKey[e.Old.ARN] {
		t.Errorf("%d rows byte-identical to before, want the %d under OLD", len(untouched), byKey[e.Old.ARN])
	}
	e.AssertAll(fixture.Check{Under: e.New, Skip: untouched})
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state = 'running' AND lease_expires_at > now()`); n != 0 {
		t.Errorf("live leases after the stop: %d, want 0 (given back)", n)
	}

	proxy.Set(kmsfault.Faults{})
	if _, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 100, api: api}); err != nil {
		t.Fatalf("rerun with access restored: %v", err)
	}
	e.AssertAll(fixture.Check{Under: e.New})
	assertOneAuditEach(t, e, ids)
}
