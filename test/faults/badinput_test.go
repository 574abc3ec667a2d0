package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// sealRow seals plaintext for row id under key with a fresh data key and
// returns the token and (a copy of) the data key.
func (w *world) sealRow(key kmsclient.Key, id string, plaintext []byte) (tok, dek []byte) {
	w.t.Helper()
	d, wdek, err := w.Client.GenerateDataKey(context.Background(), key.ARN)
	if err != nil {
		w.t.Fatal(err)
	}
	defer d.Zero()
	env, err := envelope.SealRandom(d, envelope.SealOptions{KID: key.ARN, WDEK: wdek, Namespace: fixture.Namespace, RowID: id}, plaintext)
	if err != nil {
		w.t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		w.t.Fatal(err)
	}
	return b, bytes.Clone(d)
}

func (w *world) insert(id string, tok []byte) {
	w.t.Helper()
	if _, err := w.DB.Exec(context.Background(),
		`INSERT INTO payment_methods (id, encrypted_token) VALUES ($1::text::uuid, $2)`, id, tok); err != nil {
		w.t.Fatal(err)
	}
}

// quarantine reads the quarantine table: row id → error class.
func (w *world) quarantine() map[string]string {
	w.t.Helper()
	out := map[string]string{}
	if !hasState(w.DB) {
		return out
	}
	rs, err := w.DB.Query(context.Background(), `SELECT row_id, error_class FROM reencrypt.quarantine`)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		var id, class string
		if err := rs.Scan(&id, &class); err != nil {
			w.t.Fatal(err)
		}
		out[id] = class
	}
	return out
}

// failedAudit reads the token_reencrypt_failed audit rows: row id → the
// error classes recorded, one entry per audit row.
func (w *world) failedAudit() map[string][]string {
	w.t.Helper()
	out := map[string][]string{}
	rs, err := w.DB.Query(context.Background(), `
		SELECT payment_method_id::text, coalesce(details->>'error_class', '')
		FROM payment_method_audit WHERE action = 'token_reencrypt_failed'`)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		var id, class string
		if err := rs.Scan(&id, &class); err != nil {
			w.t.Fatal(err)
		}
		out[id] = append(out[id], class)
	}
	return out
}

type badRow struct {
	what  string
	id    string
	tok   []byte
	class string // expected quarantine class; "" = not quarantined (third key)
}

// badRows inserts one row of every kind of bad token and returns them.
func (w *world) badRows() []badRow {
	w.t.Helper()
	good := func(id string) []byte {
		tok, dek := w.sealRow(w.Old, id, []byte("tok_bad_input_"+id[:8]))
		clear(dek)
		return tok
	}
	mut := func(b []byte, f func([]byte) []byte) []byte { return f(bytes.Clone(b)) }

	var rows []badRow
	add := func(what, class string, tok func(id string) []byte) {
		id := newUUID()
		rows = append(rows, badRow{what: what, id: id, tok: tok(id), class: class})
	}
	add("corrupt (one ciphertext byte flipped)", "auth_failed", func(id string) []byte {
		return mut(good(id), func(b []byte) []byte { b[len(b)-20] ^= 0x55; return b })
	})
	add("truncated (cut inside the nonce)", "truncated", func(id string) []byte { return good(id)[:60] })
	add("empty (zero bytes)", "truncated", func(string) []byte { return []byte{} })
	add("NULL", "null_token", func(string) []byte { return nil })
	add("unknown version 0x02", "unknown_version", func(id string) []byte {
		return mut(good(id), func(b []byte) []byte { b[0] = 0x02; return b })
	})
	add("oversized: 1 MiB of random bytes", "", func(string) []byte {
		b := make([]byte, 1<<20)
		_, _ = rand.Read(b)
		b[0] = 0xEE // not version 1: the class is fixed
		return b
	})
	add("oversized: valid header, 1 MiB ciphertext", "auth_failed", func(id string) []byte {
		env, err := envelope.Parse(good(id))
		if err != nil {
			w.t.Fatal(err)
		}
		env.Ciphertext = make([]byte, 1<<20)
		_, _ = rand.Read(env.Ciphertext)
		b, err := env.Marshal()
		if err != nil {
			w.t.Fatal(err)
		}
		return b
	})
	add("wrapped key KMS refuses (garbage wdek under OLD)", "kms_rejected", func(id string) []byte {
		env, _ := envelope.Parse(good(id))
		env.WDEK = bytes.Repeat([]byte{0xAB}, len(env.WDEK))
		b, _ := env.Marshal()
		return b
	})
	// Two rows whose valid tokens were swapped: each is sealed for the other.
	a, b := newUUID(), newUUID()
	ta, tb := good(a), good(b)
	rows = append(rows,
		badRow{what: "sealed for another row (swapped, 1 of 2)", id: a, tok: tb, class: "auth_failed"},
		badRow{what: "sealed for another row (swapped, 2 of 2)", id: b, tok: ta, class: "auth_failed"})
	third := w.NewKey(fmt.Sprintf("faults-third-%d", time.Now().UnixNano()))
	add("under a third key", "", func(id string) []byte { tok, dek := w.sealRow(third, id, []byte("tok_third")); clear(dek); return tok })
	for i := range rows {
		if strings.HasPrefix(rows[i].what, "oversized: 1 MiB") {
			// Parse reads the version byte first: 0xEE is an unknown version.
			rows[i].class = "unknown_version"
		}
		w.insert(rows[i].id, rows[i].tok)
	}
	return rows
}

// Scenario 7: bad tokens are quarantined (or, under a third key, counted and
// left alone) with their reason; the run never wedges; a rerun gives the
// same verdict in bounded time and writes no second failure audit row.
func TestBadInput(t *testing.T) {
	t.Parallel()
	n := pick(500, 20_000)
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	bad := w.badRows()
	scen := fmt.Sprintf("7 bad input (%d good rows + %d bad)", n, len(bad))
	want := map[string]string{}
	skip := map[string]bool{}
	for _, r := range bad {
		skip[r.id] = true
		if r.class != "" {
			want[r.id] = r.class
		}
	}

	check := func(label string, p *proc, figures bool) (map[string]string, map[string][]string) {
		q := w.quarantine()
		audit := w.failedAudit()
		if !figures {
			return q, audit
		}
		figure(t, scen, label+": exit code", "65 (done, rows quarantined)", p.status(), p.signal == 0 && p.code == exitQuarantined)
		figure(t, scen, label+": run time (never wedges)", "< 60s", p.took().Round(time.Millisecond), p.took() < time.Minute)
		for _, r := range bad {
			got, ok := q[r.id]
			exp := r.class
			if exp == "" {
				exp = "not quarantined, counted as other_key"
			}
			res := got
			if !ok {
				res = "not quarantined"
				if r.class == "" {
					res = exp
				}
			}
			figure(t, scen, label+": "+r.what, exp, res, (r.class == "" && !ok) || got == r.class)
		}
		var otherKey int64
		_ = w.DB.QueryRow(context.Background(), `
			SELECT coalesce(sum(rows_other_key), 0) FROM reencrypt.ranges
			WHERE pass = (SELECT max(pass) FROM reencrypt.ranges)`).Scan(&otherKey)
		figEq(t, scen, label+": other_key count of the pass", 1, otherKey)
		return q, audit
	}

	p1 := w.run("bad-input", 2*time.Minute)
	q1, a1 := check("run", p1, true)
	figEq(t, scen, "quarantined rows", int64(len(want)), int64(len(q1)))
	dupAudit := 0
	for id, classes := range a1 {
		if len(classes) != 1 || classes[0] != want[id] {
			dupAudit++
		}
	}
	figure(t, scen, "token_reencrypt_failed audit rows: one per quarantined row, with its class", fmt.Sprint(len(want)),
		fmt.Sprintf("%d rows, %d wrong or repeated", len(a1), dupAudit), len(a1) == len(want) && dupAudit == 0)
	untouched := 0
	for _, r := range bad {
		var tok []byte
		_ = w.DB.QueryRow(context.Background(), `SELECT encrypted_token FROM payment_methods WHERE id = $1::uuid`, r.id).Scan(&tok)
		if bytes.Equal(tok, r.tok) && (tok == nil) == (r.tok == nil) {
			untouched++
		}
	}
	figEq(t, scen, "bad rows left byte for byte as they were", int64(len(bad)), int64(untouched))
	checked, mism := w.mismatches(nil, skip)
	figure(t, scen, "good rows rotated and opening to their plaintext", fmt.Sprint(n), fmt.Sprintf("%d of %d", checked-mism, checked),
		checked == int64(n) && mism == 0)

	// The rerun: same verdict, no loop, no second audit row.
	p2 := w.run("bad-input-rerun", 2*time.Minute)
	q2, a2 := check("rerun", p2, true)
	figure(t, scen, "rerun: quarantine unchanged", "same rows, same classes", fmt.Sprintf("%d rows, equal: %t", len(q2), maps.Equal(q1, q2)),
		maps.Equal(q1, q2))
	figure(t, scen, "rerun: new token_reencrypt_failed audit rows", "0", countAll(a2)-countAll(a1), countAll(a2) == countAll(a1))
	if p2.code != exitQuarantined {
		t.Logf("rerun failure: %s", p2.failure())
	}
}

func countAll(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// Scenario 7, bad rows at the start of the heap: the preflight samples the
// first tokens under OLD to catch a wrong NAMESPACE or OLD_KEY_ID. A handful
// of bad rows there (and, after any run that quarantined rows, the only rows
// left under OLD are bad ones) must not make it refuse a table whose other
// rows are fine: the run quarantines them and says so with exit 65.
func TestBadRowsFirstInHeap(t *testing.T) {
	t.Parallel()
	n := pick(300, 5000)
	w := newWorld(t, worldOpts{})
	var ids []string
	for i := range 3 {
		id := newUUID()
		tok, dek := w.sealRow(w.Old, id, []byte("tok_first"))
		clear(dek)
		tok[len(tok)-1-i] ^= 0x01 // corrupt: does not authenticate
		w.insert(id, tok)
		ids = append(ids, id)
	}
	w.Seed(n, w.Old, 1)
	scen := fmt.Sprintf("7 bad input: 3 corrupt rows first in the heap, %d good rows", n)
	skip := map[string]bool{}
	for _, id := range ids {
		skip[id] = true
	}
	for _, label := range []string{"run", "rerun"} {
		p := w.run(label, 2*time.Minute)
		figure(t, scen, label+": exit code", "65 (done, rows quarantined)", fmt.Sprintf("%s %s", p.status(), tail(p.failure(), 160)),
			p.signal == 0 && p.code == exitQuarantined)
		figEq(t, scen, label+": rows quarantined", 3, int64(len(w.quarantine())))
	}
	checked, bad := w.mismatches(nil, skip)
	figure(t, scen, "good rows rotated", fmt.Sprint(n), fmt.Sprintf("%d (%d not opening)", w.tally().New, bad),
		w.tally().New == int64(n) && bad == 0 && checked == int64(n))
}
