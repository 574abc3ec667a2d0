package kmsclient

import (
	"container/list"
	"sync"
	"time"
)

// Cache keeps recently unwrapped data keys, keyed by (key ARN, wrapped key),
// so rows that share a data key cost one Decrypt. It is bounded in entries
// and in age, hands out copies, and clears every plaintext key it drops.
type Cache struct {
	mu      sync.Mutex
	max     int
	ttl     time.Duration
	now     func() time.Time
	order   *list.List // front = most recently used
	entries map[string]*list.Element
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
	return &Cache{max: maxEntries, ttl: ttl, now: time.Now, order: list.New(), entries: map[string]*list.Element{}}
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

// Purge clears and drops every key; call it when a run ends.
func (c *Cache) Purge() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.order.Len() > 0 {
		c.remove(c.order.Back())
	}
}
