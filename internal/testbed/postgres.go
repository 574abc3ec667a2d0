package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDatabaseURL names the environment variable that, when set, makes
// StartPostgres attach to an existing server (a superuser URL such as
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) instead of
// starting one.
const EnvDatabaseURL = "TEST_DATABASE_URL"

// PostgresInstallHint is how to get the server binaries this package needs.
const PostgresInstallHint = "install them with `apt-get install -y postgresql` (Debian/Ubuntu; " +
	"the package's own cluster service is not needed), or set " + EnvDatabaseURL +
	" to a superuser URL of an existing server"

// ErrPostgresNotInstalled is returned (wrapped) by StartPostgres when no
// initdb/postgres binaries can be found. Its message says how to install them.
var ErrPostgresNotInstalled = errors.New("testbed: PostgreSQL server binaries (initdb, postgres) not found " +
	"on PATH or in /usr/lib/postgresql/*/bin; " + PostgresInstallHint)

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// Durable keeps PostgreSQL's crash-safety settings. When false (the
	// default, meant for tests) the server runs with fsync=off,
	// synchronous_commit=off and full_page_writes=off: much faster, but an
	// immediate shutdown (Restart(ctx, true)) may lose the last few hundred
	// milliseconds of commits. Fault tests that check that committed data
	// survives a crash must set Durable.
	Durable bool

	// Local always starts a private local server, even when
	// TEST_DATABASE_URL is set. Restart needs a server of its own.
	Local bool

	// Settings are extra server settings, "name=value" each (postgres -c);
	// the benchmark loads pg_stat_statements with them.
	Settings []string
}

// Postgres is a throwaway PostgreSQL server started by StartPostgres, or an
// existing server named by TEST_DATABASE_URL.
type Postgres struct {
	opts PostgresOptions

	external *url.URL // set when attached to TEST_DATABASE_URL

	binDir  string
	dir     string // temp root: data/, sock/, postgres.log
	dataDir string
	sockDir string
	logPath string
	port    int
	cred    *syscall.Credential // nil unless we run the server as another user

	mu      sync.Mutex // guards proc, logFile, stopped
	proc    *proc
	logFile *os.File
	stopped bool
}

// FindPostgresBinDir returns a directory holding both initdb and postgres:
// the one initdb on PATH resolves to, or else the newest
// /usr/lib/postgresql/*/bin. The error wraps ErrPostgresNotInstalled.
func FindPostgresBinDir() (string, error) {
	return findPostgresBinDir("/usr/lib/postgresql/*/bin")
}

func findPostgresBinDir(glob string) (string, error) {
	usable := func(dir string) bool {
		for _, name := range []string{"initdb", "postgres"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && usable(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if usable(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob(glob)
	// Newest major version first: /usr/lib/postgresql/<version>/bin.
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if usable(d) {
			return d, nil
		}
	}
	return "", ErrPostgresNotInstalled
}

// StartPostgres starts a private PostgreSQL server on 127.0.0.1 (initdb in a
// fresh temp dir, then postgres in the foreground as a child process) and
// waits until it accepts connections. As root, initdb and postgres run as
// the "postgres" OS user. If TEST_DATABASE_URL is set (and opts.Local is
// not), no server is started: the returned Postgres uses that server.
//
// ctx bounds only the start-up; the server runs until Stop.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	if raw := os.Getenv(EnvDatabaseURL); raw != "" && !opts.Local {
		return attachPostgres(ctx, raw, opts)
	}
	binDir, err := FindPostgresBinDir()
	if err != nil {
		return nil, err
	}
	p := &Postgres{opts: opts, binDir: binDir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("testbed: running as root, so initdb/postgres must run as the \"postgres\" OS user, "+
				"but it does not exist (%v); it comes with the Debian package: %s", err, PostgresInstallHint)
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("testbed: user postgres: %w", err)
		}
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}

	if p.dir, err = makeTempDir("pg"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(p.dir)
		}
	}()
	p.dataDir = filepath.Join(p.dir, "data")
	p.sockDir = filepath.Join(p.dir, "sock")
	p.logPath = filepath.Join(p.dir, "postgres.log")
	if err := os.Mkdir(p.sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	if p.cred != nil {
		for _, d := range []string{p.dir, p.sockDir} {
			if err := os.Chown(d, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
				return nil, fmt.Errorf("testbed: %w", err)
			}
		}
	}

	if err := p.initdb(ctx); err != nil {
		return nil, err
	}

	// The port is only known free a moment ago; retry if another process
	// grabbed it in between.
	for attempt := 1; ; attempt++ {
		if p.port, err = freePort(); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
		err = p.start(ctx)
		if err == nil {
			break
		}
		if attempt >= 3 || !strings.Contains(err.Error(), "already in use") {
			return nil, err
		}
	}
	ok = true
	return p, nil
}

func attachPostgres(ctx context.Context, raw string, opts PostgresOptions) (*Postgres, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return nil, fmt.Errorf("testbed: %s must be a URL like postgres://user@host:port/db?sslmode=disable", EnvDatabaseURL)
	}
	p := &Postgres{opts: opts, external: u}
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("testbed: connect to %s: %w", EnvDatabaseURL, err)
	}
	defer conn.Close(context.Background())
	var can bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user`).Scan(&can); err != nil {
		return nil, fmt.Errorf("testbed: %s: %w", EnvDatabaseURL, err)
	}
	if !can {
		return nil, fmt.Errorf("testbed: the role in %s may not create databases; use a superuser", EnvDatabaseURL)
	}
	return p, nil
}

// sysProcAttr returns the attributes for initdb and postgres.
func (p *Postgres) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential: p.cred,
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true,
	}
}

func (p *Postgres) initdb(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(p.binDir, "initdb"),
		"-D", p.dataDir,
		"--auth=trust", "-U", "postgres", "--encoding=UTF8",
		// C locale: does not depend on which locales the machine has.
		"--locale=C",
		"--no-sync")
	cmd.Dir = p.dir
	cmd.SysProcAttr = p.sysProcAttr()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: initdb in %s: %w\n%s", p.dataDir, err, tailString(string(out), 4096))
	}
	return nil
}

// start starts postgres on p.port and waits until it accepts connections.
// The caller holds p.mu or has exclusive access.
func (p *Postgres) start(ctx context.Context) error {
	args := []string{
		"-D", p.dataDir,
		"-k", p.sockDir,
		"-p", strconv.Itoa(p.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300",
	}
	if !p.opts.Durable {
		args = append(args,
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off")
	}
	for _, kv := range p.opts.Settings {
		args = append(args, "-c", kv)
	}
	logFile, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	logStart, _ := logFile.Seek(0, io.SeekEnd)
	fmt.Fprintf(logFile, "--- testbed: starting postgres on 127.0.0.1:%d at %s\n", p.port, time.Now().Format(time.RFC3339Nano))

	cmd := exec.Command(filepath.Join(p.binDir, "postgres"), args...)
	cmd.Dir = p.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = p.sysProcAttr()
	pr, err := startProc(cmd)
	if err != nil {
		logFile.Close()
		return fmt.Errorf("testbed: start postgres: %w", err)
	}
	p.proc, p.logFile = pr, logFile

	fail := func(format string, a ...any) error {
		pr.stop(syscall.SIGQUIT, 10*time.Second)
		logFile.Close()
		p.proc, p.logFile = nil, nil
		return fmt.Errorf("testbed: postgres on 127.0.0.1:%d: %s; server log:\n%s",
			p.port, fmt.Sprintf(format, a...), p.logSince(logStart))
	}

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := p.URL("postgres")
	var lastErr error
	for {
		if pr.exited() {
			return fail("server exited during start-up (%v)", pr.err)
		}
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(attemptCtx, url)
		attemptCancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fail("not ready: %v (last error: %v)", ctx.Err(), lastErr)
		case <-pr.done:
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// logSince returns the server log from offset on (at most its last 8 KiB).
func (p *Postgres) logSince(offset int64) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logPath, err)
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	return tailString(string(b[offset:]), 8192)
}

// LogTail returns the end of the server log ("" for TEST_DATABASE_URL).
func (p *Postgres) LogTail() string {
	if p.external != nil {
		return ""
	}
	return p.logSince(0)
}

// External reports whether p is the server named by TEST_DATABASE_URL
// rather than one this package started.
func (p *Postgres) External() bool { return p.external != nil }

// Port returns the server's TCP port.
func (p *Postgres) Port() int {
	if p.external != nil {
		port, _ := strconv.Atoi(p.external.Port())
		if port == 0 {
			port = 5432
		}
		return port
	}
	return p.port
}

// URL returns a connection URL for database dbname on this server (TCP,
// 127.0.0.1, user postgres, sslmode=disable for a local server).
func (p *Postgres) URL(dbname string) string {
	if p.external != nil {
		u := *p.external
		u.Path = "/" + dbname
		u.RawPath = ""
		return u.String()
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, url.PathEscape(dbname))
}

// adminURL is where CREATE/DROP DATABASE are issued.
func (p *Postgres) adminURL() string {
	if p.external != nil {
		return p.external.String()
	}
	return p.URL("postgres")
}

func (p *Postgres) admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, p.adminURL())
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("testbed: %s: %w", sql, err)
	}
	return nil
}

// CreateDatabase creates database name (quoted as an identifier) and
// returns its URL.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := p.admin(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return p.URL(name), nil
}

// DropDatabase drops database name if it exists, disconnecting its
// sessions (DROP DATABASE ... WITH (FORCE)).
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	return p.admin(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// Restart stops the server and starts it again on the same port and data
// directory, then waits until it accepts connections. immediate=true is an
// immediate shutdown (SIGQUIT, like pg_ctl -m immediate: no checkpoint,
// crash recovery at start); false is a fast shutdown (SIGINT). Existing
// connections are broken either way. Restart fails for TEST_DATABASE_URL.
func (p *Postgres) Restart(ctx context.Context, immediate bool) error {
	if p.external != nil {
		return fmt.Errorf("testbed: Restart needs a local server (PostgresOptions.Local), not %s", EnvDatabaseURL)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return errors.New("testbed: Restart after Stop")
	}
	if p.proc != nil {
		sig, grace := syscall.SIGINT, 60*time.Second
		if immediate {
			sig, grace = syscall.SIGQUIT, 10*time.Second
		}
		p.proc.stop(sig, grace)
		p.logFile.Close()
		p.proc, p.logFile = nil, nil
	}
	return p.start(ctx)
}

// Stop kills the server (immediate shutdown, then SIGKILL of its process
// group) and removes its temp dir. It is a no-op for TEST_DATABASE_URL and
// on a second call.
func (p *Postgres) Stop() error {
	if p.external != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	if p.proc != nil {
		p.proc.stop(syscall.SIGQUIT, 10*time.Second)
		p.logFile.Close()
		p.proc, p.logFile = nil, nil
	}
	if err := os.RemoveAll(p.dir); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	return nil
}
