package cli

import (
	"context"
	"maps"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/config"
)

// tupStats are Postgres's cumulative write counters of one table.
type tupStats struct{ ins, upd, del int64 }

func (o *opEnv) tupStats(table string) tupStats {
	o.t.Helper()
	var s tupStats
	err := o.DB.QueryRow(context.Background(), `
		SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relid = $1::regclass`, table).
		Scan(&s.ins, &s.upd, &s.del)
	if err != nil {
		o.t.Fatalf("read stats of %s: %v", table, err)
	}
	return s
}

// settleStats makes every backend report its counters: Postgres flushes a
// backend's table statistics when it exits (or after a while idle), so the
// test pool's connections are closed and the command's (application_name
// reencrypt) waited for. Then it waits until cond holds.
func (o *opEnv) settleStats(table string, cond func(tupStats) bool) tupStats {
	o.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		o.DB.Reset() // close idle connections: their backends exit and flush
		if o.int(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reencrypt'`) == 0 {
			if s := o.tupStats(table); cond(s) {
				return s
			}
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("statistics of %s never settled (last %+v)", table, o.tupStats(table))
		}
		// Poll interval, kept at 100 ms rather than testbed.Poll's: each
		// try closes the pool's connections to make their backends flush.
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPlanCountsAndWritesNothing: plan counts rows by key exactly, predicts
// the KMS calls of the run, makes no KMS call beyond its preflight's single
// round trip, and writes nothing: the write counters of the token and audit
// tables do not move and no schema or table appears.
func TestPlanCountsAndWritesNothing(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(400, o.Old, 4) // 100 distinct wrapped keys under OLD
	o.Seed(50, o.New, 1)
	third := o.NewKey("third-" + t.Name())
	o.Seed(7, third, 1)
	good := o.seal(o.Old, "00000000-0000-4000-8000-000000000001", []byte("x"))
	o.insertRow("00000000-0000-4000-8000-000000000001", nil)                            // NULL
	o.insertRow("00000000-0000-4000-8000-000000000002", []byte{0x02, 0x01, 0x00, 0x05}) // unknown version
	o.insertRow("00000000-0000-4000-8000-000000000003", good[:len(good)-30])            // truncated

	const rows = 400 + 50 + 7 + 3
	before := o.settleStats("payment_methods", func(s tupStats) bool { return s.ins == rows })
	sum := o.contentSum()
	auditBefore := o.settleStats("payment_method_audit", func(tupStats) bool { return true })
	o.proxy.ResetCounts()

	r := o.cmd([]string{"plan", "--json"})
	o.mustCode(r, exitOK)
	p := opDecode[planReport](t, r)

	if got, want := p.Rows, (planRows{Total: rows, UnderOld: 400, UnderNew: 50, OtherKeys: 7, Unreadable: 3}); got != want {
		t.Errorf("rows: got %+v, want %+v", got, want)
	}
	for class, want := range map[string]int64{"null_token": 1, "unknown_version": 1, "truncated": 1} {
		if got := p.Unreadable[class]; got != want {
			t.Errorf("unreadable %s: got %d, want %d (%v)", class, got, want, p.Unreadable)
		}
	}
	if got := p.OtherKeys[third.ARN]; got != 7 {
		t.Errorf("rows under the third key: got %d, want 7 (%v)", got, p.OtherKeys)
	}
	if p.WrappedKeys != (wrappedReport{Distinct: 100, Exact: true}) {
		t.Errorf("wrapped keys under OLD: got %+v, want 100 exact", p.WrappedKeys)
	}
	// One page of 1000 holds every row under OLD, and the run cuts its
	// ranges in whole pages (here one range): 1 GenerateDataKey; 100
	// Decrypt, one per distinct wrapped key; the preflight's 7 (108 in all).
	// The arithmetic is the command's own, on what was seeded.
	want := o.planApp().kmsCalls(batch.Rekey,
		&census.WrappedKeys{Rows: 400, Distinct: 100, PagesWithRows: 1, PerPageDistinct: 100},
		batch.RangePlan{Ranges: 1, WholePages: true})
	if p.KMSCalls != want {
		t.Errorf("kms calls: got %+v, want %+v", p.KMSCalls, want)
	}
	if p.OldKey.ARN != o.Old.ARN || p.NewKey.ARN != o.New.ARN || p.OldKey.Alias != o.Old.Ref {
		t.Errorf("keys: got %+v / %+v, want %s / %s", p.OldKey, p.NewKey, o.Old.ARN, o.New.ARN)
	}
	if p.Estimate.JobSeconds <= 0 || p.Estimate.OnePodSeconds < p.Estimate.JobSeconds {
		t.Errorf("estimate: got %+v, want a positive Job time no longer than one pod's", p.Estimate)
	}

	calls := o.proxy.Counts()
	for _, op := range []string{"Encrypt", "ReEncrypt"} {
		if calls[op] != 0 {
			t.Errorf("plan made %d %s calls, want 0 (all: %v)", calls[op], op, calls)
		}
	}
	if calls["GenerateDataKey"] != 1 {
		t.Errorf("plan made %d GenerateDataKey calls, want exactly the round trip's 1 (all: %v)", calls["GenerateDataKey"], calls)
	}
	if calls["DescribeKey"] != 2 || calls["Decrypt"] < 1 || calls["Decrypt"] > 4 {
		t.Errorf("plan's preflight calls: got %v, want 2 DescribeKey and 1..4 Decrypt", calls)
	}

	// The WAL sample: one page of the rows with a token (457 of 460 fit in
	// a page of 1000), swapped and rolled back.
	if est := p.WAL.BytesPerRow * 400; p.WAL.SampleRows != rows-1 || p.WAL.BytesPerRow <= 0 ||
		math.Abs(float64(p.WAL.TotalBytes)-est) > 400 {
		t.Errorf("WAL estimate: got %+v, want a sample of %d rows and bytes per row × the 400 under OLD", p.WAL, rows-1)
	}
	// Nothing kept: the only writes the counters see are the sample's,
	// rolled back (updates of the page, audit inserts), and every row and
	// audit row is what it was.
	after := o.settleStats("payment_methods", func(tupStats) bool { return true })
	if want := (tupStats{ins: before.ins, upd: before.upd + int64(p.WAL.SampleRows), del: before.del}); after != want {
		t.Errorf("payment_methods write counters: before %+v, after %+v, want %+v (the rolled-back sample only)", before, after, want)
	}
	if a := o.settleStats("payment_method_audit", func(tupStats) bool { return true }); a.upd != auditBefore.upd || a.del != auditBefore.del ||
		a.ins != auditBefore.ins+int64(p.WAL.SampleRows) {
		t.Errorf("payment_method_audit write counters: before %+v, after %+v, want only the sample's %d rolled-back inserts", auditBefore, a, p.WAL.SampleRows)
	}
	if got := o.int(`SELECT count(*) FROM payment_method_audit`); got != 0 {
		t.Errorf("payment_method_audit holds %d rows after plan, want 0", got)
	}
	if got := o.int(`SELECT count(*) FROM payment_methods WHERE position($1::bytea IN encrypted_token) > 0`, []byte(o.Old.ARN)); got != 401 {
		t.Errorf("%d rows name OLD after plan, want the 400 seeded and the truncated one", got)
	}
	if got := o.contentSum(); got != sum {
		t.Errorf("payment_methods changed under plan: checksum %s, was %s", got, sum)
	}
	if o.schemaExists("reencrypt") {
		t.Error("plan created the bookkeeping schema")
	}
	if o.tableExists("public.token_encryption_keys") {
		t.Error("plan created the key registry")
	}
	// The counters are live: one real write moves them, so the equality
	// above is a measurement, not a constant.
	o.exec(`UPDATE payment_methods SET is_active = false WHERE encrypted_token IS NULL`)
	o.settleStats("payment_methods", func(s tupStats) bool { return s.upd == after.upd+1 })

	// The human form says the same.
	r = o.cmd([]string{"plan"})
	o.mustCode(r, exitOK)
	for _, s := range []string{"dry run, nothing kept", "write-ahead log the run will write", "under OLD (to rotate)", "400", "GenerateDataKey", "distinct wrapped data keys under OLD", "round trip on NEW", "3 rows are NULL or not envelope-v1"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("human plan lacks %q:\n%s", s, r.stdout)
		}
	}
}

// planApp is the configuration a command of this environment would load,
// with extra variables, for computing what plan computes.
func (o *opEnv) planApp(extra ...string) *app {
	o.t.Helper()
	vars := maps.Clone(o.vars)
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	cfg, err := config.Load(vars, nil, nil)
	if err != nil {
		o.t.Fatalf("load config: %v", err)
	}
	return &app{cfg: cfg}
}

// contentSum is a checksum of every id and token of payment_methods.
func (o *opEnv) contentSum() string {
	o.t.Helper()
	var sum string
	if err := o.DB.QueryRow(context.Background(), `SELECT md5(string_agg(id::text || ':' || coalesce(encode(encrypted_token, 'hex'), 'null'), ',' ORDER BY id))
		FROM payment_methods`).Scan(&sum); err != nil {
		o.t.Fatal(err)
	}
	return sum
}

// TestPlanWALMatchesTheRun: the WAL plan predicts (a sample page, rolled
// back) is within a factor 1.5 of the WAL the run then writes.
func TestPlanWALMatchesTheRun(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(4000, o.Old, 1)
	o.mustCode(o.cmd([]string{"migrate"}), exitOK)
	r := o.cmd([]string{"plan", "--json"}, "BATCH_SIZE=500")
	o.mustCode(r, exitOK)
	p := opDecode[planReport](t, r)
	if p.WAL.SampleRows != 500 {
		t.Fatalf("WAL sample of %d rows, want a page of 500 (%+v)", p.WAL.SampleRows, p.WAL)
	}
	lsn := func() int64 { return o.int(`SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8`) }
	start := lsn()
	o.mustCode(o.cmd([]string{"run"}, "BATCH_SIZE=500"), exitOK)
	wrote := lsn() - start
	ratio := float64(p.WAL.TotalBytes) / float64(wrote)
	t.Logf("plan: %.0f bytes/row, %d bytes for 4,000 rows; the run wrote %d (ratio %.2f)", p.WAL.BytesPerRow, p.WAL.TotalBytes, wrote, ratio)
	if ratio < 1/1.5 || ratio > 1.5 {
		t.Errorf("plan estimated %d bytes of WAL, the run wrote %d: ratio %.2f, want within 1.5×", p.WAL.TotalBytes, wrote, ratio)
	}
}

// TestPlanRewrap: in rewrap mode the run needs one ReEncrypt per distinct
// wrapped key of each page, and no Decrypt or GenerateDataKey (bigint ids).
func TestPlanRewrap(t *testing.T) {
	o := newOpEnv(t, "bigint")
	o.Seed(500, o.Old, 10) // ids 1..500, each ten consecutive rows share a wrapped key
	o.proxy.ResetCounts()
	env := []string{"MODE=rewrap", "BATCH_SIZE=100", "SHARD_COUNT=5", "KMS_RATE_LIMIT=100"}
	r := o.cmd([]string{"plan", "--json"}, env...)
	o.mustCode(r, exitOK)
	p := opDecode[planReport](t, r)
	if p.IDType != "bigint" || p.Rows.UnderOld != 500 || p.WrappedKeys.Distinct != 50 {
		t.Errorf("got id type %s, %d rows under OLD, %d wrapped keys; want bigint, 500, 50", p.IDType, p.Rows.UnderOld, p.WrappedKeys.Distinct)
	}
	// One ReEncrypt per distinct wrapped key of each page (5 pages of 10
	// keys), the preflight's 5 on each of the 5 pods: 75.
	want := o.planApp(env...).kmsCalls(batch.Rewrap,
		&census.WrappedKeys{Rows: 500, Distinct: 50, PagesWithRows: 5, PerPageDistinct: 50},
		batch.RangePlan{Ranges: p.Ranges, WholePages: true})
	if p.KMSCalls != want {
		t.Errorf("kms calls: got %+v, want %+v", p.KMSCalls, want)
	}
	if p.Budget.PerPod != 20 || p.Budget.ShardCount != 5 {
		t.Errorf("budget: got %+v, want 20 req/s per pod of 5", p.Budget)
	}
	// At most 20 req/s per pod: 50 calls over 5 pods and each pod's 5
	// preflight calls take at least 0.75 s; one pod alone at least 2.75 s.
	if p.Estimate.JobSeconds < 0.7 || p.Estimate.OnePodSeconds < 2.7 {
		t.Errorf("estimate: got %+v, want >= 0.7 s (Job) and >= 2.7 s (one pod)", p.Estimate)
	}
	if calls := o.proxy.Counts(); calls["ReEncrypt"] != 1 || calls["GenerateDataKey"] != 1 {
		t.Errorf("plan's KMS calls: %v, want the preflight's 1 ReEncrypt (NAMESPACE check) and 1 GenerateDataKey", calls)
	}
	if o.schemaExists("reencrypt") {
		t.Error("plan created the bookkeeping schema")
	}
}

// TestPlanRefusals: plan refuses what run would refuse, with run's exit
// codes, and still writes nothing.
func TestPlanRefusals(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(20, o.Old, 1)
	disabled := o.NewKey("disabled-" + t.Name())
	if _, err := o.API.DisableKey(context.Background(), &kms.DisableKeyInput{KeyId: aws.String(disabled.ID)}); err != nil {
		t.Fatalf("disable key: %v", err)
	}
	cases := []struct {
		name  string
		extra []string
		code  int
		says  string
	}{
		{"same key twice", []string{"NEW_KEY_ID=" + o.Old.ARN}, exitConfig, "same KMS key"},
		{"disabled new key", []string{"NEW_KEY_ID=" + disabled.Ref}, exitKeyUnusable, "NEW_KEY_ID"},
		{"unknown table", []string{"TABLE=nope"}, exitConfig, "does not exist"},
		// The table's refusals name the variables to check, as the
		// engine's do (tokentable names fields, the command variables).
		{"unknown table's variables", []string{"TABLE=nope"}, exitConfig,
			"TABLE_SCHEMA, TABLE, AUDIT_TABLE, DATABASE_URL: table public.nope does not exist"},
		{"unknown token column", []string{"TOKEN_COLUMN=nope"}, exitConfig, "TOKEN_COLUMN: table public.payment_methods has no column"},
		{"unknown id column", []string{"ID_COLUMN=nope"}, exitConfig, "ID_COLUMN: table public.payment_methods has no column"},
		{"no keys", []string{"OLD_KEY_ID=", "NEW_KEY_ID="}, exitConfig, "required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := o.cmd([]string{"plan"}, c.extra...)
			if r.code != c.code || !strings.Contains(r.stderr, c.says) {
				t.Errorf("got exit %d, want %d with %q in the message\n%s", r.code, c.code, c.says, r)
			}
		})
	}
	if o.schemaExists("reencrypt") {
		t.Error("a refused plan created the bookkeeping schema")
	}
}

// TestPlanRangesAsTheRun: plan cuts the ranges the way the run will and
// predicts its GenerateDataKey calls exactly. Before, it assumed the 64
// ranges RANGES=0 asks for at most, each ending in a short page: 69
// GenerateDataKey for 4,500 rows in pages of 1,000 where the run cut 5
// ranges of whole pages and made 5 (and its preflight's 1).
func TestPlanRangesAsTheRun(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(4500, o.Old, 1)
	env := []string{"RANGES=0", "BATCH_SIZE=1000"}

	r := o.cmd([]string{"plan", "--json"}, env...)
	o.mustCode(r, exitOK)
	p := opDecode[planReport](t, r)

	o.proxy.ResetCounts()
	o.mustCode(o.cmd([]string{"run"}, env...), exitOK)
	calls := o.proxy.Counts()
	s := opDecode[statusReport](t, o.cmd([]string{"status", "--json", "--no-scan"}, env...))

	if p.Ranges != 5 || s.Runs[0].Ranges.Total != 5 {
		t.Errorf("ranges: plan %d, run %d; want 5 and 5 (4,500 rows in whole pages of 1,000)", p.Ranges, s.Runs[0].Ranges.Total)
	}
	if got := calls["GenerateDataKey"] - 1; p.KMSCalls.GenerateDataKey != got {
		t.Errorf("GenerateDataKey: plan %d, the run %d (and its preflight's 1)", p.KMSCalls.GenerateDataKey, got)
	}
}
