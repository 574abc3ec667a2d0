package main

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// walLSN is the cluster's current WAL insert position, in bytes.
func (b *bench) walLSN(ctx context.Context) (int64, error) {
	var n int64
	err := b.adminDB.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&n)
	return n, err
}

// walFPI is the cluster's count of full-page images written to WAL since
// its statistics were reset (pg_stat_wal, Postgres 14+; -1 before). After
// each checkpoint a page's first change writes the whole page, so a
// scenario's WAL depends on how many pages it touches between checkpoints,
// not only on what it writes per row.
func (b *bench) walFPI(ctx context.Context) int64 {
	if b.pgNum < 140000 {
		return -1
	}
	var n int64
	if err := b.adminDB.QueryRow(ctx, `SELECT wal_fpi FROM pg_stat_wal`).Scan(&n); err != nil {
		return -1
	}
	return n
}

// tableStats are the token table's counters once the writers' statistics
// have reached the cumulative statistics system.
type tableStats struct {
	Live, Dead, Updates, HotUpdates, Autovacuums, Autoanalyzes int64
	Waited                                                     float64 // seconds spent waiting for the writers' stats
}

// tokenTableStats waits (up to 10 s) until the updates of the writers (whose
// backends flush their statistics when they exit, or at most every second
// or so while idle) are visible, then reads n_dead_tup and friends.
func tokenTableStats(ctx context.Context, dbURL string, wantUpdates int64) (tableStats, error) {
	var st tableStats
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return st, err
	}
	defer conn.Close(context.Background())
	start := time.Now()
	for {
		_, _ = conn.Exec(ctx, `SELECT pg_stat_force_next_flush()`) // 15+; harmless when missing
		_, _ = conn.Exec(ctx, `SELECT pg_stat_clear_snapshot()`)
		err := conn.QueryRow(ctx, `
			SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count, autoanalyze_count
			FROM pg_stat_user_tables WHERE relid = 'public.payment_methods'::regclass`).
			Scan(&st.Live, &st.Dead, &st.Updates, &st.HotUpdates, &st.Autovacuums, &st.Autoanalyzes)
		if err != nil {
			return st, err
		}
		if st.Updates >= wantUpdates || time.Since(start) > 10*time.Second || ctx.Err() != nil {
			st.Waited = time.Since(start).Seconds()
			return st, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kidCounts counts the rows of payment_methods by the kid of their envelope
// (a token that does not parse counts under "unparsable").
func kidCounts(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (map[string]int64, error) {
	// The kid is the envelope's first variable field: version, alg, then a
	// 2-byte length and the ARN (pkg/envelope/doc.go). Parsing in SQL keeps
	// the rows in the server.
	rs, err := db.Query(ctx, `
		SELECT convert_from(substring(encrypted_token FROM 5 FOR get_byte(encrypted_token, 2) * 256 + get_byte(encrypted_token, 3)), 'UTF8'),
		       count(*)
		FROM payment_methods WHERE encrypted_token IS NOT NULL AND length(encrypted_token) > 4 GROUP BY 1`)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[string]int64{}
	for rs.Next() {
		var kid string
		var n int64
		if err := rs.Scan(&kid, &n); err != nil {
			return nil, err
		}
		out[kid] = n
	}
	return out, rs.Err()
}

// quantile is the nearest-rank quantile of sorted values.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func median(v []float64) float64 {
	var s []float64
	for _, x := range v {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		return math.NaN()
	}
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// rateSampler samples the proxy's request counter every 100 ms, to find
// when requests started and stopped and the rate in every 1-s window.
type rateSampler struct {
	total func() int64
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	t     []time.Time
	c     []int64
}

func startSampler(total func() int64) *rateSampler {
	s := &rateSampler{total: total, stop: make(chan struct{}), done: make(chan struct{})}
	s.sample()
	go func() {
		defer close(s.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				s.sample()
				return
			case <-tick.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *rateSampler) sample() {
	s.mu.Lock()
	s.t = append(s.t, time.Now())
	s.c = append(s.c, s.total())
	s.mu.Unlock()
}

// rates is what the samples say.
type rates struct {
	Requests      int64   // requests seen
	ActiveSeconds float64 // from the first to the last sample that saw a new request
	Mean          float64 // Requests / ActiveSeconds
	Sustained     float64 // median rate over the 1-s windows inside the active period, its first and last second left out
	Max1s         float64 // busiest 1-s window of the samples (100 ms steps)
}

func (s *rateSampler) finish() rates {
	close(s.stop)
	<-s.done
	var r rates
	n := len(s.c)
	if n < 2 {
		return r
	}
	base := s.c[0]
	r.Requests = s.c[n-1] - base
	if r.Requests == 0 {
		return r
	}
	first, last := -1, -1
	for i := 1; i < n; i++ {
		if s.c[i] != s.c[i-1] {
			if first < 0 {
				first = i - 1
			}
			last = i
		}
	}
	r.ActiveSeconds = s.t[last].Sub(s.t[first]).Seconds()
	if r.ActiveSeconds > 0 {
		r.Mean = float64(r.Requests) / r.ActiveSeconds
	}
	var inner []float64
	for i := first; i < last; i++ {
		j := i + 10
		if j > last {
			break
		}
		rate := float64(s.c[j]-s.c[i]) / s.t[j].Sub(s.t[i]).Seconds()
		r.Max1s = max(r.Max1s, rate)
		if i >= first+10 && j <= last-10 {
			inner = append(inner, rate)
		}
	}
	if len(inner) == 0 {
		r.Sustained = r.Mean
	} else {
		r.Sustained = median(inner)
	}
	return r
}

// CPU accounting per process, from /proc (Linux). The bench's children are
// the postmaster, local-kms and the engine subprocess.

var clkTck = 100.0 // sysconf(_SC_CLK_TCK) on Linux

type procTimes struct {
	self, cself float64 // utime+stime, cutime+cstime
	ppid        int
	comm        string
	live        bool
}

func readProc(pid int) (procTimes, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procTimes{}, false
	}
	s := string(b)
	l, r := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if l < 0 || r < l {
		return procTimes{}, false
	}
	f := strings.Fields(s[r+2:])
	if len(f) < 15 {
		return procTimes{}, false
	}
	p := procTimes{comm: s[l+1 : r], live: true}
	p.ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	cut, _ := strconv.ParseFloat(f[13], 64)
	cst, _ := strconv.ParseFloat(f[14], 64)
	p.self, p.cself = (ut+st)/clkTck, (cut+cst)/clkTck
	return p, true
}

// cpuSnapshot is the CPU seconds used so far by: this process (the proxy and
// the in-process scenarios), Postgres (postmaster, live backends and, through
// cutime, exited ones), and local-kms.
type cpuSnapshot struct {
	Bench, Postgres, KMS float64
	Machine              float64 // busy CPU seconds of the whole machine (/proc/stat)
}

// machineBusy is the busy time of all CPUs so far, in seconds.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / clkTck
}

func takeCPU() cpuSnapshot {
	c := cpuSnapshot{Machine: machineBusy()}
	me := os.Getpid()
	if p, ok := readProc(me); ok {
		c.Bench = p.self
	}
	ents, _ := os.ReadDir("/proc")
	children := map[int]procTimes{}
	all := map[int]procTimes{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if !ok {
			continue
		}
		all[pid] = p
		if p.ppid == me {
			children[pid] = p
		}
	}
	for pid, p := range children {
		switch {
		case p.comm == "postgres":
			c.Postgres += p.self + p.cself
			for _, q := range all {
				if q.ppid == pid {
					c.Postgres += q.self + q.cself
				}
			}
		case strings.HasPrefix(p.comm, "local-kms"):
			c.KMS += p.self + p.cself
		}
	}
	return c
}

func (c cpuSnapshot) sub(o cpuSnapshot) cpuSnapshot {
	return cpuSnapshot{Bench: c.Bench - o.Bench, Postgres: c.Postgres - o.Postgres, KMS: c.KMS - o.KMS, Machine: c.Machine - o.Machine}
}

// waitIdle waits, up to limit, until the processes that are not the bench's
// use less than 0.2 of a core over two consecutive seconds.
func waitIdle(ctx context.Context, limit time.Duration) (waited time.Duration, foreignCores float64) {
	start := time.Now()
	calm := 0
	for {
		a := takeCPU()
		select {
		case <-ctx.Done():
			return time.Since(start), foreignCores
		case <-time.After(time.Second):
		}
		d := takeCPU().sub(a)
		foreignCores = max(0, d.Machine-d.Bench-d.Postgres-d.KMS)
		if foreignCores < 0.2 {
			calm++
		} else {
			calm = 0
		}
		if calm >= 2 || time.Since(start) >= limit {
			return time.Since(start), foreignCores
		}
	}
}
