package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/config"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

const namespace = "payment_methods"

// tunables are the engine variables the bench passes through from its own
// environment (to the subprocess and to the in-process scenarios alike).
// BATCH_SIZE and KMS_RATE_LIMIT come from -batch and -kms-budget instead.
var tunables = []string{"KMS_CONCURRENCY", "KMS_MAX_ATTEMPTS", "KMS_DIRECT", "DEK_CACHE_SIZE", "DEK_CACHE_TTL", "GOGC", "GOMEMLIMIT",
	"RANGES", "RANGE_WORKERS", "LEASE_TTL", "PAGE_TIMEOUT", "STOP_GRACE"}

// bench is one invocation's world: servers, keys, templates, the binary.
type bench struct {
	o      *options
	root   string
	tmp    string
	prefix string // database name prefix of this invocation

	pg        *testbed.Postgres
	pgVersion string
	pgNum     int
	adminDB   *pgx.Conn // on database "postgres": WAL position, CREATE/DROP DATABASE

	kmsSrv   *testbed.KMSServer // nil with -kms-endpoint=env
	kmsName  string
	upstream string
	proxy    *kmsfault.Proxy // nil with -kms-proxy=false
	admin    *kms.Client     // straight to the endpoint (not counted): setup and checks
	adminKC  *kmsclient.Client
	keys     [3]kmsclient.Key // OLD, NEW, NEW2

	bin       string
	awsEnv    []string          // AWS_* for the engine subprocess (endpoint = the proxy)
	engineEnv map[string]string // the engine's own variables, shared by every scenario
	cfg       *config.Config    // those variables as the engine loads them

	tplLegacy string
	tplSecond string
	wdeks     [][]byte // legacy wrapped data keys, for the KMS ceiling
	dbs       []string // databases to drop at the end

	tplFake string            // legacy data wrapped by fake (the Postgres ceiling)
	fake    *fakeKMS          // instant in-process KMS
	fakeKC  *kmsclient.Client // on fake, no cache

	setupInfo map[string]any
	log       io.Writer
}

func setup(ctx context.Context, o *options) (*bench, error) {
	b := &bench{o: o, log: os.Stderr, setupInfo: map[string]any{}}
	var err error
	if b.root, err = moduleRoot(); err != nil {
		return nil, err
	}
	if b.tmp, err = os.MkdirTemp("", "reencrypt-bench-"); err != nil {
		return nil, err
	}
	b.prefix = fmt.Sprintf("bench_%d_", os.Getpid())
	t0 := time.Now()

	// The engine's variables, as `reencrypt run` will read them.
	b.engineEnv = map[string]string{}
	for _, k := range tunables {
		if v, ok := os.LookupEnv(k); ok {
			b.engineEnv[k] = v
		}
	}
	if o.smoke {
		if _, ok := b.engineEnv["RANGES"]; !ok {
			b.engineEnv["RANGES"] = "4" // 3,000 rows: ~750 per range, several pages each
		}
	}
	b.engineEnv["BATCH_SIZE"] = fmt.Sprint(o.batch)
	b.engineEnv["KMS_RATE_LIMIT"] = fmt.Sprint(o.kmsBudget)
	b.engineEnv["SHARD_COUNT"] = "1"
	b.engineEnv["SHARD_INDEX"] = "0"
	b.engineEnv["LOG_LEVEL"] = "debug" // one "page committed" line per page: exact page latencies
	b.engineEnv["PROGRESS"] = "off"
	if b.cfg, err = config.Load(b.engineEnv, nil, nil); err != nil {
		return b, fmt.Errorf("engine configuration from the environment: %w", err)
	}

	// Binary, built once (in parallel with the servers starting would save a
	// few seconds; not worth the complexity).
	if b.bin = o.bin; b.bin == "" {
		b.bin = filepath.Join(b.tmp, "reencrypt")
		goBin, err := exec.LookPath("go")
		if err != nil {
			//lint:ignore SA1019 the bench is built by `go run` on this machine, so the GOROOT it was built with is here
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", b.bin, "./cmd/reencrypt")
		cmd.Dir = b.root
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go build ./cmd/reencrypt: %w\n%s", err, out)
		}
	}
	b.logf("engine binary: %s", b.bin)

	// Postgres: durable, so WAL and commit costs are the real ones.
	if b.pg, err = testbed.StartPostgres(ctx, b.postgresOptions()); err != nil {
		return b, err
	}
	if b.adminDB, err = pgx.Connect(ctx, b.pg.URL("postgres")); err != nil {
		return b, err
	}
	if err := b.adminDB.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int`).
		Scan(&b.pgVersion, &b.pgNum); err != nil {
		return b, err
	}
	where := "throwaway durable server (testbed)"
	if b.pg.External() {
		where = "TEST_DATABASE_URL"
	}
	b.logf("postgres %s: %s", b.pgVersion, where)

	// KMS endpoint, always behind the counting proxy unless told otherwise.
	if err := b.startKMS(ctx); err != nil {
		return b, err
	}
	if err := b.makeKeys(ctx); err != nil {
		return b, err
	}

	// Templates: seeded once; every scenario-round copies one.
	if err := b.seedTemplates(ctx); err != nil {
		return b, err
	}
	b.setupInfo["setup_seconds"] = time.Since(t0).Seconds()
	return b, nil
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", a...)
}

func (b *bench) startKMS(ctx context.Context) error {
	o := b.o
	if o.kmsEndpoint == "local" {
		k, err := testbed.StartLocalKMS(ctx)
		if err != nil {
			return err
		}
		b.kmsSrv, b.kmsName, b.upstream = k, "local-kms", k.Endpoint()
		if b.admin, err = k.Client(ctx); err != nil {
			return err
		}
		b.awsEnv = k.Env()
	} else {
		b.upstream = os.Getenv("AWS_ENDPOINT_URL_KMS")
		b.kmsName = "AWS_ENDPOINT_URL_KMS=" + redactURL(b.upstream)
		if b.upstream == "" {
			b.kmsName = "AWS (SDK default endpoint)"
		}
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			return fmt.Errorf("aws configuration: %w", err)
		}
		b.admin = kms.NewFromConfig(cfg)
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "AWS_") {
				b.awsEnv = append(b.awsEnv, kv)
			}
		}
	}
	b.adminKC = kmsclient.NewClient(b.admin, namespace, nil)
	b.fake = newFakeKMS()
	b.fakeKC = kmsclient.NewClient(b.fake, namespace, nil)
	if o.proxy {
		p, err := kmsfault.Start(b.upstream)
		if err != nil {
			return fmt.Errorf("kms proxy: %w", err)
		}
		p.Set(kmsfault.Faults{Latency: o.kmsLatency, Jitter: o.kmsJitter})
		b.proxy = p
		b.awsEnv = append(b.awsEnv, "AWS_ENDPOINT_URL_KMS="+p.Endpoint())
	}
	// The in-process scenarios build their clients exactly as the engine
	// does (kmsclient.New, SDK default chain): give this process the same
	// AWS variables as the subprocess. The admin client above was built
	// before, so it keeps talking to the endpoint directly.
	for _, kv := range b.awsEnv {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	via := "direct (no proxy: KMS counts from the clients' own counters)"
	if b.proxy != nil {
		via = fmt.Sprintf("via counting proxy %s (added latency %s, jitter %s)", b.proxy.Endpoint(), o.kmsLatency, o.kmsJitter)
	}
	b.logf("kms: %s %s", b.kmsName, via)
	return nil
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}

func (b *bench) makeKeys(ctx context.Context) error {
	names := []string{"OLD", "NEW", "NEW2"}
	for i := range b.keys {
		var ref string
		if b.o.keys != nil {
			ref = strings.TrimSpace(b.o.keys[i])
		} else {
			out, err := b.admin.CreateKey(ctx, &kms.CreateKeyInput{
				KeySpec:     types.KeySpecSymmetricDefault,
				KeyUsage:    types.KeyUsageTypeEncryptDecrypt,
				Description: aws.String("reencrypt bench " + names[i]),
			})
			if err != nil {
				return fmt.Errorf("create key %s: %w", names[i], err)
			}
			ref = aws.ToString(out.KeyMetadata.Arn)
		}
		k, err := kmsclient.Resolve(ctx, b.admin, ref)
		if err != nil {
			return fmt.Errorf("key %s: %w", names[i], err)
		}
		b.keys[i] = k
	}
	return nil
}

// dbName is a database of this invocation.
func (b *bench) dbName(suffix string) string {
	return b.prefix + strings.NewReplacer("-", "_").Replace(suffix)
}

// createDB creates name, as a copy of tpl when tpl is not empty. A copy
// needs the template to have no connection; a stray one (autovacuum) is
// waited out.
func (b *bench) createDB(ctx context.Context, name, tpl string) (string, error) {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if tpl != "" {
		sql += " TEMPLATE " + pgx.Identifier{tpl}.Sanitize()
		if b.pgNum >= 150000 {
			// FILE_COPY: copy the files after a checkpoint instead of
			// WAL-logging every block (WAL_LOG, the 15+ default), which
			// would write the whole table to WAL before each scenario.
			sql += " STRATEGY = FILE_COPY"
		}
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		_, err = b.adminDB.Exec(ctx, sql)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || pe.Code != "55006" { // object_in_use
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", sql, err)
	}
	b.dbs = append(b.dbs, name)
	return b.pg.URL(name), nil
}

func (b *bench) dropDB(ctx context.Context, name string) {
	if b.o.keep {
		return
	}
	_, err := b.adminDB.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	if err != nil {
		b.logf("drop %s: %v", name, err)
		return
	}
	for i, n := range b.dbs {
		if n == name {
			b.dbs = append(b.dbs[:i], b.dbs[i+1:]...)
			break
		}
	}
}

// freeze makes a template: no connection may be opened to it any more (so
// autovacuum stays away and CREATE DATABASE ... TEMPLATE never waits).
func (b *bench) freeze(ctx context.Context, name string) error {
	_, err := b.adminDB.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH ALLOW_CONNECTIONS false")
	return err
}

func (b *bench) needs(s string) bool { return contains(b.o.only, s) }

func (b *bench) seedTemplates(ctx context.Context) error {
	o := b.o
	// 1. Legacy data: one data key per row, under OLD.
	b.tplLegacy = b.dbName("tpl_legacy")
	u, err := b.createDB(ctx, b.tplLegacy, "")
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		return err
	}
	if err := seed.Schema(ctx, pool, "public", "uuid"); err != nil {
		pool.Close()
		return err
	}
	t0 := time.Now()
	b.logf("seeding %d legacy tokens (one data key per row) under OLD ...", o.rows)
	if _, err := seed.Seed(ctx, pool, b.adminKC, seed.Options{Rows: o.rows, KeyARN: b.keys[0].ARN,
		Namespace: namespace, RowsPerKey: 1, Workers: 16}); err != nil {
		pool.Close()
		return fmt.Errorf("seed: %w", err)
	}
	b.setupInfo["seed_seconds"] = time.Since(t0).Seconds()
	b.logf("seeded in %s", time.Since(t0).Round(time.Millisecond))
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) payment_methods`); err != nil {
		pool.Close()
		return err
	}
	var tableBytes int64
	_ = pool.QueryRow(ctx, `SELECT pg_total_relation_size('payment_methods')`).Scan(&tableBytes)
	b.setupInfo["table_bytes"] = tableBytes
	if b.needs(scKMS) {
		n := o.rows
		if o.kmsOps > 0 {
			n = min(n, o.kmsOps)
		}
		rs, err := pool.Query(ctx, `SELECT encrypted_token FROM payment_methods LIMIT $1`, n)
		if err != nil {
			pool.Close()
			return err
		}
		for rs.Next() {
			var tok []byte
			if err := rs.Scan(&tok); err != nil {
				rs.Close()
				pool.Close()
				return err
			}
			env, err := envelope.Parse(tok)
			if err != nil {
				rs.Close()
				pool.Close()
				return err
			}
			b.wdeks = append(b.wdeks, append([]byte(nil), env.WDEK...))
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			pool.Close()
			return err
		}
	}
	pool.Close()

	// 2. What a rekey produces (one data key per page, under NEW): made by
	// running the engine once on a copy, then tidied so that it starts
	// like the legacy template: no audit rows, no bookkeeping, no bloat.
	if b.needs(scSecond) || b.needs(scSecondB) {
		b.tplSecond = b.dbName("tpl_second")
		u, err := b.createDB(ctx, b.tplSecond, b.tplLegacy)
		if err != nil {
			return err
		}
		b.logf("making the second-rotation template: engine rekey OLD -> NEW on a copy ...")
		run, err := b.runEngine(ctx, u, b.keys[0].ARN, b.keys[1].ARN, "rekey", nil)
		if err != nil {
			return fmt.Errorf("second-rotation template: %w", err)
		}
		if run.exit != 0 {
			return fmt.Errorf("second-rotation template: engine exited %d:\n%s", run.exit, run.tail())
		}
		b.setupInfo["template_rekey_rows_per_s"] = run.rowsPerSec()
		b.setupInfo["template_rekey_pages"] = run.pagesWithRows
		b.logf("template rekey: %d rows in %.1fs (%.0f rows/s), %d pages", run.rotated, run.engineSeconds, run.rowsPerSec(), run.pagesWithRows)
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			return err
		}
		counts, err := kidCounts(ctx, pool)
		if err == nil && counts[b.keys[1].ARN] != int64(o.rows) {
			err = fmt.Errorf("second-rotation template: %d of %d rows under NEW (%v)", counts[b.keys[1].ARN], o.rows, counts)
		}
		if err == nil {
			_, err = pool.Exec(ctx, `TRUNCATE payment_method_audit; DROP SCHEMA reencrypt CASCADE`)
		}
		if err == nil {
			_, err = pool.Exec(ctx, `VACUUM (FULL, ANALYZE) payment_methods`)
		}
		if err == nil {
			_, err = pool.Exec(ctx, `VACUUM (ANALYZE) payment_method_audit`)
		}
		pool.Close()
		if err != nil {
			return err
		}
		if err := b.freeze(ctx, b.tplSecond); err != nil {
			return err
		}
	}
	if b.needs(scPG) {
		if err := b.seedFakeTemplate(ctx); err != nil {
			return err
		}
	}
	return b.freeze(ctx, b.tplLegacy)
}

// seedFakeTemplate makes the Postgres ceiling's template: the legacy data
// (same rows, one data key per row, kid OLD), wrapped by the fake KMS.
func (b *bench) seedFakeTemplate(ctx context.Context) error {
	b.tplFake = b.dbName("tpl_fake")
	u, err := b.createDB(ctx, b.tplFake, "")
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := seed.Schema(ctx, pool, "public", "uuid"); err != nil {
		return err
	}
	b.logf("seeding %d legacy tokens under OLD through the fake KMS (Postgres ceiling) ...", b.o.rows)
	if _, err := seed.Seed(ctx, pool, b.fakeKC, seed.Options{Rows: b.o.rows, KeyARN: b.keys[0].ARN,
		Namespace: namespace, RowsPerKey: 1, Workers: 16}); err != nil {
		return fmt.Errorf("seed (fake kms): %w", err)
	}
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) payment_methods`); err != nil {
		return err
	}
	pool.Close()
	return b.freeze(ctx, b.tplFake)
}

// postgresOptions: durable, so WAL and commit costs are the real ones;
// with -statements, pg_stat_statements loaded.
func (b *bench) postgresOptions() testbed.PostgresOptions {
	o := testbed.PostgresOptions{Durable: true}
	if b.o.statements {
		o.Settings = statementSettings
	}
	return o
}

// close drops this invocation's databases and stops what setup started.
func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.adminDB != nil {
		for _, n := range append([]string(nil), b.dbs...) {
			b.dropDB(ctx, n)
		}
		_ = b.adminDB.Close(ctx)
	}
	if b.proxy != nil {
		_ = b.proxy.Close()
	}
	if b.kmsSrv != nil && !b.o.keep {
		_ = b.kmsSrv.Stop()
	}
	if b.pg != nil && !b.o.keep {
		_ = b.pg.Stop()
	}
	if b.tmp != "" {
		_ = os.RemoveAll(b.tmp)
	}
}
