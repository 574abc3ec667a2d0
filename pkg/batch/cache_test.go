package batch_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// TestDataKeyCacheResidency measures the plaintext data keys the cache
// holds while the real engine rotates against local-kms (sampled after
// every page commit) and once Run has returned, with the KMS Decrypts it
// took. Legacy data (one data key per row) never reuses a key: nothing
// should be held. Shared keys must still be cached well enough to cost at
// most two Decrypts per key when scattered over pages (uuid ids), and about
// one when rows sharing a key are neighbours (bigint ids).
func TestDataKeyCacheResidency(t *testing.T) {
	t.Parallel()
	const rows = 1000
	for _, tc := range []struct {
		name              string
		idType            string
		perKey            int
		maxHeld, maxAfter int
		maxDecrypt        int64
	}{
		{name: "legacy, one key per row", idType: "uuid", perKey: 1, maxHeld: 0, maxAfter: 0, maxDecrypt: rows},
		{name: "ten rows per key, scattered", idType: "uuid", perKey: 10, maxHeld: rows / 10, maxAfter: rows / 10, maxDecrypt: 2 * rows / 10},
		{name: "ten rows per key, neighbours", idType: "bigint", perKey: 10, maxHeld: rows / 10, maxAfter: rows / 10, maxDecrypt: rows/10 + rows/100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := fixture.New(t, tc.idType)
			e.Seed(rows, e.Old, tc.perKey)
			cache := kmsclient.NewCache(4096, time.Minute)
			defer cache.Purge()
			var held atomic.Int64
			api := &countingKMS{KMS: e.API}
			// As the CLI does: the preflight and the engine share the cache.
			kc := kmsclient.NewClient(api, fixture.Namespace, cache)
			if _, err := batch.Preflight(context.Background(), e.DB, kc, batch.PreflightOptions{Spec: e.Spec(), OldRef: e.Old.Ref, NewRef: e.New.Ref, Namespace: fixture.Namespace, Mode: batch.Rekey}); err != nil {
				t.Fatalf("preflight: %v", err)
			}
			api.decrypt.Store(0)
			sum, err := rotate(t, e, runOpts{batch: 100, api: api, cache: cache, hooks: batch.Hooks{
				AfterCommit: func(context.Context) {
					for n := int64(cache.Len()); ; {
						m := held.Load()
						if n <= m || held.CompareAndSwap(m, n) {
							return
						}
					}
				}}})
			if err != nil || sum.Process.Rotated != rows {
				t.Fatalf("run: %v, rotated %d of %d", err, sum.Process.Rotated, rows)
			}
			after := cache.Len()
			t.Logf("%s: %d rows, %d Decrypt; plaintext keys held: at most %d after a page, %d after the run",
				tc.name, rows, api.decrypt.Load(), held.Load(), after)
			if held.Load() > int64(tc.maxHeld) || after > tc.maxAfter {
				t.Errorf("plaintext data keys held: at most %d during the run, %d after it; want <= %d and <= %d",
					held.Load(), after, tc.maxHeld, tc.maxAfter)
			}
			if n := api.decrypt.Load(); n > tc.maxDecrypt {
				t.Errorf("%d KMS Decrypts for %d rows at %d rows per key, want <= %d", n, rows, tc.perKey, tc.maxDecrypt)
			}
		})
	}
}
