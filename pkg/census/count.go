package census

import (
	"context"
	"hash/maphash"
	"strings"

	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// MaxKeys is how many distinct kids a Census names, besides the ones it was
// asked to track; rows under more kids are only counted (OtherKeysRows). A
// corrupt table can hold any number of kids: the report must stay small.
const MaxKeys = 32

// Census is what a count found.
type Census struct {
	Rows int64 `json:"rows"`
	// Unreadable counts rows whose token is NULL or does not parse, by class.
	Unreadable map[string]int64 `json:"unreadable"`
	// ByKey counts rows by the kid of their envelope: every tracked key (even
	// at zero) and up to MaxKeys others.
	ByKey map[string]int64 `json:"by_key"`
	// OtherKeysRows counts rows under kids beyond MaxKeys, not named.
	OtherKeysRows int64 `json:"other_keys_rows,omitempty"`
	Pages         int64 `json:"pages"`
	// Focus describes the wrapped data keys of the rows under the focus key
	// (plan's OLD), when one was given.
	Focus *WrappedKeys `json:"focus,omitempty"`
}

// UnreadableRows is the sum of Unreadable.
func (c Census) UnreadableRows() int64 {
	var n int64
	for _, v := range c.Unreadable {
		n += v
	}
	return n
}

// WrappedKeys describes the wrapped data keys (wdek) of the rows under one
// KMS key: what the engine's KMS calls are made of.
type WrappedKeys struct {
	Key  string `json:"key_arn"`
	Rows int64  `json:"rows"`
	// Distinct wrapped keys; exact when Exact, else a HyperLogLog estimate.
	Distinct int64 `json:"distinct"`
	Exact    bool  `json:"exact"`
	// PagesWithRows counts pages holding at least one such row.
	PagesWithRows int64 `json:"pages_with_rows"`
	// PerPageDistinct sums, over pages, the distinct wrapped keys in the page:
	// the engine groups rows by wrapped key within a page.
	PerPageDistinct int64 `json:"per_page_distinct"`
}

// Counter accumulates a Census page by page. Its zero value is not usable:
// build it with NewCounter.
type Counter struct {
	tracked map[string]bool
	c       Census
	focus   string
	wk      WrappedKeys
	seen    *distinct
	pageSet map[string]struct{}
}

// NewCounter returns a counter that always names the tracked keys and, when
// focus is not empty, also counts the wrapped keys of the rows under focus.
func NewCounter(focus string, tracked ...string) *Counter {
	c := &Counter{tracked: map[string]bool{}, focus: focus,
		c: Census{Unreadable: map[string]int64{}, ByKey: map[string]int64{}}}
	for _, k := range append(tracked, focus) {
		if k != "" {
			c.tracked[k] = true
			c.c.ByKey[k] = 0
		}
	}
	if focus != "" {
		c.wk.Key = focus
		c.seen = newDistinct()
		c.pageSet = map[string]struct{}{}
	}
	return c
}

// Add counts one page of rows. It returns the kid of each row, "" for an
// unreadable one, so that a caller can attribute rows further (status counts
// rows under OLD per range) without parsing every envelope twice.
func (c *Counter) Add(page []tokentable.Row) []string {
	c.c.Pages++
	if c.focus != "" {
		clear(c.pageSet)
	}
	kids := make([]string, len(page))
	for i, r := range page {
		c.c.Rows++
		env, class := tokentable.ParseToken(r.Token)
		if env == nil {
			c.c.Unreadable[string(class)]++
			continue
		}
		kids[i] = env.KID
		c.addKey(env.KID)
		if env.KID == c.focus {
			c.wk.Rows++
			c.seen.add(env.WDEK)
			c.pageSet[string(env.WDEK)] = struct{}{}
		}
	}
	if c.focus != "" && len(c.pageSet) > 0 {
		c.wk.PagesWithRows++
		c.wk.PerPageDistinct += int64(len(c.pageSet))
	}
	return kids
}

func (c *Counter) addKey(kid string) {
	if _, ok := c.c.ByKey[kid]; ok || c.tracked[kid] || len(c.c.ByKey) < len(c.tracked)+MaxKeys {
		c.c.ByKey[kid]++
		return
	}
	c.c.OtherKeysRows++
}

// Census returns the counts so far.
func (c *Counter) Census() Census {
	out := c.c
	if c.focus != "" {
		wk := c.wk
		wk.Distinct, wk.Exact = c.seen.count()
		out.Focus = &wk
	}
	return out
}

// CountOptions is what Count reads and how it counts.
type CountOptions struct {
	Bounds   tokentable.Bounds // the rows counted; the whole table when zero
	PageSize int               // rows per read; tokentable.DefaultPageSize when 0
	Focus    string            // see NewCounter
	Tracked  []string          // see NewCounter
	Progress func(Census)      // called after every page when not nil
}

// Count walks the rows of t in o.Bounds and counts them.
func Count(ctx context.Context, db tokentable.Querier, t *tokentable.Table, o CountOptions) (Census, error) {
	c := NewCounter(o.Focus, o.Tracked...)
	err := tokentable.Walk(ctx, db, t, tokentable.WalkOptions{Bounds: o.Bounds, PageSize: o.PageSize}, func(page []tokentable.Row) error {
		c.Add(page)
		if o.Progress != nil {
			o.Progress(c.c)
		}
		return nil
	})
	return c.Census(), err
}

// KeyOf names the key ARN a kid refers to; kmsclient.KidResolver.ARN fits.
type KeyOf func(ctx context.Context, kid string) (string, error)

// RowsUnder counts the rows of the whole table under the key ARN, every
// envelope parsed. A kid that is not a key ARN (a key id or an alias a
// writer recorded) is resolved with keyOf; nil compares kids as they are.
//
// Only rows whose token could name the key are read (WalkContaining): every
// form of kid that resolves to the key contains its key id (its ARN, the id
// itself) or "alias/" (an alias name or alias ARN); with keyOf nil, its ARN.
// The others cannot be under it, and Postgres skips them without sending
// them.
//
// Recount.Retry, when not nil, says which failed page reads to read again
// (the run passes batch.IsTransient): a recount of a large table outlives
// connections an operator or a failover ends, and restarting it from the
// first row, or failing the run for it, would waste a whole pass's read.
func RowsUnder(ctx context.Context, db tokentable.Querier, t *tokentable.Table, keyARN string, o Recount) (int64, error) {
	keyOf, retry := o.KeyOf, o.Retry
	needles := [][]byte{[]byte(keyARN)}
	if keyOf != nil {
		needles = [][]byte{[]byte(keyID(keyARN)), []byte("alias/")}
	}
	var n int64
	err := tokentable.WalkContaining(ctx, db, t, tokentable.Containing{Needles: needles, PageSize: recountPageRows, Retry: retry}, func(page []tokentable.Row) error {
		for _, r := range page {
			env, _ := tokentable.ParseToken(r.Token)
			if env == nil {
				continue
			}
			kid := env.KID
			if keyOf != nil && kid != keyARN && !kmsclient.IsKeyARN(kid) {
				var err error
				if kid, err = keyOf(ctx, kid); err != nil {
					return err
				}
			}
			if kid == keyARN {
				n++
			}
		}
		return nil
	})
	return n, err
}

// Recount is how RowsUnder resolves kids and treats failed reads.
type Recount struct {
	KeyOf KeyOf            // resolves a kid that is not a key ARN; nil: kids compare as written
	Retry func(error) bool // which failed page reads are read again; nil: none
}

// recountPageRows is the page of RowsUnder's walk: few rows travel, so a
// page can be large; each is still one short statement (one snapshot).
const recountPageRows = 20_000

// keyID is the key id at the end of a key ARN (".../key/ID"), or the ARN
// itself when it has no slash.
func keyID(keyARN string) string {
	if i := strings.LastIndexByte(keyARN, '/'); i >= 0 && i < len(keyARN)-1 {
		return keyARN[i+1:]
	}
	return keyARN
}

// hashSeed is per process: the hashes never leave memory, so they need not
// be stable, and a random seed keeps crafted wrapped keys from colliding.
var hashSeed = maphash.MakeSeed()
