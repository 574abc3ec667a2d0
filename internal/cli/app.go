package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/config"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/pacer"
	"github.com/reencrypt/reencrypt/pkg/registry"
)

// Exit codes, documented in the README and matched by deploy/job.yaml.
const (
	exitOK          = 0
	exitInternal    = 1
	exitQuarantined = 65 // EX_DATAERR: done, but rows were quarantined (run); verification failed (verify)
	exitRetry       = 75 // EX_TEMPFAIL: worth a retry (database, KMS, signal, work left)
	exitKeyUnusable = 77 // EX_NOPERM: a KMS key is disabled, pending deletion or denied
	exitConfig      = 78 // EX_CONFIG: configuration refused before any write
)

// command is one sub-command. setup registers the command's own flags (if
// any) and returns the function that runs it with their values.
type command struct {
	summary string
	setup   func(fs *flag.FlagSet) runFunc
}

type runFunc func(ctx context.Context, a *app, args []string) error

var commands = map[string]command{}

// register adds a command without flags of its own.
func register(name, summary string, run runFunc) {
	commands[name] = command{summary: summary, setup: func(*flag.FlagSet) runFunc { return run }}
}

// registerWithFlags adds a command that has flags of its own.
func registerWithFlags(name, summary string, setup func(fs *flag.FlagSet) runFunc) {
	commands[name] = command{summary: summary, setup: setup}
}

// app is what every sub-command shares: configuration, output, logger and
// lazily opened connections.
type app struct {
	cfg     *config.Config
	args    []string
	stdout  io.Writer
	stderr  io.Writer
	environ map[string]string
	logw    *logWriter // the logger's output; it keeps log lines off the progress bar
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *metrics.Metrics

	pool   *pgxpool.Pool
	awsCfg *aws.Config // DATABASE_IAM_AUTH's, loaded once (iamauth.go)
	kmsAPI kmsclient.KMS
	budget *kmsclient.Budget
	pacer  *pacer.Pacer     // run only
	cache  *kmsclient.Cache // one per process; purged by close

	hooks batch.Hooks // installed by a test-only main; nil in production
}

// run is main without the process: tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, environ map[string]string) int {
	return runWith(ctx, args, stdout, stderr, environ, Options{})
}

// runWith is run with a main's options.
func runWith(ctx context.Context, args []string, stdout, stderr io.Writer, environ map[string]string, o Options) int {
	if code, ok := versionCommand(args, stdout, stderr); ok {
		return code
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitConfig
		}
		return exitOK
	}
	name := args[0]
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "reencrypt: unknown command %q\n\n", name)
		usage(stderr)
		return exitConfig
	}
	var runCmd runFunc
	cfg, rest, err := config.Load("reencrypt "+name, args[1:], environ, stderr, func(fs *flag.FlagSet) { runCmd = cmd.setup(fs) })
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "reencrypt %s: configuration refused:\n%v\n", name, err)
		return exitConfig
	}
	a := &app{cfg: cfg, args: rest, stdout: stdout, stderr: stderr, environ: environ, hooks: o.Hooks}
	a.logw = newLogWriter(stderr)
	a.log = newLogger(a.logw, cfg.LogLevel)
	a.reg = prometheus.NewRegistry()
	a.metrics = metrics.New(a.reg)
	defer a.close()

	err = runCmd(ctx, a, rest)
	if r := batch.Refused(err); r != nil {
		err = a.explainRefusal(name, r)
	}
	code := exitCode(err)
	if err != nil {
		a.log.Error("reencrypt "+name+" failed", "err", err.Error(), "exit_code", code)
	}
	return code
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: reencrypt <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nEvery command takes the same configuration: environment variables, or the flags\nmirroring them. `reencrypt <command> --help` lists them with their defaults.")
	fmt.Fprintln(w, "\nexit codes: 0 done; 65 done but rows quarantined (run), verification failed (verify);\n75 retry; 77 KMS key unusable; 78 configuration refused, rows still under the key (keys); 1 internal error")
}

func exitCode(err error) int {
	var partial *batch.PartialError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, batch.ErrConfig), errors.Is(err, checkpoint.ErrSchemaTooNew), batch.Refused(err) != nil:
		return exitConfig
	case errors.Is(err, kmsclient.ErrKeyUnusable):
		return exitKeyUnusable
	case errors.As(err, &partial):
		if partial.Quarantined > 0 {
			return exitQuarantined
		}
		return exitRetry
	case batch.IsTransient(err), errors.Is(err, context.Canceled), errors.Is(err, checkpoint.ErrFenced):
		return exitRetry
	case errors.Is(err, errVerifyFailed):
		return exitQuarantined
	case errors.Is(err, registry.ErrInUse): // keys retire / schedule-deletion: rows still under the key
		return exitConfig
	case errors.Is(err, registry.ErrRefused): // keys: the registry's state forbids it
		return exitConfig
	}
	return exitInternal
}

// errVerifyFailed: verify found rows that fail its checks.
var errVerifyFailed = errors.New("verification failed")

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// db opens the connection pool once.
func (a *app) db(ctx context.Context) (*pgxpool.Pool, error) {
	if a.pool != nil {
		return a.pool, nil
	}
	if a.cfg.DatabaseURL == "" {
		return nil, configError("DATABASE_URL is required")
	}
	pc, err := pgxpool.ParseConfig(a.cfg.DatabaseURL)
	if err != nil {
		return nil, configError("DATABASE_URL: %v", redactErr(err))
	}
	pc.MaxConns = int32(a.cfg.RangeWorkers + 4)
	pinSession(pc)
	if err := a.iamAuth(ctx, pc, "DATABASE_URL"); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, configError("DATABASE_URL: %v", redactErr(err))
	}
	a.pool = pool
	return pool, nil
}

// pinSession sets what every connection of the tool's has: its name in
// pg_stat_activity and a pinned search_path. Every relation the tool names
// is schema-qualified; functions and operators are not. Pinned, a role that
// may create objects in a schema of the database's search_path cannot
// shadow them (unnest, jsonb_build_object, =) with code run under this role.
func pinSession(pc *pgxpool.Config) {
	pc.ConnConfig.RuntimeParams["application_name"] = "reencrypt"
	pc.ConnConfig.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
}

// kms builds the KMS client once, with this process's share of the budget.
func (a *app) kms(ctx context.Context) (kmsclient.KMS, error) {
	if a.kmsAPI != nil {
		return a.kmsAPI, nil
	}
	a.budget = kmsclient.NewBudget(a.cfg.KMSRateLimit, a.cfg.ShardCount)
	if !a.cfg.KMSAdaptive {
		a.budget.Fixed()
	}
	c, err := kmsclient.New(ctx, kmsclient.Options{
		MaxAttempts: a.cfg.KMSMaxAttempts,
		Budget:      a.budget,
		Observe:     a.metrics.ObserveKMS,
	})
	if err != nil {
		return nil, configError("%v", err)
	}
	a.kmsAPI = c
	return c, nil
}

// client is the data-key client for the configured namespace.
func (a *app) client(ctx context.Context) (*kmsclient.Client, error) {
	api, err := a.kms(ctx)
	if err != nil {
		return nil, err
	}
	if a.cache == nil {
		a.cache = kmsclient.NewCache(a.cfg.DEKCacheSize, a.cfg.DEKCacheTTL)
	}
	return kmsclient.NewClient(api, a.cfg.Namespace, a.cache), nil
}

func (a *app) tableSpec() batch.TableSpec {
	c := a.cfg
	return batch.TableSpec{Schema: c.TableSchema, Name: c.Table, IDColumn: c.IDColumn, TokenColumn: c.TokenColumn,
		AuditTable: c.AuditTable, AuditIDColumn: c.AuditIDColumn}
}

func (a *app) owner() string {
	host, _ := os.Hostname()
	return host + "/" + strconv.Itoa(os.Getpid()) + "/shard-" + strconv.Itoa(a.cfg.ShardIndex)
}

func (a *app) close() {
	a.cache.Purge() // zero the plaintext keys now, not at their expiry
	if a.pool != nil {
		a.pool.Close()
	}
}

type cfgError struct{ msg string }

func (e *cfgError) Error() string        { return e.msg }
func (e *cfgError) Is(target error) bool { return target == batch.ErrConfig }

func configError(format string, args ...any) error {
	return &cfgError{msg: fmt.Sprintf(format, args...)}
}

// redactErr keeps a connection-string parse error from echoing a password.
func redactErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, "password"); i >= 0 {
		return "cannot parse the connection string (details withheld: it may contain a password)"
	}
	return s
}
