package batch_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/envelope"
)

// TestRotateAll is the first acceptance test: 20,000 legacy tokens
// (one data key per row) under OLD, in both modes and for both id types. After
// one engine run every row is under NEW, opens to the plaintext it had, and
// has exactly one token_reencrypted audit row naming the run, both key ARNs
// and the mode. It also checks what each mode promises about the bytes and
// the KMS calls: rekey seals with one data key per page and a fresh nonce per
// row; rewrap keeps nonce and ciphertext and makes one ReEncrypt per wrapped
// key, no Decrypt.
//
// Each mode and each id type gets the full 20,000 rows once; the two other
// combinations run 5,000 rows, to keep the package's time with -race on two
// cores within budget (the engine's SDK calls dominate it).
func TestRotateAll(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode   batch.Mode
		idType string
		rows   int
	}{
		{batch.Rekey, "uuid", 20_000}, {batch.Rewrap, "bigint", 20_000},
		{batch.Rekey, "bigint", 5000}, {batch.Rewrap, "uuid", 5000},
	} {
		t.Run(fmt.Sprintf("%s/%s/%d", tc.mode, tc.idType, tc.rows), func(t *testing.T) {
			t.Parallel()
			rows, rows64 := tc.rows, int64(tc.rows)
			e := fixture.New(t, tc.idType)
			start := time.Now()
			ids := e.Seed(rows, e.Old, 1)
			before := map[string][]byte{}
			for _, r := range e.Rows() {
				before[r.ID] = r.Token
			}
			seeded := time.Since(start)

			start = time.Now()
			api := &countingKMS{KMS: e.API}
			// Pages of about a third of 1/64 of the table: each range
			// takes several pages, so the keyset cursor is really exercised.
			sum, err := rotate(t, e, runOpts{mode: tc.mode, api: api, batch: rows / 64 / 3})
			if err != nil {
				t.Fatalf("run: got error %v, want nil", err)
			}
			took := time.Since(start)
			t.Logf("seeded %d rows in %s; rotated in %s (%d pages; KMS: %d Decrypt, %d GenerateDataKey, %d ReEncrypt)",
				rows, seeded.Round(time.Millisecond), took.Round(time.Millisecond), sum.Pages,
				api.decrypt.Load(), api.generate.Load(), api.reencrypt.Load())

			if got := sum.Process.Rotated; got != rows64 {
				t.Errorf("summary: rotated %d, want %d (%+v)", got, rows, sum.Process)
			}
			if !sum.PassAll.Complete() || sum.PassAll.Counts.Rotated != rows64 {
				t.Errorf("pass: %+v, want every range done and %d rotated", sum.PassAll, rows)
			}
			if n := e.AssertAll(fixture.Check{Under: e.New}); n != rows {
				t.Errorf("checked %d rows, want %d", n, rows)
			}
			assertOneAuditEach(t, e, ids)
			if got := e.Int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'
				AND actor_type = 'system' AND details->>'old_key_arn' = $1 AND details->>'new_key_arn' = $2
				AND details->>'mode' = $3 AND details->>'run_id' = $4`,
				e.Old.ARN, e.New.ARN, string(tc.mode), sum.RunID); got != rows64 {
				t.Errorf("audit rows naming run %s, %s -> %s, mode %s: got %d, want %d",
					sum.RunID, e.Old.ARN, e.New.ARN, tc.mode, got, rows)
			}
			if got := e.Int(`SELECT count(*) FROM payment_method_audit WHERE action <> 'token_reencrypted'`); got != 0 {
				t.Errorf("other audit rows: got %d, want 0", got)
			}

			// What each mode promises about the bytes and the KMS calls.
			nonces := map[string]bool{}
			wdeks := map[string]bool{}
			for _, r := range e.Rows() {
				now, err := envelope.Parse(r.Token)
				if err != nil {
					t.Fatalf("row %s: %v", r.ID, err)
				}
				was, err := envelope.Parse(before[r.ID])
				if err != nil {
					t.Fatalf("row %s before: %v", r.ID, err)
				}
				nonces[string(now.Nonce)] = true
				wdeks[string(now.WDEK)] = true
				sameBody := bytes.Equal(now.Nonce, was.Nonce) && bytes.Equal(now.Ciphertext, was.Ciphertext)
				if tc.mode == batch.Rewrap && !sameBody {
					t.Fatalf("rewrap changed the nonce or ciphertext of row %s", r.ID)
				}
				if tc.mode == batch.Rekey && bytes.Equal(now.Nonce, was.Nonce) {
					t.Fatalf("rekey kept the old nonce of row %s", r.ID)
				}
			}
			switch tc.mode {
			case batch.Rekey:
				if len(nonces) != rows {
					t.Errorf("distinct nonces: got %d, want %d (one fresh nonce per row)", len(nonces), rows)
				}
				if int64(len(wdeks)) > sum.Pages {
					t.Errorf("distinct data keys: got %d, want at most one per page (%d pages)", len(wdeks), sum.Pages)
				}
				if got := api.decrypt.Load(); got != rows64 {
					t.Errorf("Decrypt calls: got %d, want %d (one per wrapped key)", got, rows)
				}
				if got := api.generate.Load(); got > sum.Pages || got < 1 {
					t.Errorf("GenerateDataKey calls: got %d, want 1..%d (one per page)", got, sum.Pages)
				}
				if got := api.reencrypt.Load(); got != 0 {
					t.Errorf("ReEncrypt calls in rekey mode: got %d, want 0", got)
				}
			case batch.Rewrap:
				if len(wdeks) != rows {
					t.Errorf("distinct data keys: got %d, want %d (each row keeps its own)", len(wdeks), rows)
				}
				if got := api.reencrypt.Load(); got != rows64 {
					t.Errorf("ReEncrypt calls: got %d, want %d (one per wrapped key)", got, rows)
				}
				if got := api.decrypt.Load() + api.generate.Load(); got != 0 {
					t.Errorf("Decrypt+GenerateDataKey calls in rewrap mode: got %d, want 0 (no plaintext here)", got)
				}
			}
		})
	}
}

// TestSecondRotationPagesLineUp: ranges are cut at row positions, whole
// pages each, so a rekey fills every page (one data key per BatchSize rows),
// and the next rotation's pages line up with those data keys: one Decrypt
// and one GenerateDataKey per page, 2 / BatchSize KMS calls per row. Ranges
// cut over the key space ended in short pages and made pages straddle two
// data keys.
func TestSecondRotationPagesLineUp(t *testing.T) {
	t.Parallel()
	for _, idType := range []string{"uuid", "bigint"} {
		t.Run(idType, func(t *testing.T) {
			t.Parallel()
			const rows, page = 5000, 100
			e := fixture.New(t, idType)
			e.Seed(rows, e.Old, 1)
			if _, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: page, ranges: 8}); err != nil {
				t.Fatalf("first rotation: %v", err)
			}
			perKey := map[string]int{}
			for _, r := range e.Rows() {
				env, err := envelope.Parse(r.Token)
				if err != nil {
					t.Fatalf("row %s: %v", r.ID, err)
				}
				perKey[string(env.WDEK)]++
			}
			if len(perKey) != rows/page {
				t.Errorf("first rotation: %d data keys for %d rows, want %d (every page full)", len(perKey), rows, rows/page)
			}
			for _, n := range perKey {
				if n != page {
					t.Errorf("a data key seals %d rows, want %d (a full page)", n, page)
					break
				}
			}

			third := e.NewKey("third-" + idType)
			api := &countingKMS{KMS: e.API}
			sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: page, ranges: 8, api: api, old: e.New, new: third})
			if err != nil {
				t.Fatalf("second rotation: %v", err)
			}
			if sum.Process.Rotated != rows {
				t.Errorf("second rotation rotated %d, want %d", sum.Process.Rotated, rows)
			}
			e.AssertAll(fixture.Check{Under: third})
			if d, g := api.decrypt.Load(), api.generate.Load(); d != rows/page || g != rows/page {
				t.Errorf("second rotation: %d Decrypt and %d GenerateDataKey, want %d each (one per page)", d, g, rows/page)
			}
		})
	}
}

// assertOneAuditEach fails unless each id has exactly one token_reencrypted
// audit row and no other row has any.
func assertOneAuditEach(t *testing.T, e *fixture.Env, ids []string) {
	t.Helper()
	audit := e.AuditByRow("token_reencrypted")
	bad := 0
	for _, id := range ids {
		if n := audit[id]; n != 1 {
			bad++
			if bad <= 5 {
				t.Errorf("row %s: %d token_reencrypted audit rows, want 1", id, n)
			}
		}
		delete(audit, id)
	}
	if bad > 0 {
		t.Errorf("%d of %d rows do not have exactly one audit row", bad, len(ids))
	}
	if len(audit) != 0 {
		t.Errorf("%d audit rows name rows that were not rotated", len(audit))
	}
	if total, dup := e.AuditCounts("token_reencrypted"); total != int64(len(ids)) || dup != 0 {
		t.Errorf("audit: %d rows, %d ids duplicated; want %d and 0", total, dup, len(ids))
	}
}

// TestRerunAfterSuccess: a second process started after the pass finished
// plans a new pass, reads every row, finds it under NEW by its kid, and
// stops: no KMS call, not one row version written, no audit row, nil error.
func TestRerunAfterSuccess(t *testing.T) {
	t.Parallel()
	for _, mode := range []batch.Mode{batch.Rekey, batch.Rewrap} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			const rows = 3000
			e := fixture.New(t, "uuid")
			e.Seed(rows, e.Old, 1)
			first, err := rotate(t, e, runOpts{mode: mode, batch: 500})
			if err != nil {
				t.Fatalf("first run: %v", err)
			}
			digest, versions, audit := e.TableDigest(), e.RowVersions(), e.AuditTotal()

			api := &countingKMS{KMS: e.API}
			second, err := rotate(t, e, runOpts{mode: mode, batch: 500, api: api})
			if err != nil {
				t.Fatalf("rerun: got error %v, want nil", err)
			}
			if second.RunID != first.RunID || second.Pass != first.Pass+1 {
				t.Errorf("rerun joined run %s pass %d, want run %s pass %d (a new sweep)",
					second.RunID, second.Pass, first.RunID, first.Pass+1)
			}
			if got := second.Process; got.Skipped != rows || got.Rotated != 0 || got.Rows() != rows {
				t.Errorf("rerun counts: %+v, want all %d rows skipped", got, rows)
			}
			if n := api.total(); n != 0 {
				t.Errorf("rerun KMS calls: %d Decrypt, %d GenerateDataKey, %d ReEncrypt; want none",
					api.decrypt.Load(), api.generate.Load(), api.reencrypt.Load())
			}
			if got := e.RowVersions(); got != versions {
				t.Errorf("rerun wrote rows: row versions (xmin, ctid) digest %s, want %s", got, versions)
			}
			if got := e.TableDigest(); got != digest {
				t.Errorf("rerun changed tokens: digest %s, want %s", got, digest)
			}
			if got := e.AuditTotal(); got != audit {
				t.Errorf("rerun audit rows: got %d, want %d (no new row)", got, audit)
			}
			e.AssertAll(fixture.Check{Under: e.New})
		})
	}
}

// TestRollback: the same rotation with OLD and NEW swapped brings every row
// back under OLD, with the same plaintext; each direction audits each row
// once.
func TestRollback(t *testing.T) {
	t.Parallel()
	for _, mode := range []batch.Mode{batch.Rekey, batch.Rewrap} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			const rows = 3000
			e := fixture.New(t, "bigint")
			ids := e.Seed(rows, e.Old, 1)
			digest := e.TableDigest()
			if _, err := rotate(t, e, runOpts{mode: mode, batch: 400}); err != nil {
				t.Fatalf("forward run: %v", err)
			}
			e.AssertAll(fixture.Check{Under: e.New})
			back, err := rotate(t, e, runOpts{mode: mode, batch: 400, old: e.New, new: e.Old})
			if err != nil {
				t.Fatalf("rollback run: %v", err)
			}
			if back.Process.Rotated != rows {
				t.Errorf("rollback rotated %d rows, want %d", back.Process.Rotated, rows)
			}
			if n := e.AssertAll(fixture.Check{Under: e.Old}); n != rows {
				t.Errorf("checked %d rows, want %d", n, rows)
			}
			if mode == batch.Rekey && e.TableDigest() == digest {
				t.Errorf("rekey there and back left the very same bytes: nothing was re-sealed")
			}
			if got, want := e.AuditFor(e.Old.ARN, e.New.ARN), int64(rows); got != want {
				t.Errorf("forward audit rows: got %d, want %d", got, want)
			}
			if got, want := e.AuditFor(e.New.ARN, e.Old.ARN), int64(rows); got != want {
				t.Errorf("rollback audit rows: got %d, want %d", got, want)
			}
			audit := e.AuditByRow("token_reencrypted")
			for _, id := range ids {
				if audit[id] != 2 {
					t.Fatalf("row %s: %d audit rows, want 2 (one each way)", id, audit[id])
				}
			}
		})
	}
}

// TestIntegerKeysetPages: integer ids whose decimal text does not sort like
// the numbers (9 < 10 but "10" < "9") walked in many pages of one range:
// every row is read once. (The engine once ordered pages by id::text and
// skipped most rows of a multi-page integer range.)
func TestIntegerKeysetPages(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "bigint")
	ids := e.Seed(1200, e.Old, 50)
	sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 37, ranges: 1})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if sum.Process.Rotated != int64(len(ids)) {
		t.Errorf("rotated %d rows, want %d", sum.Process.Rotated, len(ids))
	}
	if want := int64(len(ids)/37 + 1); sum.Pages != want {
		t.Errorf("pages: got %d, want %d", sum.Pages, want)
	}
	e.AssertAll(fixture.Check{Under: e.New})
	assertOneAuditEach(t, e, ids)
}

// partial returns err as a *batch.PartialError, or fails the test.
func partial(t *testing.T, err error) *batch.PartialError {
	t.Helper()
	var p *batch.PartialError
	if !errors.As(err, &p) {
		t.Fatalf("run: got error %v (%T), want a *batch.PartialError", err, err)
	}
	return p
}
