package faults

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/pkg/envelope"
)

// envelopeParts is SQL for the (kid, wdek, nonce) of an envelope-v1 token t
// (see pkg/envelope/doc.go: kid at offset 4, wdek after its u16 length, then
// the 12-byte nonce).
const envelopeParts = `
	SELECT id, k, substring(t FROM 7 + k FOR w) AS wdek, substring(t FROM 7 + k + w FOR 12) AS nonce FROM (
		SELECT id, t, k, (get_byte(t, 4 + k) << 8) | get_byte(t, 5 + k) AS w FROM (
			SELECT id, encrypted_token AS t, (get_byte(encrypted_token, 2) << 8) | get_byte(encrypted_token, 3) AS k
			FROM payment_methods) a) b`

// Scenario 10: after a rekey run no (data key, nonce) pair repeats, and no
// data key sealed more rows than one page (the Sealer is per page and capped).
func TestNoncesNeverRepeat(t *testing.T) {
	t.Parallel()
	n := pick(50_000, 1_000_000)
	const batchSize = 250
	scen := fmt.Sprintf("10 nonces (%d rows, BATCH_SIZE=%d)", n, batchSize)
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 100) // a legacy writer with shared data keys: seeding stays fast
	p := w.run("rekey", 30*time.Minute, "BATCH_SIZE="+strconv.Itoa(batchSize), "RANGES=16")
	p.expectExit(t, exitOK)

	ctx := context.Background()
	// The SQL reading agrees with envelope.Parse (on a sample).
	rs, err := w.DB.Query(ctx, `SELECT e.wdek, e.nonce, p.encrypted_token FROM (`+envelopeParts+`) e
		JOIN payment_methods p USING (id) LIMIT 200`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var wdek, nonce, tok []byte
		if err := rs.Scan(&wdek, &nonce, &tok); err != nil {
			t.Fatal(err)
		}
		env, err := envelope.Parse(tok)
		if err != nil || string(env.WDEK) != string(wdek) || string(env.Nonce) != string(nonce) {
			t.Fatalf("SQL envelope parts disagree with envelope.Parse (%v)", err)
		}
	}
	rs.Close()

	var rows, pairs, wdeks, maxPerKey int64
	err = w.DB.QueryRow(ctx, `
		WITH e AS (`+envelopeParts+`)
		SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT wdek, nonce FROM e) d),
			count(DISTINCT wdek), (SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM e GROUP BY wdek) g)
		FROM e`).Scan(&rows, &pairs, &wdeks, &maxPerKey)
	if err != nil {
		t.Fatal(err)
	}
	figEq(t, scen, "rows checked", int64(n), rows)
	figEq(t, scen, "repeated (data key, nonce) pairs", 0, rows-pairs)
	figure(t, scen, "most rows sealed under one data key", fmt.Sprintf("<= %d (BATCH_SIZE: one data key per page)", batchSize),
		fmt.Sprintf("%d (%d data keys)", maxPerKey, wdeks), maxPerKey <= batchSize && wdeks >= int64(n/batchSize))

	// The envelope Sealer's own cap: it refuses the use past its limit, and
	// no cap above the ceiling.
	s, err := envelope.NewSealer(make([]byte, 32), w.New.ARN, []byte{1}, 3)
	if err != nil {
		t.Fatal(err)
	}
	var sealErr error
	for i := range 4 {
		if _, sealErr = s.Seal("ns", strconv.Itoa(i), []byte("x")); sealErr != nil {
			break
		}
	}
	s.Destroy()
	_, ceilErr := envelope.NewSealer(make([]byte, 32), w.New.ARN, []byte{1}, envelope.MaxUsesCeiling+1)
	figure(t, scen, "Sealer capped at 3 uses refuses the 4th; a cap above 2^28 is refused", "ErrKeyExhausted; ErrMaxUses",
		fmt.Sprintf("%v; %v", sealErr, ceilErr), errors.Is(sealErr, envelope.ErrKeyExhausted) && errors.Is(ceilErr, envelope.ErrMaxUses))
	w.checkDone(scen, int64(n))
}
