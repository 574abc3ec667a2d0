package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Servers shared by all tests of one test binary, started lazily on first
// use and stopped by Main (or StopShared).
var shared struct {
	pg   lazy[*Postgres]
	kms  lazy[*KMSServer]
	moto lazy[*KMSServer]
}

// lazy starts a value once; a failed start is remembered and reported to
// every later caller.
type lazy[T interface{ Stop() error }] struct {
	mu   sync.Mutex
	done bool
	v    T
	err  error
}

func (l *lazy[T]) get(start func(context.Context) (T, error)) (T, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		l.v, l.err = start(ctx)
		l.done = true
	}
	return l.v, l.err
}

func (l *lazy[T]) stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done || l.err != nil {
		return nil
	}
	return l.v.Stop()
}

// Main is for TestMain:
//
//	func TestMain(m *testing.M) { testbed.Main(m) }
//
// It runs the tests, stops the shared servers, and, if the tests passed,
// fails the run when goroutines leaked (goleak.Find). Idle keep-alive HTTP
// connections (net/http persistConn loops, e.g. of AWS SDK clients that
// were not closed) are ignored; pgx connections and pools are NOT ignored:
// a test must close what it opens. Pass extra goleak options to ignore more.
// Main then exits with the tests' code.
func Main(m *testing.M, opts ...goleak.Option) {
	os.Exit(Run(m, opts...))
}

// Run is Main without the exit: it returns the code, for a TestMain that
// has more to clean up before it exits (os.Exit skips deferred calls).
func Run(m *testing.M, opts ...goleak.Option) int {
	code := m.Run()
	if err := StopShared(); err != nil {
		fmt.Fprintln(os.Stderr, "testbed: stopping shared servers:", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		opts = append([]goleak.Option{
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		}, opts...)
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintln(os.Stderr, "testbed: goroutine leak after all tests passed:", err)
			code = 1
		}
	}
	return code
}

// StopShared stops the servers started by SharedPostgres/Database, LocalKMS
// and Moto. Main and Run call it; call it yourself in a TestMain that uses
// neither. (If it is never called, the servers still die with the test binary,
// via their parent-death signal, but their temp dirs stay behind.)
func StopShared() error {
	return errors.Join(shared.pg.stop(), shared.kms.stop(), shared.moto.stop())
}

// SharedPostgres returns the test binary's shared server (started on first
// use with default options: not durable; or TEST_DATABASE_URL). It fails
// the test, with the install instruction, if the server cannot start.
// Don't Stop or Restart it: use PrivatePostgres for that.
func SharedPostgres(t testing.TB) *Postgres {
	t.Helper()
	pg, err := shared.pg.get(func(ctx context.Context) (*Postgres, error) {
		return StartPostgres(ctx, PostgresOptions{})
	})
	if err != nil {
		t.Fatalf("shared PostgreSQL server: %v", err)
	}
	return pg
}

// PrivatePostgres starts a server of the test's own (always local, even if
// TEST_DATABASE_URL is set: made for Restart and other fault tests) and
// stops it at the end of the test.
func PrivatePostgres(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	opts.Local = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := StartPostgres(ctx, opts)
	if err != nil {
		t.Fatalf("private PostgreSQL server: %v", err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return pg
}

var (
	dbCounter atomic.Uint64
	// dbToken keeps names of test binaries that share a server (go test
	// ./... with TEST_DATABASE_URL) apart.
	dbToken = func() string {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}()
)

// DatabaseName returns a new unique, valid database name derived from
// testName: "t_<sanitized name>_<process token>_<counter>", at most 63 bytes.
func DatabaseName(testName string) string {
	suffix := fmt.Sprintf("_%s_%d", dbToken, dbCounter.Add(1))
	var b strings.Builder
	b.WriteString("t_")
	lastUnderscore := true
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			lastUnderscore = false
		case !lastUnderscore:
			b.WriteByte('_')
			lastUnderscore = true
		}
	}
	base := strings.TrimRight(b.String(), "_")
	if maxLen := 63 - len(suffix); len(base) > maxLen {
		base = base[:maxLen]
	}
	return base + suffix
}

// Database creates a fresh database on the shared server and returns its
// URL. The database is dropped (WITH (FORCE)) when the test ends. It fails
// the test, with the install instruction, if PostgreSQL cannot start.
func Database(t testing.TB) string {
	t.Helper()
	pg := SharedPostgres(t)
	name := DatabaseName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, err := pg.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pg.DropDatabase(ctx, name); err != nil {
			t.Errorf("%v", err)
		}
	})
	return url
}

// LocalKMS returns the test binary's shared local-kms, started on first
// use. Tests share it, so give keys and aliases unique names.
func LocalKMS(t testing.TB) *KMSServer {
	t.Helper()
	k, err := shared.kms.get(StartLocalKMS)
	if err != nil {
		t.Fatalf("shared local-kms: %v", err)
	}
	return k
}

// Moto returns the test binary's shared moto_server, started on first use.
// moto_server is optional on a developer's machine (only pip installs it):
// when it is not on PATH the test is skipped, saying so and how to install
// it, unless REQUIRE_MOTO=1 (.ci/run sets it where moto is installed), which
// makes that a failure. A moto_server that is there but does not start
// always fails the test.
func Moto(t testing.TB) *KMSServer {
	t.Helper()
	if reason := motoMissing(os.Getenv(EnvRequireMoto)); reason != "" {
		if os.Getenv(EnvRequireMoto) == "1" {
			t.Fatal(reason)
		}
		t.Skip(reason)
	}
	k, err := shared.moto.get(StartMoto)
	if err != nil {
		t.Fatalf("shared moto_server: %v", err)
	}
	return k
}

// EnvRequireMoto set to 1 turns a missing moto_server from a skip into a
// failure (see Moto).
const EnvRequireMoto = "REQUIRE_MOTO"

// motoMissing says why the moto tests cannot run here, or "" when
// moto_server is on PATH.
func motoMissing(requireMoto string) string {
	if _, err := exec.LookPath("moto_server"); err == nil {
		return ""
	}
	if requireMoto == "1" {
		return fmt.Sprintf("moto_server not found on PATH and %s=1; %s", EnvRequireMoto, MotoInstallHint)
	}
	return fmt.Sprintf("moto_server not found on PATH: skipping the moto half of the KMS tests (%s; %s=1 makes this a failure)", MotoInstallHint, EnvRequireMoto)
}

// PollInterval is how often WaitFor and Poll test their condition.
const PollInterval = 20 * time.Millisecond

// Poll tests cond every PollInterval until it holds (true) or timeout has
// passed (false). It is the one place a test waits on a condition by
// polling: a condition that another process or the database makes true
// offers nothing to block on.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// WaitFor is Poll that fails the test, naming what it waited for, when
// cond does not hold within timeout.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}
