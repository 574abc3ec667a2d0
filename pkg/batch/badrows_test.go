package batch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// badRow is a row the test broke on purpose, and what the engine must make
// of it.
type badRow struct {
	id    string
	what  string
	class string // quarantine class, or "" when the mode cannot tell (rewrap)
	token []byte // as stored before the run
}

// breakRows damages rows of a freshly seeded table in every way the issue
// lists, and returns them with the class rekey must give each; rewrapClass
// is what rewrap must give ("" = rewrap cannot detect it and rotates it).
func breakRows(t *testing.T, e *fixture.Env, ids []string) (bad []badRow, rewrapClass map[string]string) {
	t.Helper()
	next := 100 // leave the first rows alone
	pick := func() string { next += 7; return ids[next] }
	env := func(id string) *envelope.Envelope {
		v, err := envelope.Parse(e.Token(id))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	marshal := func(v *envelope.Envelope) []byte {
		b, err := v.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	set := func(what, class string, tok []byte) {
		id := pick()
		e.SetToken(id, tok)
		bad = append(bad, badRow{id: id, what: what, class: class, token: tok})
	}
	random := make([]byte, 64)
	_, _ = rand.Read(random)

	set("random bytes", "unknown_version", append([]byte{0xA5}, random...))
	set("random bytes after a v1 header", "malformed", append([]byte{envelope.Version1, envelope.AlgAES256GCM, 0, 0}, random...))
	{
		id := pick()
		tok := e.Token(id)
		e.SetToken(id, tok[:30])
		bad = append(bad, badRow{id: id, what: "truncated in the kid", class: "truncated", token: tok[:30]})
	}
	{
		id := pick()
		v := env(id)
		short := marshal(v)
		short = short[:len(short)-len(v.Ciphertext)+8]
		e.SetToken(id, short)
		bad = append(bad, badRow{id: id, what: "truncated in the tag", class: "truncated", token: short})
	}
	set("empty", "truncated", []byte{})
	{
		id := pick()
		tok := bytes.Clone(e.Token(id))
		tok[0] = 0x02
		e.SetToken(id, tok)
		bad = append(bad, badRow{id: id, what: "wrong version byte", class: "unknown_version", token: tok})
	}
	{
		id := pick()
		tok := bytes.Clone(e.Token(id))
		tok[1] = 0x07
		e.SetToken(id, tok)
		bad = append(bad, badRow{id: id, what: "wrong alg byte", class: "unknown_alg", token: tok})
	}
	{
		id := pick()
		v := env(id)
		v.Ciphertext[len(v.Ciphertext)-1] ^= 1
		tok := marshal(v)
		e.SetToken(id, tok)
		bad = append(bad, badRow{id: id, what: "altered ciphertext", class: "auth_failed", token: tok})
	}
	{
		id := pick()
		v := env(id)
		v.WDEK[len(v.WDEK)-1] ^= 1 // inside KMS's own tag: KMS refuses it
		tok := marshal(v)
		e.SetToken(id, tok)
		bad = append(bad, badRow{id: id, what: "altered wrapped key", class: "kms_rejected", token: tok})
	}
	{
		a, b := pick(), pick()
		ta, tb := e.Token(a), e.Token(b)
		e.SetToken(a, tb)
		e.SetToken(b, ta)
		bad = append(bad,
			badRow{id: a, what: "sealed for another row", class: "auth_failed", token: tb},
			badRow{id: b, what: "sealed for another row", class: "auth_failed", token: ta})
	}
	{
		id := pick()
		e.SetToken(id, nil)
		bad = append(bad, badRow{id: id, what: "NULL", class: "null_token", token: nil})
	}

	// Rewrap never opens a token: a row sealed for another row, or with an
	// altered ciphertext, has a perfectly good wrapped key, so KMS ReEncrypt
	// succeeds and the row is rewrapped as it is (still unopenable, exactly
	// as before). That is by design: rewrap moves keys, it does not verify
	// tokens; `reencrypt verify` (or a rekey) is what finds such rows.
	rewrapClass = map[string]string{}
	for _, b := range bad {
		rewrapClass[b.id] = b.class
		if b.class == "auth_failed" {
			rewrapClass[b.id] = ""
		}
	}
	return bad, rewrapClass
}

// TestBadRows: rows whose token cannot be parsed or opened are left as they
// are, quarantined once with their error class and audited once, while the
// rest rotate; rows under a third key are counted and left alone. The run
// ends with a PartialError counting them; a rerun ends the same way without
// auditing them again (no loop, no duplicate audit).
func TestBadRows(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode   batch.Mode
		idType string
	}{{batch.Rekey, "uuid"}, {batch.Rewrap, "bigint"}} {
		t.Run(string(tc.mode), func(t *testing.T) {
			t.Parallel()
			const rows, thirdKeyRows = 1500, 5
			e := fixture.New(t, tc.idType)
			ids := e.Seed(rows, e.Old, 1)
			bad, rewrapClass := breakRows(t, e, ids)
			want := map[string]string{} // quarantined row → class
			for _, b := range bad {
				class := b.class
				if tc.mode == batch.Rewrap {
					class = rewrapClass[b.id]
				}
				if class != "" {
					want[b.id] = class
				}
			}
			third := e.NewKey("third-" + strings.ReplaceAll(t.Name(), "/", "-") + e.Old.ID[:8])
			skip := map[string]bool{}
			var thirdIDs []string
			for _, id := range ids[1000 : 1000+thirdKeyRows] {
				e.SetToken(id, e.Seal(third, id, seed.Plaintext(id)))
				thirdIDs = append(thirdIDs, id)
				skip[id] = true
			}
			for _, b := range bad {
				skip[b.id] = true
			}
			thirdBefore := map[string][]byte{}
			for _, id := range thirdIDs {
				thirdBefore[id] = e.Token(id)
			}
			good := rows - len(bad) - thirdKeyRows
			undetected := len(bad) - len(want) // rewrap: rotated as they are

			// Rows that parse but do not open sit first in the heap, behind one
			// good row, where Preflight samples tokens under OLD.
			first := []string{ids[0]}
			for _, b := range bad {
				if b.class == "auth_failed" || b.class == "kms_rejected" {
					first = append(first, b.id)
				}
			}
			e.PutFirst(first...)
			preflight := func() error {
				_, err := batch.Preflight(context.Background(), e.DB, kmsclient.NewClient(e.API, fixture.Namespace, nil), batch.PreflightOptions{Spec: e.Spec(), OldRef: e.Old.Ref, NewRef: e.New.Ref, Namespace: fixture.Namespace, Mode: tc.mode})

				return err
			}
			if err := preflight(); err != nil {
				t.Fatalf("preflight before the first run: %v", err)
			}

			logs := &testbed.SyncBuffer{}
			sum, err := rotate(t, e, runOpts{mode: tc.mode, batch: 200, logs: logs})
			p := partial(t, err)
			if p.Quarantined != int64(len(want)) || p.Conflicted != 0 {
				t.Errorf("PartialError: %d quarantined, %d conflicted; want %d and 0", p.Quarantined, p.Conflicted, len(want))
			}
			c := sum.PassAll.Counts
			if c.Rotated != int64(good+undetected) || c.OtherKey != thirdKeyRows || c.Quarantined != int64(len(want)) {
				t.Errorf("pass counts %+v: want rotated %d, other_key %d, quarantined %d", c, good+undetected, thirdKeyRows, len(want))
			}
			if !sum.PassAll.Complete() {
				t.Errorf("pass not complete: %+v", sum.PassAll)
			}
			check := func(round string) {
				t.Helper()
				q := e.Quarantined()
				if len(q) != len(want) {
					t.Errorf("%s: quarantine holds %d rows, want %d", round, len(q), len(want))
				}
				failed := e.AuditByRow("token_reencrypt_failed")
				if len(failed) != len(want) {
					t.Errorf("%s: %d rows have token_reencrypt_failed audit rows, want %d", round, len(failed), len(want))
				}
				for _, b := range bad {
					class, quarantined := want[b.id]
					if !quarantined {
						continue
					}
					if q[b.id] != class {
						t.Errorf("%s: row %s (%s): quarantined as %q, want %q", round, b.id, b.what, q[b.id], class)
					}
					if failed[b.id] != 1 {
						t.Errorf("%s: row %s (%s): %d token_reencrypt_failed audit rows, want 1", round, b.id, b.what, failed[b.id])
					}
					if got := e.Token(b.id); !bytes.Equal(got, b.token) || (got == nil) != (b.token == nil) {
						t.Errorf("%s: row %s (%s): token changed", round, b.id, b.what)
					}
				}
				if n := e.Int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypt_failed'
					AND details->>'error_class' IS NOT NULL AND details->>'old_key_arn' = $1`, e.Old.ARN); n != int64(len(want)) {
					t.Errorf("%s: failed-audit rows with error_class and key: %d, want %d", round, n, len(want))
				}
				for _, id := range thirdIDs {
					if !bytes.Equal(e.Token(id), thirdBefore[id]) {
						t.Errorf("%s: row %s under a third key was changed", round, id)
					}
				}
				if n := e.AssertAll(fixture.Check{Under: e.New, Skip: skip}); n != good {
					t.Errorf("%s: %d good rows checked, want %d", round, n, good)
				}
				if got, _ := e.AuditCounts("token_reencrypted"); got != int64(good+undetected) {
					t.Errorf("%s: token_reencrypted audit rows: %d, want %d", round, got, good+undetected)
				}
			}
			check("first run")
			if tc.mode == batch.Rewrap {
				for _, b := range bad {
					if rewrapClass[b.id] != "" {
						continue
					}
					now, err := envelope.Parse(e.Token(b.id))
					was, _ := envelope.Parse(b.token)
					if err != nil || now.KID != e.New.ARN || !bytes.Equal(now.Ciphertext, was.Ciphertext) {
						t.Errorf("row %s (%s): want it rewrapped under NEW with its ciphertext unchanged", b.id, b.what)
					}
				}
			}
			// Invariant 8: the log names rows and classes, never a token.
			out := logs.String()
			if strings.Contains(out, "tok_") {
				t.Errorf("the engine's log holds a plaintext token")
			}
			for id := range want {
				if !strings.Contains(out, id) {
					t.Errorf("the log does not name quarantined row %s", id)
				}
			}
			if n := e.Int(`SELECT count(*) FROM information_schema.columns
				WHERE table_schema = 'reencrypt' AND table_name = 'quarantine' AND data_type = 'bytea'`); n != 0 {
				t.Errorf("the quarantine table has %d bytea columns, want none (no token bytes)", n)
			}

			// Now the only rows left under OLD are bad ones: a rerun must not be
			// refused as a configuration error (it would never end with 65).
			if err := preflight(); err != nil {
				t.Errorf("preflight of the rerun: got %v, want nil", err)
			}
			audits := e.AuditTotal()
			sum2, err := rotate(t, e, runOpts{mode: tc.mode, batch: 200})
			p2 := partial(t, err)
			if p2.Quarantined != p.Quarantined {
				t.Errorf("rerun: %d quarantined, want %d (the same rows)", p2.Quarantined, p.Quarantined)
			}
			if sum2.Pass != sum.Pass+1 {
				t.Errorf("rerun pass %d, want %d", sum2.Pass, sum.Pass+1)
			}
			if got := sum2.PassAll.Counts; got.Rotated != 0 || got.OtherKey != thirdKeyRows || got.Quarantined != int64(len(want)) {
				t.Errorf("rerun counts %+v: want 0 rotated, %d other_key, %d quarantined", got, thirdKeyRows, len(want))
			}
			if got := e.AuditTotal(); got != audits {
				t.Errorf("rerun added %d audit rows, want 0", got-audits)
			}
			check("rerun")
		})
	}
}
