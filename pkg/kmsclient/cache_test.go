package kmsclient

import (
	"bytes"
	"testing"
	"time"
)

func TestCacheBoundsAndClears(t *testing.T) {
	c := NewCache(2, time.Minute)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
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
	now = now.Add(2 * time.Minute)
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
