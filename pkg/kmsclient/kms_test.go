package kmsclient_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// newSDKClient builds a client the way production does (kmsclient.New reads
// the default chain), pointed at endpoint through AWS_ENDPOINT_URL_KMS.
func newSDKClient(t *testing.T, k *testbed.KMSServer, endpoint string, opts kmsclient.Options) kmsclient.KMS {
	t.Helper()
	for _, kv := range k.Env() {
		name, val, _ := strings.Cut(kv, "=")
		t.Setenv(name, val)
	}
	if endpoint != "" {
		t.Setenv("AWS_ENDPOINT_URL_KMS", endpoint)
	}
	c, err := kmsclient.New(context.Background(), opts)
	if err != nil {
		t.Fatalf("kmsclient.New: %v", err)
	}
	return c
}

func newKey(t *testing.T, k *testbed.KMSServer, api kmsclient.KMS, name string) kmsclient.Key {
	t.Helper()
	alias := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	if _, err := k.CreateKey(context.Background(), alias); err != nil {
		t.Fatalf("create key: %v", err)
	}
	key, err := kmsclient.Resolve(context.Background(), api, "alias/"+alias)
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	return key
}

// The KMS tests run against both emulators; local-kms is the reference and
// enforces key state, moto is the engine behind early LocalStack. Each is
// started in its own subtest, so that a machine without moto_server skips
// only the moto half (see testbed.Moto).
func emulators() map[string]func(testing.TB) *testbed.KMSServer {
	return map[string]func(testing.TB) *testbed.KMSServer{"local-kms": testbed.LocalKMS, "moto": testbed.Moto}
}

func TestEnvelopeRoundTripThroughKMS(t *testing.T) {
	for name, emulator := range emulators() {
		t.Run(name, func(t *testing.T) {
			k := emulator(t)
			ctx := context.Background()
			api := newSDKClient(t, k, "", kmsclient.Options{})
			key := newKey(t, k, api, "rt")
			if !strings.HasPrefix(key.ARN, "arn:aws:kms:") || strings.Contains(key.ARN, "alias/") {
				t.Fatalf("alias resolved to %q, want a key ARN", key.ARN)
			}
			if key.Alias() == "" {
				t.Errorf("Alias() is empty for a key configured by alias")
			}
			c := kmsclient.NewClient(api, "payment_methods", nil)
			dek, wdek, err := c.GenerateDataKey(ctx, key.ARN)
			if err != nil {
				t.Fatalf("GenerateDataKey: %v", err)
			}
			plain := []byte("tok_4242424242424242")
			env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: key.ARN, WDEK: wdek, Namespace: "payment_methods", RowID: "row-1"}, plain)
			dek.Zero()
			if err != nil {
				t.Fatal(err)
			}
			dek2, err := c.Decrypt(ctx, key.ARN, env.WDEK)
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			got, err := envelope.Open(env, dek2, "payment_methods", "row-1")
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("open after KMS decrypt: got %q, %v; want %q", got, err, plain)
			}

			// A wrong namespace is refused by KMS itself (encryption context).
			other := kmsclient.NewClient(api, "customer_secrets", nil)
			_, err = other.Decrypt(ctx, key.ARN, env.WDEK)
			if !errors.Is(err, kmsclient.ErrBadCiphertext) {
				t.Fatalf("decrypt with another namespace: got %v, want ErrBadCiphertext", err)
			}
		})
	}
}

func TestRewrapKeepsNonceAndCiphertext(t *testing.T) {
	for name, emulator := range emulators() {
		t.Run(name, func(t *testing.T) {
			k := emulator(t)
			ctx := context.Background()
			api := newSDKClient(t, k, "", kmsclient.Options{})
			oldKey, newKey := newKey(t, k, api, "old"), newKey(t, k, api, "new")
			c := kmsclient.NewClient(api, "payment_methods", nil)
			dek, wdek, err := c.GenerateDataKey(ctx, oldKey.ARN)
			if err != nil {
				t.Fatal(err)
			}
			plain := []byte("tok_visa_0001")
			env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: oldKey.ARN, WDEK: wdek, Namespace: "payment_methods", RowID: "42"}, plain)
			dek.Zero()
			if err != nil {
				t.Fatal(err)
			}
			newWDEK, err := c.ReEncrypt(ctx, env.WDEK, oldKey.ARN, newKey.ARN)
			if err != nil {
				t.Fatalf("ReEncrypt: %v", err)
			}
			moved, err := env.Rewrap(newKey.ARN, newWDEK)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(moved.Nonce, env.Nonce) || !bytes.Equal(moved.Ciphertext, env.Ciphertext) {
				t.Fatalf("rewrap changed nonce or ciphertext")
			}
			if moved.KID != newKey.ARN {
				t.Fatalf("kid %q, want %q", moved.KID, newKey.ARN)
			}
			dekNew, err := c.Decrypt(ctx, newKey.ARN, moved.WDEK)
			if err != nil {
				t.Fatalf("decrypt rewrapped key under NEW: %v", err)
			}
			got, err := envelope.Open(moved, dekNew, "payment_methods", "42")
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("open rewrapped token: got %q, %v", got, err)
			}
			// Decrypt pins KeyId: the rewrapped key does not decrypt as OLD.
			if _, err := c.Decrypt(ctx, oldKey.ARN, moved.WDEK); err == nil {
				t.Fatalf("decrypting a NEW-wrapped key with KeyId=OLD succeeded; KeyId is not pinned")
			}
		})
	}
}

// local-kms enforces key state; moto does not (see testbed.StartMoto).
func TestDisabledKeyIsUnusable(t *testing.T) {
	ctx := context.Background()
	k := testbed.LocalKMS(t)
	api := newSDKClient(t, k, "", kmsclient.Options{})
	key := newKey(t, k, api, "disabled")
	c := kmsclient.NewClient(api, "payment_methods", nil)
	_, wdek, err := c.GenerateDataKey(ctx, key.ARN)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := k.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(key.ARN)}); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"GenerateDataKey": func() error { _, _, err := c.GenerateDataKey(ctx, key.ARN); return err },
		"Decrypt":         func() error { _, err := c.Decrypt(ctx, key.ARN, wdek); return err },
	} {
		err := call()
		var kerr *kmsclient.Error
		if !errors.Is(err, kmsclient.ErrKeyUnusable) || !errors.As(err, &kerr) || kerr.KeyARN != key.ARN {
			t.Errorf("%s on a disabled key: got %v, want a *kmsclient.Error naming the key that is ErrKeyUnusable", name, err)
		}
	}
	resolved, err := kmsclient.Resolve(ctx, api, key.ARN)
	if err != nil {
		t.Fatal(err)
	}
	if err := resolved.Usable(); !errors.Is(err, kmsclient.ErrKeyUnusable) || !strings.Contains(err.Error(), "Disabled") {
		t.Errorf("Usable() on a disabled key: got %v", err)
	}
	if _, err := kmsclient.Resolve(ctx, api, "alias/does-not-exist"); !errors.Is(err, kmsclient.ErrKeyUnusable) {
		t.Errorf("resolving a missing alias: got %v, want ErrKeyUnusable (NotFound)", err)
	}
}

// The SDK's default retryer shares a 500-token retry quota per client. Under
// throttling, 64 concurrent callers drain it and calls fail with "retry
// quota exceeded". The project's client must not fail for that reason; the
// default client is run beside it to show the test can fail.
func TestThrottlingWithManyCallers(t *testing.T) {
	k := testbed.LocalKMS(t)
	proxy, err := kmsfault.Start(k.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	ours := newSDKClient(t, k, proxy.Endpoint(), kmsclient.Options{MaxAttempts: 20, MaxBackoff: 200 * time.Millisecond})
	key := newKey(t, k, ours, "throttle")
	// 20 attempts make a call fail at 50 % throttling with p = 2^-20, so the
	// test is not flaky; what it shows is that nothing fails on the quota.
	// The SDK default: standard retryer, 3 attempts, token-bucket quota.
	sdkDefault := kms.New(ours.(interface{ Options() kms.Options }).Options(), func(o *kms.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) { so.MaxBackoff = 200 * time.Millisecond })
	})

	run := func(api kmsclient.KMS) (failures, quota int) {
		proxy.Set(kmsfault.Faults{Throttle: 0.5})
		defer proxy.Set(kmsfault.Faults{})
		c := kmsclient.NewClient(api, "payment_methods", nil)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				for range 10 {
					dek, _, err := c.GenerateDataKey(context.Background(), key.ARN)
					if err == nil {
						dek.Zero()
						continue
					}
					mu.Lock()
					failures++
					var qe *ratelimit.QuotaExceededError
					if errors.As(err, &qe) || strings.Contains(err.Error(), "retry quota exceeded") {
						quota++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return failures, quota
	}

	dFail, dQuota := run(sdkDefault)
	t.Logf("SDK default retryer: %d of 640 calls failed, %d for the retry quota", dFail, dQuota)
	if dFail == 0 {
		t.Fatalf("the SDK default retryer had no failure at 50%% throttling: the fault proxy is not throttling, so this test proves nothing")
	}
	sdkOnly := newSDKClient(t, k, proxy.Endpoint(), kmsclient.Options{MaxAttempts: 20, MaxBackoff: 200 * time.Millisecond, SDKOnly: true})
	for name, api := range map[string]kmsclient.KMS{"direct path": ours, "SDK path": sdkOnly} {
		oFail, oQuota := run(api)
		if oFail != 0 || oQuota != 0 {
			t.Errorf("kmsclient, %s: %d of 640 calls failed (%d for the retry quota), want 0", name, oFail, oQuota)
		}
	}
}

// The budget paces every HTTP attempt, retries included: with a budget of
// exactly 60 attempts that never refills, KMS sees exactly 60, however many
// of them were retries of throttled attempts. (That the budget's bucket
// keeps every one-second window under its rate is TestBudgetWindowBound,
// on explicit times.)
func TestBudgetBoundsRequestRate(t *testing.T) {
	k := testbed.LocalKMS(t)
	proxy, err := kmsfault.Start(k.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	const tokens = 60
	budget := kmsclient.TokenBudget(tokens)
	// Resolve the key on a client of its own, outside the budget.
	key := newKey(t, k, newSDKClient(t, k, "", kmsclient.Options{}), "budget")
	api := newSDKClient(t, k, proxy.Endpoint(), kmsclient.Options{Budget: budget, MaxBackoff: 50 * time.Millisecond})
	c := kmsclient.NewClient(api, "payment_methods", nil)
	proxy.Set(kmsfault.Faults{Throttle: 0.2})
	proxy.ResetCounts()
	var ok, failed int
	for range 4 * tokens {
		// A deadline: once the budget is spent, Wait fails at once rather
		// than waiting for a refill that never comes.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		dek, _, err := c.GenerateDataKey(ctx, key.ARN)
		cancel()
		if err != nil {
			failed++
			if proxy.Total() >= tokens {
				break
			}
			continue
		}
		dek.Zero()
		ok++
	}
	t.Logf("%d calls ok, %d failed; %d attempts reached KMS, %d throttled; budget %d attempts",
		ok, failed, proxy.Total(), proxy.Throttled(), tokens)
	if proxy.Throttled() == 0 {
		t.Fatalf("no attempt was throttled: the fault proxy is not throttling, so this test proves nothing about retries")
	}
	if got := proxy.Total(); got != tokens {
		t.Fatalf("%d attempts reached KMS, budget is %d: an attempt did not wait on the budget", got, tokens)
	}
	budget = kmsclient.NewBudget(400, 2) // 200/s for this process
	if got := budget.Concurrency(10*time.Millisecond, 4, 256); got != 4 {
		t.Errorf("Concurrency(10ms) at 200/s = %d, want 4 (the minimum; Little's law gives 3)", got)
	}
	if got := kmsclient.NewBudget(1000, 1).Concurrency(10*time.Millisecond, 4, 256); got != 15 {
		t.Errorf("Concurrency(10ms) at 1000/s = %d, want 15", got)
	}
}
