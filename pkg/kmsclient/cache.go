package kmsclient

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"
)

// Cache keeps recently unwrapped data keys, keyed by (key ARN, wrapped key),
// so rows that share a data key cost one Decrypt. It is bounded in entries
// and in age, hands out copies, and clears every plaintext key it drops.
//
// It holds a plaintext key only when it can pay off (admission rule):
//
//   - a key the caller says several rows need now (a page's group of rows
//     under one wrapped key) is cached: its writer shares keys, so rows
//     under it may sit in the next page or in another range;
//   - a key needed by one row is not cached the first time it is seen. On
//     legacy data (one data key per row) no key is ever seen twice, and on
//     a rotation's own output (one data key per page) the keys come in large
//     groups, so these keys would only sit in memory until they expire. The
//     cache remembers a fingerprint of the wrapped key (not the data key);
//     when the same wrapped key comes back (a writer whose shared keys are
//     scattered over the id space, or a group cut by a page boundary), it is
//     cached from then on: at most one extra Decrypt per shared key.
//
// A sweeper goroutine drops and zeroes expired keys even when nobody looks
// them up again. It runs only while the cache holds keys and stops when the
// cache is empty or purged; call Purge when the run ends.
type Cache struct {
	mu      sync.Mutex
	max     int
	ttl     time.Duration
	now     func() time.Time
	order   *list.List // front = most recently used
	entries map[string]*list.Element

	seed    maphash.Seed
	seen    map[uint64]struct{} // fingerprints of keys decrypted for one row, not cached
	seenFIF []uint64            // the same, oldest first, at most max

	sweeping bool
	stop     chan struct{} // closed by Purge to end the sweeper
	swept    chan struct{} // closed when the sweeper has returned
}

type cacheEntry struct {
	id      string
	dek     DataKey
	expires time.Time
}

// NewCache returns a cache of at most maxEntries keys, each kept at most ttl.
// maxEntries <= 0 returns nil, which is a valid cache that keeps nothing.
func NewCache(maxEntries int, ttl time.Duration) *Cache {
	if maxEntries <= 0 || ttl <= 0 {
		return nil
	}
	return &Cache{max: maxEntries, ttl: ttl, now: time.Now, order: list.New(), entries: map[string]*list.Element{},
		seed: maphash.MakeSeed(), seen: map[uint64]struct{}{}}
}

func cacheID(keyARN string, wdek []byte) string { return keyARN + "\x00" + string(wdek) }

func (c *Cache) get(keyARN string, wdek []byte) (DataKey, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[cacheID(keyARN, wdek)]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.remove(el)
		return nil, false
	}
	c.order.MoveToFront(el)
	return DataKey(append([]byte(nil), e.dek...)), true
}

// admit reports whether a key needed by rows rows now is worth caching (see
// the admission rule on Cache), and remembers single-row keys it refuses.
func (c *Cache) admit(keyARN string, wdek []byte, rows int) bool {
	if c == nil {
		return false
	}
	if rows > 1 {
		return true
	}
	h := maphash.String(c.seed, cacheID(keyARN, wdek))
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[h]; ok {
		return true
	}
	c.seen[h] = struct{}{}
	c.seenFIF = append(c.seenFIF, h)
	if len(c.seenFIF) > c.max {
		delete(c.seen, c.seenFIF[0])
		c.seenFIF = c.seenFIF[1:]
	}
	return false
}

func (c *Cache) put(keyARN string, wdek []byte, dek DataKey) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := cacheID(keyARN, wdek)
	if el, ok := c.entries[id]; ok {
		c.remove(el)
	}
	own := DataKey(append([]byte(nil), dek...))
	c.entries[id] = c.order.PushFront(&cacheEntry{id: id, dek: own, expires: c.now().Add(c.ttl)})
	for c.order.Len() > c.max {
		c.remove(c.order.Back())
	}
	if !c.sweeping {
		c.sweeping = true
		c.stop, c.swept = make(chan struct{}), make(chan struct{})
		go c.sweep(c.stop, c.swept)
	}
}

// sweepEvery is how often the sweeper looks for expired keys: an eighth of
// the TTL, within [10ms, 1s], so a key outlives its TTL by at most that.
func (c *Cache) sweepEvery() time.Duration {
	return min(max(c.ttl/8, 10*time.Millisecond), time.Second)
}

// sweep drops expired keys until the cache is empty or stop is closed.
func (c *Cache) sweep(stop, swept chan struct{}) {
	defer close(swept)
	tick := time.NewTicker(c.sweepEvery())
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		c.mu.Lock()
		now := c.now()
		for el := c.order.Back(); el != nil; {
			prev := el.Prev()
			if !now.Before(el.Value.(*cacheEntry).expires) {
				c.remove(el)
			}
			el = prev
		}
		empty := c.order.Len() == 0
		if empty && c.stop == stop { // still this sweeper's cache to watch
			c.sweeping = false
		}
		c.mu.Unlock()
		if empty {
			return
		}
	}
}

func (c *Cache) remove(el *list.Element) {
	e := c.order.Remove(el).(*cacheEntry)
	e.dek.Zero()
	delete(c.entries, e.id)
}

// Len is the number of keys held.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// Purge clears and drops every key and stops the sweeper; call it when a
// run ends. The cache may be used again afterwards.
func (c *Cache) Purge() {
	if c == nil {
		return
	}
	c.mu.Lock()
	for c.order.Len() > 0 {
		c.remove(c.order.Back())
	}
	clear(c.seen)
	c.seenFIF = nil
	var stop, swept chan struct{}
	if c.sweeping {
		c.sweeping = false
		stop, swept = c.stop, c.swept
	}
	c.mu.Unlock()
	if stop != nil {
		close(stop)
		<-swept
	}
}
