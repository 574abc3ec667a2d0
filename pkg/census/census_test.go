package census_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func inspect(t *testing.T, e *fixture.Env) *tokentable.Table {
	t.Helper()
	tbl, err := tokentable.Inspect(context.Background(), e.DB, tokentable.Spec{Schema: "public", Name: "payment_methods",
		IDColumn: "id", TokenColumn: "encrypted_token", AuditTable: "payment_method_audit", AuditIDColumn: "payment_method_id"})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func ptr(s string) *string { return &s }

// TestCount counts rows by key and the wrapped keys of the focus key the
// way the engine spends KMS calls: exact distinct keys, pages holding them,
// and distinct keys per page.
func TestCount(t *testing.T) {
	e := fixture.New(t, "bigint")
	e.Seed(1234, e.Old, 7) // ids 1..1234, each 7 consecutive rows share a wrapped key
	e.Seed(66, e.New, 1)   // ids 1235..1300
	e.DB.Exec(context.Background(), `INSERT INTO payment_methods (id, encrypted_token) VALUES (5000, NULL), (5001, '\x0201')`)
	tbl := inspect(t, e)
	var progress int
	c, err := census.Count(context.Background(), e.DB, tbl, census.CountOptions{PageSize: 100, Focus: e.Old.ARN, Tracked: []string{e.New.ARN},
		Progress: func(census.Census) { progress++ }})
	if err != nil {
		t.Fatal(err)
	}
	if c.Rows != 1302 || c.ByKey[e.Old.ARN] != 1234 || c.ByKey[e.New.ARN] != 66 || len(c.ByKey) != 2 {
		t.Errorf("rows %d by key %v, want 1302: 1234 under OLD, 66 under NEW", c.Rows, c.ByKey)
	}
	if c.Unreadable["null_token"] != 1 || c.Unreadable["unknown_version"] != 1 || c.UnreadableRows() != 2 {
		t.Errorf("unreadable %v, want one null_token and one unknown_version", c.Unreadable)
	}
	// Expected page statistics, by simulation of the same paging.
	var pagesWith, perPage int64
	for p := 0; p*100 < 1234; p++ {
		groups := map[int]bool{}
		for id := p*100 + 1; id <= min(p*100+100, 1234); id++ {
			groups[(id-1)/7] = true
		}
		pagesWith++
		perPage += int64(len(groups))
	}
	want := census.WrappedKeys{Key: e.Old.ARN, Rows: 1234, Distinct: 177, Exact: true, PagesWithRows: pagesWith, PerPageDistinct: perPage}
	if c.Focus == nil || *c.Focus != want {
		t.Errorf("focus %+v, want %+v", c.Focus, want)
	}
	if progress != int(c.Pages) || c.Pages != 14 {
		t.Errorf("progress called %d times for %d pages, want 14", progress, c.Pages)
	}
	n, err := census.RowsUnder(context.Background(), e.DB, tbl, e.New.ARN, census.Recount{})
	if err != nil || n != 66 {
		t.Errorf("RowsUnder NEW: %d, %v; want 66", n, err)
	}
}

// TestRowsUnderEveryKidForm: the recount finds a row under the key whatever
// form of the key its kid records (ARN, key id, alias name, alias ARN), and
// only those, although it reads only the rows whose token holds the key id
// or "alias/": the same count as parsing every row.
func TestRowsUnderEveryKidForm(t *testing.T) {
	e := fixture.New(t, "bigint")
	ctx := context.Background()
	oldARN, otherARN := e.Old.ARN, e.New.ARN
	keyID := oldARN[strings.LastIndexByte(oldARN, '/')+1:]
	aliasARN := oldARN[:strings.Index(oldARN, ":key/")] + ":alias/old"
	resolve := map[string]string{keyID: oldARN, "alias/old": oldARN, aliasARN: oldARN, "alias/other": otherARN}
	keyOf := func(_ context.Context, kid string) (string, error) {
		if arn, ok := resolve[kid]; ok {
			return arn, nil
		}
		return "", fmt.Errorf("unknown kid %q", kid)
	}
	kids := []string{oldARN, keyID, "alias/old", aliasARN, otherARN, "alias/other"}
	wantUnder := 0
	for i := 1; i <= 600; i++ {
		kid := kids[i%len(kids)]
		if i%len(kids) < 4 {
			wantUnder++
		}
		e.Exec(`INSERT INTO payment_methods (id, encrypted_token) VALUES ($1, $2)`, i, fakeToken(t, kid, []byte{byte(i)}))
	}
	// Unreadable rows that hold the key id: counted by no one.
	bad := append([]byte{0x02, 0x01, 0, byte(len(oldARN))}, oldARN...)
	e.Exec(`INSERT INTO payment_methods (id, encrypted_token) VALUES (601, $1), (602, NULL)`, bad)
	tbl := inspect(t, e)

	n, err := census.RowsUnder(ctx, e.DB, tbl, oldARN, census.Recount{KeyOf: keyOf})
	if err != nil || n != int64(wantUnder) {
		t.Errorf("RowsUnder OLD: %d, %v; want %d", n, err, wantUnder)
	}
	// The same, parsing every row of the table.
	var all int64
	err = tokentable.Walk(ctx, e.DB, tbl, tokentable.WalkOptions{}, func(page []tokentable.Row) error {
		for _, r := range page {
			if env, _ := tokentable.ParseToken(r.Token); env != nil {
				if arn, ok := resolve[env.KID]; (ok && arn == oldARN) || env.KID == oldARN {
					all++
				}
			}
		}
		return nil
	})
	if err != nil || all != n {
		t.Errorf("parsing every row: %d under OLD (%v); RowsUnder said %d", all, err, n)
	}
	// Without a resolver, kids compare as they are: only the ARN rows.
	if n, err := census.RowsUnder(ctx, e.DB, tbl, oldARN, census.Recount{}); err != nil || n != 100 {
		t.Errorf("RowsUnder OLD, no resolver: %d, %v; want 100", n, err)
	}
}

// fakeToken is a well-formed envelope under kid (never opened here).
func fakeToken(t *testing.T, kid string, wdek []byte) []byte {
	t.Helper()
	b, err := (&envelope.Envelope{Version: envelope.Version1, Alg: envelope.AlgAES256GCM, KID: kid, WDEK: wdek,
		Nonce: make([]byte, envelope.NonceSize), Ciphertext: make([]byte, envelope.TagSize)}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCounterBoundsItsMemory: kids beyond MaxKeys are counted, not named,
// and tracked keys are always named; above ExactDistinctLimit the distinct
// count becomes an estimate within 2 %.
func TestCounterBoundsItsMemory(t *testing.T) {
	c := census.NewCounter("", "tracked")
	var page []tokentable.Row
	for i := range census.MaxKeys + 10 {
		page = append(page, tokentable.Row{ID: strconv.Itoa(i), Token: fakeToken(t, fmt.Sprintf("kid-%d", i), []byte{1})})
	}
	page = append(page, tokentable.Row{ID: "x", Token: fakeToken(t, "tracked", []byte{1})})
	kids := c.Add(page)
	got := c.Census()
	if len(got.ByKey) != census.MaxKeys+1 || got.OtherKeysRows != 10 || got.ByKey["tracked"] != 1 || kids[len(kids)-1] != "tracked" {
		t.Errorf("named %d keys, %d rows unnamed, tracked %d; want %d, 10, 1", len(got.ByKey), got.OtherKeysRows, got.ByKey["tracked"], census.MaxKeys+1)
	}

	const n = census.ExactDistinctLimit + 100_000
	c = census.NewCounter("k")
	page = page[:0]
	tmpl := fakeToken(t, "k", make([]byte, 16)) // the wdek starts at byte 4+len("k")+2
	random := make([]byte, 16*10_000)
	for i := range n {
		if i%10_000 == 0 {
			_, _ = rand.Read(random)
		}
		tok := append([]byte(nil), tmpl...)
		copy(tok[7:23], random[16*(i%10_000):])
		page = append(page, tokentable.Row{ID: strconv.Itoa(i), Token: tok})
		if len(page) == 10_000 {
			c.Add(page)
			page = page[:0]
		}
	}
	c.Add(page)
	f := c.Census().Focus
	if f.Exact || math.Abs(float64(f.Distinct-n))/n > 0.02 {
		t.Errorf("distinct %d (exact %v), want an estimate of %d within 2%%", f.Distinct, f.Exact, n)
	}
}

func TestLocate(t *testing.T) {
	uppers := []*string{ptr("9"), ptr("100"), ptr("1000"), nil}
	for id, want := range map[string]int{"1": 0, "9": 0, "10": 1, "100": 1, "101": 2, "999": 2, "1000": 2, "1001": 3, "-5": 0} {
		if got := census.Locate("bigint", uppers, id); got != want {
			t.Errorf("bigint %s: range %d, want %d", id, got, want)
		}
	}
	u := []*string{ptr("3fffffff-ffff-ffff-ffff-ffffffffffff"), ptr("7fffffff-ffff-ffff-ffff-ffffffffffff")}
	for id, want := range map[string]int{"00000000-0000-4000-8000-000000000000": 0, "3fffffff-ffff-ffff-ffff-ffffffffffff": 0,
		"40000000-0000-4000-8000-000000000000": 1, "ffffffff-0000-4000-8000-000000000000": 2} {
		if got := census.Locate("uuid", u, id); got != want {
			t.Errorf("uuid %s: range %d, want %d (len %d means beyond the closed last range)", id, got, want, len(u))
		}
	}
}

// TestRowsUnderRidesOutTerminatedConnection: the recount behind exit 0 reads
// the table in pages; a page whose connection an operator (or a failover)
// ends is read again at the same cursor, so the count is whole and the run
// is not sent back to the start for a read. The soak's pg_terminate_backend
// scenario failed here: three runs exited 75 on their closing recount.
func TestRowsUnderRidesOutTerminatedConnection(t *testing.T) {
	e := fixture.New(t, "bigint")
	ctx := context.Background()
	oldARN := e.Old.ARN
	keyID := oldARN[strings.LastIndexByte(oldARN, '/')+1:]
	const rows = 25_000 // more than one recount page
	e.Exec(`INSERT INTO payment_methods (id, encrypted_token) SELECT g, $1 FROM generate_series(1, $2::int) g`,
		fakeToken(t, keyID, []byte{7}), rows)
	tbl := inspect(t, e)

	cfg := e.DB.Config().Copy()
	cfg.MaxConns = 1 // one backend, so the one terminated is the walker's
	walker, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer walker.Close()
	var pid int
	if err := walker.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	terminated := 0
	keyOf := func(ctx context.Context, kid string) (string, error) {
		if terminated == 0 { // while the first page is counted
			var ok bool
			if err := e.DB.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
				return "", fmt.Errorf("terminate the walker's backend %d: %v, %v", pid, ok, err)
			}
			terminated++
		}
		if kid == keyID {
			return oldARN, nil
		}
		return "", fmt.Errorf("unknown kid %q", kid)
	}
	retried := 0
	retry := func(err error) bool { retried++; return batch.IsTransient(err) }
	n, err := census.RowsUnder(ctx, walker, tbl, oldARN, census.Recount{KeyOf: keyOf, Retry: retry})
	if err != nil || n != rows {
		t.Fatalf("RowsUnder across a terminated connection: %d, %v; want %d", n, err, rows)
	}
	if terminated != 1 || retried != 1 {
		t.Errorf("terminated %d backends and retried %d reads, want 1 and 1", terminated, retried)
	}
	// Not transient: the first error ends the walk, not a loop.
	_, err = census.RowsUnder(ctx, walker, tbl, oldARN, census.Recount{
		KeyOf: func(context.Context, string) (string, error) { return "", errors.New("resolver down") },
		Retry: func(error) bool { t.Error("a resolver error was offered for retry"); return true }})
	if err == nil {
		t.Error("RowsUnder with a failing resolver: no error")
	}
}
