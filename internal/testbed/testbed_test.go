package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func connect(t *testing.T, ctx context.Context, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect %s: %v", dbURL, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func dbNameOf(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

func TestDatabaseUsable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dbURL := Database(t)
	conn := connect(t, ctx, dbURL)

	var current string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&current); err != nil {
		t.Fatal(err)
	}
	if want := dbNameOf(t, dbURL); current != want {
		t.Fatalf("connected to %q, URL names %q", current, want)
	}
	var userTables int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&userTables); err != nil {
		t.Fatal(err)
	}
	if userTables != 0 {
		t.Fatalf("fresh database has %d tables in public", userTables)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')`); err != nil {
		t.Fatal(err)
	}
	var n, sum int
	var agg string
	if err := conn.QueryRow(ctx, `SELECT count(*), sum(id), string_agg(v, '' ORDER BY id) FROM items`).Scan(&n, &sum, &agg); err != nil {
		t.Fatal(err)
	}
	if n != 3 || sum != 6 || agg != "abc" {
		t.Fatalf("got count=%d sum=%d agg=%q, want 3, 6, \"abc\"", n, sum, agg)
	}
	// A primary key violation is reported by the real server.
	if _, err := conn.Exec(ctx, `INSERT INTO items VALUES (1, 'dup')`); err == nil {
		t.Fatal("duplicate primary key accepted")
	}
}

func TestSharedServerSettings(t *testing.T) {
	t.Parallel()
	pg := SharedPostgres(t)
	if pg.External() {
		t.Logf("using %s: server settings are not ours to check", EnvDatabaseURL)
		return
	}
	conn := connect(t, t.Context(), pg.URL("postgres"))
	for setting, want := range map[string]string{
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "300",
		"listen_addresses":   "127.0.0.1",
		"server_encoding":    "UTF8",
	} {
		var got string
		if err := conn.QueryRow(t.Context(), "SHOW "+setting).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}
}

// Each test gets its own database; it is gone after the test, even with a
// connection still open (DROP ... WITH (FORCE)).
func TestDatabasesDistinctAndDropped(t *testing.T) {
	t.Parallel()
	const n = 8
	var mu sync.Mutex
	names := map[string]bool{}
	t.Run("group", func(t *testing.T) {
		for i := range n {
			t.Run(fmt.Sprint("sub", i), func(t *testing.T) {
				t.Parallel()
				ctx := t.Context()
				var conn *pgx.Conn
				// Registered before Database, so it runs after the drop:
				// the drop must cope with this open connection.
				t.Cleanup(func() {
					if conn != nil {
						conn.Close(context.Background())
					}
				})
				dbURL := Database(t)
				var err error
				if conn, err = pgx.Connect(ctx, dbURL); err != nil {
					t.Fatal(err)
				}
				var tables int
				if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&tables); err != nil {
					t.Fatal(err)
				}
				if tables != 0 {
					t.Fatalf("database not fresh: %d tables (shared with another test?)", tables)
				}
				if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE mine_%d (x int)`, i)); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				names[dbNameOf(t, dbURL)] = true
				mu.Unlock()
			})
		}
	})
	if len(names) != n {
		t.Fatalf("%d subtests got %d distinct databases: %v", n, len(names), names)
	}
	list := make([]string, 0, n)
	for name := range names {
		if !strings.HasPrefix(name, "t_testdatabasesdistinctanddropped_group_sub") {
			t.Errorf("database name %q does not derive from the test name", name)
		}
		list = append(list, name)
	}
	conn := connect(t, t.Context(), SharedPostgres(t).URL("postgres"))
	var left int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_database WHERE datname = ANY($1)`, list).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("%d of the subtests' databases still exist after the subtests ended", left)
	}
}

func TestDatabaseName(t *testing.T) {
	t.Parallel()
	valid := regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	seen := map[string]bool{}
	for _, in := range []string{
		"TestX",
		"TestX",
		"TestFoo/sub-test#01/Ünïcödé and spaces",
		strings.Repeat("TestVeryLongName/", 20),
		"",
	} {
		name := DatabaseName(in)
		if len(name) > 63 {
			t.Errorf("DatabaseName(%q) = %q: %d bytes > 63", in, name, len(name))
		}
		if !valid.MatchString(name) {
			t.Errorf("DatabaseName(%q) = %q: not a plain identifier", in, name)
		}
		if seen[name] {
			t.Errorf("DatabaseName(%q) = %q: repeated", in, name)
		}
		seen[name] = true
	}
	if got := DatabaseName("TestFoo/Bar"); !strings.HasPrefix(got, "t_testfoo_bar_") {
		t.Errorf("DatabaseName(TestFoo/Bar) = %q", got)
	}
}

// Restart, immediate and fast, on a durable private server: committed data
// survives, the postmaster really restarted, the URL stays valid; Stop then
// removes everything.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	begin := time.Now()
	pg := PrivatePostgres(t, PostgresOptions{Durable: true})
	t.Logf("private server: initdb + start took %v", time.Since(begin))

	dbURL, err := pg.CreateDatabase(ctx, "restart test")
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, dbURL)
	var fsync string
	if err := conn.QueryRow(ctx, `SHOW fsync`).Scan(&fsync); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" {
		t.Fatalf("Durable server has fsync=%s", fsync)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE log (id serial PRIMARY KEY, what text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO log (what) VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	startTime := func(c *pgx.Conn) time.Time {
		t.Helper()
		var ts time.Time
		if err := c.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&ts); err != nil {
			t.Fatal(err)
		}
		return ts
	}
	rows := func(c *pgx.Conn) []string {
		t.Helper()
		r, err := c.Query(ctx, `SELECT what FROM log ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(r, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	t0 := startTime(conn)

	for _, tc := range []struct {
		immediate bool
		row       string
	}{{true, "after immediate"}, {false, "after fast"}} {
		begin := time.Now()
		if err := pg.Restart(ctx, tc.immediate); err != nil {
			t.Fatalf("Restart(immediate=%v): %v", tc.immediate, err)
		}
		t.Logf("Restart(immediate=%v) took %v", tc.immediate, time.Since(begin))
		if _, err := conn.Exec(ctx, `SELECT 1`); err == nil {
			t.Fatalf("a connection from before Restart(immediate=%v) still works", tc.immediate)
		}
		conn = connect(t, ctx, dbURL)
		if t1 := startTime(conn); !t1.After(t0) {
			t.Fatalf("postmaster start time %v not after %v: not restarted", t1, t0)
		} else {
			t0 = t1
		}
		if _, err := conn.Exec(ctx, `INSERT INTO log (what) VALUES ($1)`, tc.row); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := rows(conn), []string{"before", "after immediate", "after fast"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rows after restarts: %q, want %q", got, want)
	}
	if !strings.Contains(pg.LogTail(), "database system was interrupted") &&
		!strings.Contains(pg.LogTail(), "not properly shut down") {
		t.Errorf("no crash recovery in the server log after an immediate restart:\n%s", pg.LogTail())
	}
	conn.Close(ctx)

	dir := pg.dir
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still there after Stop (%v)", dir, err)
	}
	shortCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c, err := pgx.Connect(shortCtx, dbURL); err == nil {
		c.Close(ctx)
		t.Fatal("server still accepts connections after Stop")
	}
	if err := pg.Restart(ctx, false); err == nil {
		t.Fatal("Restart after Stop succeeded")
	}
}

func TestMissingPostgresSaysHowToInstall(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findPostgresBinDir(t.TempDir() + "/*/bin")
	if !errors.Is(err, ErrPostgresNotInstalled) {
		t.Fatalf("err = %v, want ErrPostgresNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "apt-get install -y postgresql") {
		t.Fatalf("error does not say how to install: %v", err)
	}
}

func TestFindPostgresBinDir(t *testing.T) {
	t.Parallel()
	dir, err := FindPostgresBinDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(dir + "/" + name); err != nil {
			t.Error(err)
		}
	}
}

// envelopeRoundTrip exercises a KMS emulator the way the product uses KMS.
func envelopeRoundTrip(t *testing.T, k *KMSServer) {
	ctx := t.Context()
	alias := fmt.Sprintf("testbed/%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), rand.Uint64())
	arn, err := k.CreateKey(ctx, alias)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(arn, "arn:aws:kms:"+k.Region()+":") {
		t.Fatalf("key ARN %q not in region %s", arn, k.Region())
	}
	c, err := k.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/" + alias)})
	if err != nil {
		t.Fatalf("DescribeKey by alias: %v", err)
	}
	if got := aws.ToString(desc.KeyMetadata.Arn); got != arn {
		t.Fatalf("alias resolves to %s, want %s", got, arn)
	}

	ec := map[string]string{"tenant": "acme", "table": "secrets"}
	gen, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String("alias/" + alias),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: ec,
	})
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if len(gen.Plaintext) != 32 || len(gen.CiphertextBlob) <= 32 {
		t.Fatalf("data key: %d plaintext bytes, %d ciphertext bytes", len(gen.Plaintext), len(gen.CiphertextBlob))
	}
	if bytes.Contains(gen.CiphertextBlob, gen.Plaintext) {
		t.Fatal("ciphertext blob contains the plaintext key")
	}
	if got := aws.ToString(gen.KeyId); got != arn {
		t.Fatalf("GenerateDataKey KeyId = %s, want %s", got, arn)
	}

	dec, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: gen.CiphertextBlob, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("Decrypt with the right context: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, gen.Plaintext) {
		t.Fatal("Decrypt returned a different data key")
	}
	if got := aws.ToString(dec.KeyId); got != arn {
		t.Fatalf("Decrypt KeyId = %s, want %s", got, arn)
	}

	for name, wrong := range map[string]map[string]string{
		"other value": {"tenant": "evil", "table": "secrets"},
		"extra pair":  {"tenant": "acme", "table": "secrets", "x": "y"},
		"missing":     nil,
	} {
		_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: gen.CiphertextBlob, EncryptionContext: wrong})
		if err == nil {
			t.Errorf("Decrypt with wrong context (%s) succeeded", name)
			continue
		}
		var ice *types.InvalidCiphertextException
		if !errors.As(err, &ice) {
			t.Errorf("Decrypt with wrong context (%s): %v, want InvalidCiphertextException", name, err)
		}
	}
}

// Admin task in local-kms: a disabled key can no longer be used. (moto 5.2
// does not enforce disabled keys at all; see StartMoto.)
func TestLocalKMSDisabledKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := LocalKMS(t)
	arn, err := k.CreateKey(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := k.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ec := map[string]string{"k": "v"}
	gen, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(arn), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(arn)}); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	_, err = c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(arn), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	var disabled *types.DisabledException
	if !errors.As(err, &disabled) {
		t.Fatalf("GenerateDataKey with a disabled key: %v, want DisabledException", err)
	}
	// Real KMS answers DisabledException here; local-kms answers
	// AccessDeniedException. Either way the data key stays locked.
	_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: gen.CiphertextBlob, EncryptionContext: ec})
	var apiErr smithy.APIError
	if !errors.As(err, &disabled) && !(errors.As(err, &apiErr) && apiErr.ErrorCode() == "AccessDeniedException") {
		t.Fatalf("Decrypt with a disabled key: %v, want DisabledException or AccessDeniedException", err)
	}
	if _, err := c.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(arn)}); err != nil {
		t.Fatalf("EnableKey: %v", err)
	}
	dec, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: gen.CiphertextBlob, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("Decrypt after EnableKey: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, gen.Plaintext) {
		t.Fatal("Decrypt after EnableKey returned a different key")
	}
}

func TestLocalKMSEnvelope(t *testing.T) {
	t.Parallel()
	k := LocalKMS(t)
	if !strings.HasPrefix(k.Endpoint(), "http://127.0.0.1:") {
		t.Fatalf("endpoint %q", k.Endpoint())
	}
	envelopeRoundTrip(t, k)
}

func TestMotoEnvelope(t *testing.T) {
	t.Parallel()
	k := Moto(t)
	if !strings.HasPrefix(k.Endpoint(), "http://127.0.0.1:") {
		t.Fatalf("endpoint %q", k.Endpoint())
	}
	envelopeRoundTrip(t, k)
}

// Env() configures the standard SDK resolution (what a subprocess does):
// LoadDefaultConfig with nothing but the environment reaches the emulator.
func TestKMSEnvConfiguresSDK(t *testing.T) {
	k := LocalKMS(t)
	arn, err := k.CreateKey(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	for _, kv := range k.Env() {
		key, value, _ := strings.Cut(kv, "=")
		t.Setenv(key, value)
	}
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := kms.NewFromConfig(cfg)
	out, err := c.DescribeKey(t.Context(), &kms.DescribeKeyInput{KeyId: aws.String(arn)})
	if err != nil {
		t.Fatalf("DescribeKey through env config: %v", err)
	}
	if got := aws.ToString(out.KeyMetadata.Arn); got != arn {
		t.Fatalf("got key %s, want %s", got, arn)
	}
	if hc, ok := c.Options().HTTPClient.(interface{ CloseIdleConnections() }); ok {
		hc.CloseIdleConnections()
	}
}

func TestKMSServerStop(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	k, err := StartLocalKMS(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("private local-kms: build + start took %v", time.Since(begin))
	if !strings.Contains(k.LogTail(), "Local KMS started") {
		t.Errorf("LogTail lacks the start-up line:\n%s", k.LogTail())
	}
	c, err := k.Client(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListKeys(t.Context(), &kms.ListKeysInput{}); err != nil {
		t.Fatal(err)
	}
	if err := k.Stop(); err != nil {
		t.Fatal(err)
	}
	if !k.proc.exited() {
		t.Fatal("process still running after Stop")
	}
	if _, err := os.Stat(k.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still there after Stop (%v)", k.dir, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c.ListKeys(ctx, &kms.ListKeysInput{}, func(o *kms.Options) { o.RetryMaxAttempts = 1 }); err == nil {
		t.Fatal("ListKeys succeeded after Stop")
	}
	if err := k.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestRingBufferKeepsHeadAndTail(t *testing.T) {
	t.Parallel()
	r := newRingBuffer(100, 1000)
	var all bytes.Buffer
	rng := rand.New(rand.NewPCG(1, 2))
	for all.Len() < 200_000 {
		chunk := make([]byte, rng.IntN(3000))
		for i := range chunk {
			chunk[i] = 'a' + byte(rng.IntN(26))
		}
		all.Write(chunk)
		if n, err := r.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if cap(r.tail) > 4*1000 {
			t.Fatalf("tail grew to %d bytes", cap(r.tail))
		}
	}
	b := all.Bytes()
	want := fmt.Sprintf("%s\n[... %d bytes dropped ...]\n%s", b[:100], len(b)-1100, b[len(b)-1000:])
	if got := r.String(); got != want {
		t.Fatalf("String() differs from head+tail (len %d vs %d)", len(got), len(want))
	}

	small := newRingBuffer(100, 1000)
	fmt.Fprint(small, "hello ")
	fmt.Fprint(small, "world")
	if got := small.String(); got != "hello world" {
		t.Fatalf("String() = %q", got)
	}
}
