package faults

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Exit codes of docs/design.md.
const (
	exitOK          = 0
	exitQuarantined = 65
	exitRetry       = 75
	exitKeyUnusable = 77
	exitConfig      = 78
)

// world is one scenario's setting: a database with the reference schema, two
// fresh keys in the shared local-kms, a kmsfault proxy in front of it, and
// every reencrypt process the scenario started.
type world struct {
	*fixture.Env
	t     *testing.T
	pg    *testbed.Postgres // a private server; nil on the shared one
	proxy *kmsfault.Proxy
	dbURL string // DATABASE_URL of the binary (may point at a PGProxy)

	mu    sync.Mutex
	procs []*proc
}

type worldOpts struct {
	// durable: a private Postgres of the test's own with crash-safe settings,
	// for restarts (the shared server runs with fsync off).
	durable bool
	idType  string // "uuid" (default) or "bigint"
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	ctx := context.Background()
	idType := cmp.Or(o.idType, "uuid")
	w := &world{t: t}
	var url string
	if o.durable {
		w.pg = testbed.PrivatePostgres(t, testbed.PostgresOptions{Durable: true})
		var err error
		if url, err = w.pg.CreateDatabase(ctx, "faults"); err != nil {
			t.Fatal(err)
		}
	} else {
		url = testbed.Database(t)
	}
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(db.Close)
	if err := seed.Schema(ctx, db, "public", idType); err != nil {
		t.Fatalf("schema: %v", err)
	}
	k := testbed.LocalKMS(t)
	api, err := k.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Env = &fixture.Env{T: t, URL: url, DB: db, KMS: k, API: api, IDType: idType,
		Client: kmsclient.NewClient(api, fixture.Namespace, nil)}
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	w.Old = w.NewKey("faults-old-" + suffix)
	w.New = w.NewKey("faults-new-" + suffix)
	if w.proxy, err = kmsfault.Start(k.Endpoint()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.proxy.Close() })
	w.dbURL = url
	t.Cleanup(func() {
		if t.Failed() {
			w.dumpLogs()
		}
	})
	return w
}

// env is the environment of a reencrypt process: the KMS emulator behind the
// fault proxy, the database, both keys by alias, and settings that give many
// small pages and short leases. extra ("NAME=value") wins.
func (w *world) env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "AWS_") || strings.HasPrefix(name, "REENCRYPT_") || strings.HasPrefix(name, "PG") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, w.KMS.Env()...)
	env = append(env,
		"AWS_ENDPOINT_URL_KMS="+w.proxy.Endpoint(),
		"AWS_CONFIG_FILE="+os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE="+os.DevNull,
		"DATABASE_URL="+w.dbURL,
		"OLD_KEY_ID="+cmp.Or(w.Old.Ref, w.Old.ARN),
		"NEW_KEY_ID="+cmp.Or(w.New.Ref, w.New.ARN),
		"BATCH_SIZE=100",
		"RANGES=8",
		"RANGE_WORKERS=2", // the figures' bounds count pages in flight
		"LEASE_TTL=2s",
		"STOP_GRACE=1s",
		"KMS_RATE_LIMIT=0",
		"PROGRESS=off",
		"LOG_LEVEL=info",
		"METRICS_ADDR=",
		"PUSHGATEWAY_URL=",
	)
	return append(env, extra...)
}

// proc is one reencrypt process.
type proc struct {
	name    string
	cmd     *exec.Cmd
	stdout  testbed.SyncBuffer
	stderr  testbed.SyncBuffer
	done    chan struct{}
	code    int // exit code; -1 when a signal ended it
	signal  syscall.Signal
	started time.Time
	ended   time.Time
}

// start starts `reencrypt <args...>` (default "run") with w.env(extra...).
func (w *world) start(name string, extra ...string) *proc {
	return w.startArgs(name, []string{"run"}, extra...)
}

func (w *world) startArgs(name string, args []string, extra ...string) *proc {
	w.t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(reencryptBin, args...)
	p.cmd.Env = w.env(extra...)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 5 * time.Second
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		w.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.ended = time.Now()
		p.code = p.cmd.ProcessState.ExitCode()
		if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.signal = ws.Signal()
		}
		close(p.done)
	}()
	w.mu.Lock()
	w.procs = append(w.procs, p)
	w.mu.Unlock()
	w.t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
		}
		<-p.done
	})
	return p
}

// run starts a process and waits for it to exit.
func (w *world) run(name string, timeout time.Duration, extra ...string) *proc {
	w.t.Helper()
	p := w.start(name, extra...)
	p.wait(w.t, timeout)
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit; after timeout it kills it and fails
// the test (a wedged run).
func (p *proc) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %s (wedged); stderr tail:\n%s", p.name, timeout, tail(p.stderr.String(), 4000))
	}
	t.Logf("%s: %s after %s", p.name, p.status(), p.took().Round(time.Millisecond))
}

func (p *proc) kill(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *proc) took() time.Duration { return p.ended.Sub(p.started) }

// status is "exit N" or "killed by <signal>".
func (p *proc) status() string {
	if p.signal != 0 {
		return "killed by " + unix.SignalName(p.signal)
	}
	return fmt.Sprintf("exit %d", p.code)
}

// expectExit fails the test unless the process exited with code.
func (p *proc) expectExit(t *testing.T, code int) {
	t.Helper()
	if p.signal != 0 || p.code != code {
		t.Fatalf("%s: %s, want exit %d; stderr tail:\n%s", p.name, p.status(), code, tail(p.stderr.String(), 4000))
	}
}

func (w *world) dumpLogs() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.procs {
		w.t.Logf("--- %s (%s): stdout:\n%s\nstderr tail:\n%s", p.name, p.statusNow(), tail(p.stdout.String(), 1000), tail(p.stderr.String(), 300000))
	}
}

func (p *proc) statusNow() string {
	if !p.exited() {
		return "running"
	}
	return p.status()
}

// outputs is everything every process wrote.
func (w *world) outputs() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][]byte
	for _, p := range w.procs {
		out = append(out, p.stdout.Bytes(), p.stderr.Bytes())
	}
	return out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// ---- figures ----

// figure logs one figure line and fails the test when ok is false.
func figure(t *testing.T, scenario, name, expected string, result any, ok bool) {
	t.Helper()
	f := Figure{Scenario: scenario, Name: name, Expected: expected, Result: fmt.Sprint(result), OK: ok}
	t.Log(f.String())
	if !ok {
		t.Errorf("%s: %s = %v, expected %s", scenario, name, result, expected)
	}
}

func figEq(t *testing.T, scenario, name string, want, got int64) {
	t.Helper()
	figure(t, scenario, name, fmt.Sprint(want), got, got == want)
}

// ---- what the database holds ----

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// snapshot runs f in one read-only repeatable-read transaction, so that the
// figures it reads (tokens, audit rows, checkpoints) belong to one instant
// even while a killed process's last COMMIT is still landing.
func (w *world) snapshot(f func(q querier)) {
	w.t.Helper()
	ctx := context.Background()
	tx, err := w.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		w.t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	f(tx)
}

// tally counts rows by the key their token names.
type tally struct {
	Rows, Old, New, Other, Null, Unparsable int64
}

func (w *world) tally() (c tally) {
	w.t.Helper()
	w.snapshot(func(q querier) { c = w.tallyOf(w.rowKIDs(q)) })
	return c
}

func (w *world) tallyOf(rows []rowKID) tally {
	var c tally
	for _, r := range rows {
		c.Rows++
		switch r.kid {
		case w.Old.ARN:
			c.Old++
		case w.New.ARN:
			c.New++
		case kidNull:
			c.Null++
		case kidBad:
			c.Unparsable++
		default:
			c.Other++
		}
	}
	return c
}

const (
	kidNull = "\x00null"
	kidBad  = "\x00unparsable"
)

type rowKID struct{ id, kid string }

// rowKIDs reads every row's id and the kid of its token, ordered by id.
func (w *world) rowKIDs(q querier) []rowKID {
	w.t.Helper()
	rs, err := q.Query(context.Background(), `SELECT id::text, encrypted_token FROM payment_methods ORDER BY id`)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rs.Close()
	var out []rowKID
	for rs.Next() {
		var id string
		var tok []byte
		if err := rs.Scan(&id, &tok); err != nil {
			w.t.Fatal(err)
		}
		kid := kidNull
		if tok != nil {
			if env, err := envelope.Parse(tok); err == nil {
				kid = env.KID
			} else {
				kid = kidBad
			}
		}
		out = append(out, rowKID{id, kid})
	}
	if err := rs.Err(); err != nil {
		w.t.Fatal(err)
	}
	return out
}

// mismatches opens every row but skip under the key its token names and
// compares the plaintext with want(id) (default: the seed's plaintext).
func (w *world) mismatches(want func(string) []byte, skip map[string]bool) (checked, bad int64) {
	w.t.Helper()
	if want == nil {
		want = seed.Plaintext
	}
	keys := map[string][]byte{}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	for _, r := range w.Rows() {
		if skip[r.ID] {
			continue
		}
		checked++
		pt, _, err := w.Open(r, keys)
		if err != nil || !bytes.Equal(pt, want(r.ID)) {
			bad++
			if bad <= 3 {
				w.t.Logf("row %s: plaintext mismatch (open error: %v)", r.ID, err)
			}
		}
	}
	return checked, bad
}

// auditCounts is the number of audit rows with action, and of rows that
// have more than one.
func (w *world) auditCounts(q querier, action string) (total, duplicated int64) {
	w.t.Helper()
	err := q.QueryRow(context.Background(), `
		SELECT coalesce(sum(n), 0), count(*) FILTER (WHERE n > 1) FROM (
			SELECT payment_method_id, count(*) AS n FROM payment_method_audit
			WHERE action = $1 GROUP BY payment_method_id) s`, action).Scan(&total, &duplicated)
	if err != nil {
		w.t.Fatal(err)
	}
	return total, duplicated
}

// hasState reports whether the bookkeeping tables exist yet.
func hasState(q querier) bool {
	var ok bool
	_ = q.QueryRow(context.Background(), `SELECT to_regclass('reencrypt.ranges') IS NOT NULL`).Scan(&ok)
	return ok
}

// checkpointRotated is rows_rotated summed over every range of every pass
// (0 before the bookkeeping tables exist).
func (w *world) checkpointRotated(q querier) int64 {
	var n int64
	if !hasState(q) {
		return 0
	}
	if err := q.QueryRow(context.Background(), `SELECT coalesce(sum(rows_rotated), 0) FROM reencrypt.ranges`).Scan(&n); err != nil {
		w.t.Fatal(err)
	}
	return n
}

// pages is the number of pages committed so far (0 before the bookkeeping
// schema exists).
func (w *world) pages() int64 {
	var n int64
	if !hasState(w.DB) {
		return 0
	}
	_ = w.DB.QueryRow(context.Background(), `SELECT coalesce(sum(pages), 0) FROM reencrypt.ranges`).Scan(&n)
	return n
}

// rotatedSoFar is rows_rotated of every range (0 before the schema exists).
func (w *world) rotatedSoFar() int64 { return w.checkpointRotated(w.DB) }

// consistency compares the checkpoint of the current pass with the table:
// a row at or behind its range's cursor, or in a finished range, has been
// rotated (under NEW); a row ahead of the cursor has not (under OLD). Valid
// for the first pass over a table seeded under OLD with no other writer. A
// page written in part, or a cursor that moved without its rows (or the
// other way round), shows up here.
func (w *world) consistency(q querier, rows []rowKID) (behindNotNew, aheadNotOld int64) {
	w.t.Helper()
	if !hasState(q) {
		for _, row := range rows {
			if row.kid != w.Old.ARN {
				aheadNotOld++
			}
		}
		return 0, aheadNotOld
	}
	type rng struct {
		lower, upper, cursor *string
		done                 bool
	}
	rs, err := q.Query(context.Background(), `
		SELECT lower_bound, upper_bound, cursor, state = 'done' FROM reencrypt.ranges
		WHERE pass = (SELECT max(pass) FROM reencrypt.ranges) ORDER BY range_no`)
	if err != nil {
		w.t.Fatal(err)
	}
	var ranges []rng
	for rs.Next() {
		var r rng
		if err := rs.Scan(&r.lower, &r.upper, &r.cursor, &r.done); err != nil {
			w.t.Fatal(err)
		}
		ranges = append(ranges, r)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		w.t.Fatal(err)
	}
	less := w.idLess()
rows:
	for _, row := range rows {
		for _, r := range ranges {
			if (r.lower != nil && !less(*r.lower, row.id)) || (r.upper != nil && less(*r.upper, row.id)) {
				continue // not in (lower, upper]
			}
			behind := r.done || (r.cursor != nil && !less(*r.cursor, row.id))
			switch {
			case behind && row.kid != w.New.ARN:
				behindNotNew++
			case !behind && row.kid != w.Old.ARN:
				aheadNotOld++
			}
			continue rows
		}
	}
	return behindNotNew, aheadNotOld
}

// idLess orders ids as Postgres does: uuids by their bytes (their canonical
// text in byte order), integers numerically.
func (w *world) idLess() func(a, b string) bool {
	if w.IDType == "uuid" {
		return func(a, b string) bool { return a < b }
	}
	return func(a, b string) bool {
		x, _ := new(big.Int).SetString(a, 10)
		y, _ := new(big.Int).SetString(b, 10)
		return x.Cmp(y) < 0
	}
}

// pageState is what checkAtomic reads, in one snapshot.
type pageState struct {
	tally
	audit, dup, checkpoint, behind, ahead int64
}

// ok: every page all or nothing, nothing twice.
func (a pageState) ok() bool {
	return a.audit == a.New && a.checkpoint == a.New && a.Other+a.Null+a.Unparsable == 0 &&
		a.behind+a.ahead == 0 && a.dup == 0
}

func (a pageState) String() string {
	return fmt.Sprintf("audit %d, under NEW %d, checkpoint %d, partial %d+%d, duplicates %d",
		a.audit, a.New, a.checkpoint, a.behind, a.ahead, a.dup)
}

func (w *world) readAtomic() (a pageState) {
	w.t.Helper()
	w.snapshot(func(q querier) {
		rows := w.rowKIDs(q)
		a.tally = w.tallyOf(rows)
		a.audit, a.dup = w.auditCounts(q, "token_reencrypted")
		a.checkpoint = w.checkpointRotated(q)
		a.behind, a.ahead = w.consistency(q, rows)
	})
	return a
}

// checkAtomic reports the exactly-once figures at an instant (after a crash,
// a cut, a key change): every page all or nothing.
func (w *world) checkAtomic(scenario string) pageState {
	w.t.Helper()
	a := w.readAtomic()
	figure(w.t, scenario, "audit rows = rows under NEW = checkpoint rows_rotated", "equal",
		fmt.Sprintf("%d / %d / %d", a.audit, a.New, a.checkpoint), a.audit == a.New && a.checkpoint == a.New)
	figEq(w.t, scenario, "rows neither under OLD nor NEW", 0, a.Other+a.Null+a.Unparsable)
	figEq(w.t, scenario, "rows whose key disagrees with the checkpoint (partial page)", 0, a.behind+a.ahead)
	figEq(w.t, scenario, "duplicate audit rows", 0, a.dup)
	return a
}

// checkDone reports the figures of a finished rotation of n seeded rows:
// none left under OLD, none changed in plaintext, audit one to one.
func (w *world) checkDone(scenario string, n int64) {
	w.t.Helper()
	c := w.tally()
	figEq(w.t, scenario, "rows under OLD at the end", 0, c.Old)
	figEq(w.t, scenario, "rows under NEW at the end", n, c.New)
	checked, bad := w.mismatches(nil, nil)
	figure(w.t, scenario, "plaintext mismatches", "0", fmt.Sprintf("%d of %d", bad, checked), bad == 0 && checked == n)
	audit, dup := w.auditCounts(w.DB, "token_reencrypted")
	figEq(w.t, scenario, "duplicate audit rows", 0, dup)
	figEq(w.t, scenario, "token_reencrypted audit rows", n, audit)
}

// waitFor polls cond until it holds or timeout passes (testbed.WaitFor).
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testbed.WaitFor(t, what, timeout, cond)
}

// kmsCalls sums the requests the proxy forwarded to the emulator.
func kmsCalls(counts map[string]int64) int64 {
	var n int64
	for _, v := range counts {
		n += v
	}
	return n
}

// runToEnd reruns `reencrypt run` until it exits 0 (at most tries times),
// the way a Job's retries would; every exit in between must be the retry code.
func (w *world) runToEnd(name string, tries int, timeout time.Duration, extra ...string) (runs int) {
	w.t.Helper()
	for i := 1; i <= tries; i++ {
		p := w.run(fmt.Sprintf("%s#%d", name, i), timeout, extra...)
		if p.signal == 0 && p.code == exitOK {
			return i
		}
		if p.signal != 0 || p.code != exitRetry {
			p.expectExit(w.t, exitRetry)
		}
		w.t.Logf("%s#%d exited 75: %s", name, i, tail(p.failure(), 300))
	}
	w.t.Fatalf("%s: no run finished in %d tries", name, tries)
	return tries
}

// refSpec is the reference schema as the engine is configured for it.
func refSpec() tokentable.Spec {
	return tokentable.Spec{Schema: "public", Name: "payment_methods", IDColumn: "id",
		TokenColumn: "encrypted_token", AuditTable: "payment_method_audit", AuditIDColumn: "payment_method_id"}
}
