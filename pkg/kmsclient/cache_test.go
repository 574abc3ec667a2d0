package kmsclient

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

func TestCacheBoundsAndClears(t *testing.T) {
	c := NewCache(2, time.Minute)
	defer c.Purge()
	var now atomic.Int64 // the sweeper reads the clock too
	now.Store(time.Unix(1000, 0).UnixNano())
	c.now = func() time.Time { return time.Unix(0, now.Load()) }
	key := func(b byte) DataKey { return DataKey(bytes.Repeat([]byte{b}, 32)) }

	c.put("arn", []byte("w1"), key(1))
	c.put("arn", []byte("w2"), key(2))
	held := c.order.Front().Value.(*cacheEntry).dek // w2's stored copy
	c.put("arn", []byte("w3"), key(3))              // evicts w1 (least recent)
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want 2", c.Len())
	}
	if _, ok := c.get("arn", []byte("w1")); ok {
		t.Fatalf("w1 still cached after eviction")
	}
	got, ok := c.get("arn", []byte("w2"))
	if !ok || !bytes.Equal(got, key(2)) {
		t.Fatalf("w2: got %v %v", ok, []byte(got))
	}
	// The caller owns its copy: zeroing it does not touch the cache.
	got.Zero()
	again, _ := c.get("arn", []byte("w2"))
	if !bytes.Equal(again, key(2)) {
		t.Fatalf("zeroing a returned key changed the cached one")
	}
	// Another key ARN is another entry.
	if _, ok := c.get("other-arn", []byte("w2")); ok {
		t.Fatalf("cache hit across key ARNs")
	}
	// Age limit: expired entries are dropped and zeroed.
	now.Add(int64(2 * time.Minute))
	if _, ok := c.get("arn", []byte("w2")); ok {
		t.Fatalf("expired entry returned")
	}
	if !bytes.Equal(held, make([]byte, 32)) {
		t.Fatalf("dropped key was not zeroed")
	}
	c.Purge()
	if c.Len() != 0 {
		t.Fatalf("Len after Purge = %d", c.Len())
	}
	var nilCache *Cache
	nilCache.put("arn", []byte("w"), key(9))
	if _, ok := nilCache.get("arn", []byte("w")); ok || nilCache.Len() != 0 {
		t.Fatalf("nil cache kept something")
	}
}

// TestCacheSweeperEvictsExpired: a key nobody looks up again is dropped and
// zeroed once its age passes the TTL, by the cache itself; the sweeper
// goroutine ends when the cache is empty (goleak in TestMain checks it).
func TestCacheSweeperEvictsExpired(t *testing.T) {
	c := NewCache(8, 50*time.Millisecond)
	defer c.Purge()
	c.put("arn", []byte("w1"), DataKey(bytes.Repeat([]byte{7}, 32)))
	held := c.order.Front().Value.(*cacheEntry).dek
	testbed.Poll(5*time.Second, func() bool { return c.Len() == 0 })
	if n := c.Len(); n != 0 {
		t.Fatalf("Len = %d 5s after a 50ms TTL, want 0: expired keys stay in memory", n)
	}
	if !bytes.Equal(held, make([]byte, 32)) {
		t.Fatalf("expired key was dropped without being zeroed")
	}
}

// TestCacheAdmission: keys several rows need are cached at once; a key one
// row needs is cached only when its wrapped key comes back, and the memory
// of refused keys (fingerprints, no key material) is bounded.
func TestCacheAdmission(t *testing.T) {
	c := NewCache(2, time.Minute)
	defer c.Purge()
	if !c.admit("arn", []byte("group"), 5) {
		t.Errorf("a key five rows need was refused")
	}
	if c.admit("arn", []byte("w1"), 1) {
		t.Errorf("a key one row needs, seen for the first time, was admitted")
	}
	if !c.admit("arn", []byte("w1"), 1) {
		t.Errorf("a single-row key seen a second time was refused")
	}
	for _, w := range []string{"w2", "w3", "w4"} {
		c.admit("arn", []byte(w), 1)
	}
	if len(c.seen) > 2 || len(c.seenFIF) > 2 {
		t.Errorf("fingerprints kept: %d/%d, want at most 2 (the cache size)", len(c.seen), len(c.seenFIF))
	}
	var nilCache *Cache
	if nilCache.admit("arn", []byte("w"), 9) {
		t.Errorf("nil cache admitted a key")
	}
}
