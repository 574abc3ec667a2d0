package batch_test

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/metrics"
)

// liveWriter plays the live API: it rewrites existing rows with new
// plaintexts sealed under OLD, inserts new rows under OLD and deletes a few,
// and remembers the last plaintext it committed for each row.
type liveWriter struct {
	e *fixture.Env

	mu      sync.Mutex
	latest  map[string][]byte
	updates int
	inserts int
	deletes int
}

func (w *liveWriter) want(id string) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p, ok := w.latest[id]; ok {
		return p
	}
	return seed.Plaintext(id)
}

// write updates (or, when id is new, inserts) one row under OLD and records
// its plaintext once committed.
func (w *liveWriter) write(ctx context.Context, id string, insert bool, n int) error {
	pt := fmt.Appendf(nil, "tok_live_%d_%s", n, id)
	tok, err := w.e.TrySeal(ctx, w.e.Old, id, pt)
	if err != nil {
		return err
	}
	cast := "::text::" + w.e.IDType
	if insert {
		_, err = w.e.DB.Exec(ctx, `INSERT INTO payment_methods (id, encrypted_token) VALUES ($1`+cast+`, $2)`, id, tok)
	} else {
		_, err = w.e.DB.Exec(ctx, `UPDATE payment_methods SET encrypted_token = $2, updated_at = now() WHERE id = $1`+cast, id, tok)
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.latest[id] = pt
	if insert {
		w.inserts++
	} else {
		w.updates++
	}
	w.mu.Unlock()
	return nil
}

// run writes until ctx ends. Each writer owns its ids, so two writers never
// race on one row and "latest" is exactly what was committed last. Writes
// themselves are not cancelled (a cancelled write may still commit, and its
// plaintext would then be unknown): ctx is only checked between them.
func (w *liveWriter) run(ctx context.Context, own []string, writer int) error {
	for n := 0; ctx.Err() == nil; n++ {
		var err error
		switch r := rand.IntN(20); {
		case r == 0 && len(own) > 100: // delete a row
			i := rand.IntN(len(own))
			id := own[i]
			own[i] = own[len(own)-1]
			own = own[:len(own)-1]
			_, err = w.e.DB.Exec(context.Background(), `DELETE FROM payment_methods WHERE id = $1::text::`+w.e.IDType, id)
			if err == nil {
				w.mu.Lock()
				w.deletes++
				w.mu.Unlock()
			}
		case r < 5: // insert a row
			id := newID(w.e.IDType, writer, n)
			err = w.write(context.Background(), id, true, n)
			own = append(own, id)
		default: // rewrite a row
			err = w.write(context.Background(), own[rand.IntN(len(own))], false, n)
		}
		if err != nil {
			return err
		}
		time.Sleep(time.Millisecond) // the point: the live API's write pace, about 1,000 writes/s per writer at most
	}
	return nil
}

func newID(idType string, writer, n int) string {
	if idType == "bigint" {
		return strconv.Itoa(1_000_000*(writer+1) + n)
	}
	var b [16]byte
	_, _ = crand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// TestLiveWriter is the online invariant: while the engine runs, a live
// writer keeps rewriting and inserting tokens under OLD. No update of the
// writer may be lost (the compare-and-swap must not overwrite a row the
// writer changed since the engine read it); rows the writer left under OLD
// behind the cursor are caught by a rerun. At the end every row is under
// NEW and opens to the writer's latest plaintext.
func TestLiveWriter(t *testing.T) {
	t.Parallel()
	for _, idType := range []string{"uuid", "bigint"} {
		t.Run(idType, func(t *testing.T) {
			t.Parallel()
			const rows = 4000
			e := fixture.New(t, idType)
			ids := e.Seed(rows, e.Old, 1)
			w := &liveWriter{e: e, latest: map[string][]byte{}}

			ctx, stop := context.WithCancel(context.Background())
			errs := make(chan error, 2)
			for k := range 2 {
				var own []string
				for i := k; i < len(ids); i += 2 {
					own = append(own, ids[i])
				}
				go func() { errs <- w.run(ctx, own, k) }()
			}
			m := metrics.New(nil)
			first, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 200, metrics: m})
			stop()
			for range 2 {
				if werr := <-errs; werr != nil {
					t.Fatalf("live writer: %v", werr)
				}
			}
			if err != nil {
				// Rows the writer kept changing past the conflict retries are
				// left for the next pass; nothing else may go wrong.
				if p := partial(t, err); p.Quarantined != 0 {
					t.Fatalf("first run quarantined %d rows of a healthy table", p.Quarantined)
				}
			}
			// The writer's last words: rows rewritten under OLD after the pass
			// ended, i.e. behind every cursor. Only a rerun can catch them.
			current := e.Rows()
			for i := range 10 {
				if err := w.write(context.Background(), current[i*37].ID, false, 1_000_000+i); err != nil {
					t.Fatal(err)
				}
			}
			underOld := e.KeyCounts()[e.Old.ARN]
			if underOld < 10 {
				t.Fatalf("%d rows under OLD after the late writes, want at least 10", underOld)
			}

			second, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 200, metrics: m})
			if err != nil {
				t.Fatalf("rerun: got %v, want nil", err)
			}
			if second.Pass != first.Pass+1 {
				t.Errorf("rerun pass %d, want %d", second.Pass, first.Pass+1)
			}
			if second.Process.Rotated != int64(underOld) {
				t.Errorf("rerun rotated %d rows, want the %d left under OLD", second.Process.Rotated, underOld)
			}

			w.mu.Lock()
			updates, inserts, deletes := w.updates, w.inserts, w.deletes
			w.mu.Unlock()
			conflicts := counter(t, m.Rows.WithLabelValues(metrics.OutcomeConflict))
			t.Logf("writer: %d updates, %d inserts, %d deletes during the run; CAS conflicts re-read: %v; left for the rerun: %d conflicted, %d under OLD",
				updates, inserts, deletes, conflicts, first.PassAll.Counts.Conflicted, underOld)
			if updates == 0 || inserts == 0 {
				t.Errorf("the writer did %d updates and %d inserts during the run, want some of each", updates, inserts)
			}

			total := rows + inserts - deletes
			if n := e.AssertAll(fixture.Check{Under: e.New, Want: w.want}); n != total {
				t.Errorf("checked %d rows, want %d", n, total)
			}
			if got, want := e.AuditTotal(), first.PassAll.Counts.Rotated+second.PassAll.Counts.Rotated; got != want {
				t.Errorf("audit rows: %d, want %d (one per committed swap)", got, want)
			}
			if q := e.Quarantined(); len(q) != 0 {
				t.Errorf("quarantined %d rows, want none: %v", len(q), q)
			}
		})
	}
}
