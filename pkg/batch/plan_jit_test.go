package batch_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestPlanningReadsRunWithoutJIT: the range planner's whole-table reads
// (count and row numbering, or the id sample) run with jit off. Their
// estimated cost is far above jit_above_cost, and compiling them cost more
// than it saved: about 0.6 s of a 1,000,000-row run's 23 s.
func TestPlanningReadsRunWithoutJIT(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	e.Exec(`INSERT INTO payment_methods (id, encrypted_token)
		SELECT gen_random_uuid(), decode(repeat('a5', 300), 'hex') FROM generate_series(1, 5000)`)
	e.Exec(`ANALYZE payment_methods`)
	ctx := context.Background()
	pc, err := pgxpool.ParseConfig(e.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.RuntimeParams["jit"] = "on" // the server's default, whatever the test cluster says
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	table, err := tokentable.Inspect(ctx, pool, e.Spec())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		exactMax float64
		reads    int // statements that read the table
	}{
		{"cut at row positions", 1e9, 2},
		{"cut at sampled quantiles", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probe := &jitProbe{Pool: pool}
			bounds, err := batch.PlanRangesAbove(ctx, probe, table, 4, 1000, tc.exactMax)
			if err != nil {
				t.Fatal(err)
			}
			if len(bounds) < 2 {
				t.Fatalf("%d ranges for 5,000 rows cut in 4: the planner did not cut", len(bounds))
			}
			var reads int
			for _, s := range probe.seen {
				if !strings.Contains(s.sql, "payment_methods") {
					continue
				}
				reads++
				if s.jit != "off" {
					t.Errorf("read with jit %q: %s", s.jit, strings.Join(strings.Fields(s.sql), " "))
				}
			}
			if reads < tc.reads {
				t.Fatalf("saw %d reads of the table, want at least %d: %+v", reads, tc.reads, probe.seen)
			}
		})
	}
}

type seenSQL struct{ sql, jit string }

// jitProbe is a pool that records, for each statement, the jit setting of
// the session (or transaction) it ran in.
type jitProbe struct {
	*pgxpool.Pool
	mu   sync.Mutex
	seen []seenSQL
}

func (p *jitProbe) record(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string) {
	var jit string
	if err := q.QueryRow(ctx, `SHOW jit`).Scan(&jit); err != nil {
		jit = "unknown: " + err.Error()
	}
	p.mu.Lock()
	p.seen = append(p.seen, seenSQL{sql, jit})
	p.mu.Unlock()
}

func (p *jitProbe) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	p.record(ctx, p.Pool, sql)
	return p.Pool.Query(ctx, sql, args...)
}

func (p *jitProbe) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	p.record(ctx, p.Pool, sql)
	return p.Pool.QueryRow(ctx, sql, args...)
}

func (p *jitProbe) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := p.Pool.Begin(ctx)
	return &probedTx{Tx: tx, p: p}, err
}

func (p *jitProbe) BeginTx(ctx context.Context, o pgx.TxOptions) (pgx.Tx, error) {
	tx, err := p.Pool.BeginTx(ctx, o)
	return &probedTx{Tx: tx, p: p}, err
}

type probedTx struct {
	pgx.Tx
	p *jitProbe
}

func (t *probedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	t.p.record(ctx, t.Tx, sql)
	return t.Tx.Query(ctx, sql, args...)
}

func (t *probedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	t.p.record(ctx, t.Tx, sql)
	return t.Tx.QueryRow(ctx, sql, args...)
}
