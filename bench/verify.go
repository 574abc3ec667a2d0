package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// expect is what a table must look like after a scenario.
type expect struct {
	under map[string]int64 // rows by key ARN
	audit int64            // 'token_reencrypted' audit rows, one per distinct row

	kc *kmsclient.Client // unwraps the data keys (default: the emulator's, uncounted)
}

const sampleSize = 500

// verify checks the table against want: rows by kid, audit rows, and that
// tokens open to their plaintext (every token with -verify=full, else a
// random sample). It returns the problems found and how much it opened.
func (b *bench) verify(ctx context.Context, dbURL string, want expect) (problems []string, checked string) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return []string{"verify: " + err.Error()}, ""
	}
	defer conn.Close(context.Background())

	counts, err := kidCounts(ctx, conn)
	if err != nil {
		return []string{"verify: " + err.Error()}, ""
	}
	for arn, n := range want.under {
		if counts[arn] != n {
			problems = append(problems, fmt.Sprintf("%d rows under %s, want %d (all: %v)", counts[arn], b.keyName(arn), n, b.namedCounts(counts)))
		}
	}
	var total, want0 int64
	for _, n := range counts {
		total += n
	}
	for _, n := range want.under {
		want0 += n
	}
	if total != want0 {
		problems = append(problems, fmt.Sprintf("%d parsable rows, want %d (%v)", total, want0, b.namedCounts(counts)))
	}
	var audit, auditIDs int64
	if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT payment_method_id) FROM payment_method_audit WHERE action = 'token_reencrypted'`).
		Scan(&audit, &auditIDs); err != nil {
		problems = append(problems, "audit: "+err.Error())
	} else if audit != want.audit || auditIDs != want.audit {
		problems = append(problems, fmt.Sprintf("%d audit rows for %d rows, want %d for %d", audit, auditIDs, want.audit, want.audit))
	}

	// Open tokens: all, or a uniform sample (reservoir over a full scan).
	full := b.o.verify == "full"
	type tok struct {
		id  string
		raw []byte
	}
	var rows []tok
	rs, err := conn.Query(ctx, `SELECT id::text, encrypted_token FROM payment_methods`)
	if err != nil {
		return append(problems, "verify: "+err.Error()), ""
	}
	seen := 0
	rng := rand.New(rand.NewPCG(1, 2))
	for rs.Next() {
		var t tok
		if err := rs.Scan(&t.id, &t.raw); err != nil {
			rs.Close()
			return append(problems, "verify: "+err.Error()), ""
		}
		seen++
		switch {
		case full || len(rows) < sampleSize:
			rows = append(rows, t)
		default:
			if j := rng.IntN(seen); j < sampleSize {
				rows[j] = t
			}
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return append(problems, "verify: "+err.Error()), ""
	}

	// One Decrypt per distinct (kid, wdek), straight to the endpoint.
	type dkey struct{ kid, wdek string }
	envs := make([]*envelope.Envelope, len(rows))
	need := map[dkey]struct{}{}
	for i, t := range rows {
		env, err := envelope.Parse(t.raw)
		if err != nil {
			problems = append(problems, fmt.Sprintf("row %s: %v", t.id, err))
			continue
		}
		envs[i] = env
		need[dkey{env.KID, string(env.WDEK)}] = struct{}{}
	}
	kc := b.adminKC
	if want.kc != nil {
		kc = want.kc
	}
	var mu sync.Mutex
	deks := make(map[dkey]kmsclient.DataKey, len(need))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for k := range need {
		g.Go(func() error {
			dek, err := kc.Decrypt(gctx, k.kid, []byte(k.wdek))
			if err != nil {
				return fmt.Errorf("decrypt a data key under %s: %w", b.keyName(k.kid), err)
			}
			mu.Lock()
			deks[k] = dek
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		problems = append(problems, "verify: "+err.Error())
	}
	bad := 0
	for i, env := range envs {
		if env == nil {
			continue
		}
		dek, ok := deks[dkey{env.KID, string(env.WDEK)}]
		if !ok {
			continue
		}
		plain, err := envelope.Open(env, dek, namespace, rows[i].id)
		if err != nil || !bytes.Equal(plain, seed.Plaintext(rows[i].id)) {
			bad++
			if bad <= 5 {
				problems = append(problems, fmt.Sprintf("row %s does not open to its token (%v)", rows[i].id, err))
			}
		}
	}
	if bad > 5 {
		problems = append(problems, fmt.Sprintf("... %d rows in all do not open", bad))
	}
	for _, d := range deks {
		d.Zero()
	}
	mode := "sample"
	if full {
		mode = "all"
	}
	return problems, fmt.Sprintf("%s: %d tokens opened (%d data keys), %d rows by kid", mode, len(rows), len(need), total)
}

func (b *bench) keyName(arn string) string {
	for i, n := range []string{"OLD", "NEW", "NEW2"} {
		if b.keys[i].ARN == arn {
			return n
		}
	}
	return arn
}

func (b *bench) namedCounts(c map[string]int64) string {
	var parts []string
	for k, n := range c {
		parts = append(parts, fmt.Sprintf("%s=%d", b.keyName(k), n))
	}
	sort.Strings(parts)
	return fmt.Sprint(parts)
}
