package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/config"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/pacer"
	"github.com/reencrypt/reencrypt/pkg/registry"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Exit codes, documented in the README and matched by deploy/job.yaml.
const (
	exitOK          = 0
	exitInternal    = 1
	exitUsage       = 64 // EX_USAGE: the command line is not understood (unknown command or flag, missing or extra arguments)
	exitQuarantined = 65 // EX_DATAERR: done, but rows were quarantined (run); verification failed (verify)
	exitRetry       = 75 // EX_TEMPFAIL: worth a retry (database, KMS, signal, work left)
	exitKeyUnusable = 77 // EX_NOPERM: a KMS key is disabled, pending deletion or denied
	exitConfig      = 78 // EX_CONFIG: configuration refused before any write
)

// command is one sub-command. setup registers the command's own flags (if
// any) and returns the function that runs it with their values.
type command struct {
	path    []string // "run", or "keys", "retire"
	summary string
	long    string // more help, shown by --help
	// vars are the variables the command reads: each is shown, accepted
	// as a flag and validated. nil means every variable (run).
	vars  []string
	setup func(fs *pflag.FlagSet) runFunc
}

type runFunc func(ctx context.Context, a *app, args []string) error

var commands []command

// registerCommand adds a command.
func registerCommand(c command) { commands = append(commands, c) }

// The variables the commands read, by what they touch. Every command
// that logs reads LOG_LEVEL and LOG_FORMAT.
var (
	varsDB       = []string{"DATABASE_URL", "DATABASE_IAM_AUTH", "STATE_SCHEMA", "LOG_LEVEL", "LOG_FORMAT"}
	varsTable    = []string{"TABLE_SCHEMA", "TABLE", "ID_COLUMN", "TOKEN_COLUMN", "AUDIT_TABLE", "AUDIT_ID_COLUMN"}
	varsKMS      = []string{"OLD_KEY_ID", "NEW_KEY_ID", "NAMESPACE", "KMS_RATE_LIMIT", "KMS_MAX_ATTEMPTS", "KMS_ADAPTIVE", "SHARD_COUNT"}
	varsDataKeys = []string{"KMS_CONCURRENCY", "DEK_CACHE_SIZE", "DEK_CACHE_TTL"}
)

// vars joins groups of variables.
func vars(groups ...[]string) []string {
	var out []string
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// app is what every sub-command shares: configuration, output, logger and
// lazily opened connections.
type app struct {
	cfg      *config.Config
	args     []string
	stdout   io.Writer
	stderr   io.Writer
	environ  map[string]string
	logw     *logWriter // the logger's output; it keeps log lines off the progress bar
	log      *slog.Logger
	textLogs bool // LOG_FORMAT resolved: plain text lines rather than JSON records
	reg      *prometheus.Registry
	metrics  *metrics.Metrics

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
	return runWith(&invocation{ctx: ctx, stdout: stdout, stderr: stderr, environ: environ}, args)
}

// invocation is one execution of the command line: what the commands'
// RunE need, and the exit code they leave.
type invocation struct {
	ctx            context.Context
	stdout, stderr io.Writer
	environ        map[string]string
	opts           Options
	code           int
}

// runWith runs the command line for inv, with a main's options (inv.opts).
//
// The command line is cobra's (help on stdout, usage errors, per-command
// flags, completion scripts for bash, zsh and fish); the configuration is
// caarlos0/env's. Each variable's flag only records the text it was given,
// which then stands in for the variable when caarlos0/env parses the
// configuration: one parser types every value, and an error names the
// flag or the variable as the user wrote it. kong was the other candidate:
// its env:"X" tags would have parsed the variables a second time beside
// caarlos0/env (which stays) and it ships no zsh or fish completion;
// today's stdlib flag mirroring gave none of help on stdout, usage errors
// apart from configuration errors, or completion.
func runWith(inv *invocation, args []string) int {
	stderr := inv.stderr
	root := inv.tree()
	root.SetArgs(singleDashCompat(root, args))
	cmd, err := root.ExecuteC()
	if err == nil {
		return inv.code
	}
	var bad *pflag.InvalidValueError
	if errors.As(err, &bad) {
		// A command's own flag given a value of the wrong kind is refused
		// as BATCH_SIZE=abc is: configuration, not usage.
		fmt.Fprintf(stderr, "%s: configuration refused:\n--%s: %q is not %s\n", cmd.CommandPath(),
			bad.GetFlag().Name, bad.GetValue(), config.KindPhrase(bad.GetFlag().Value.Type()))
		return exitConfig
	}
	return usageFailed(stderr, cmd, err)
}

// usageFailed prints a usage error: what is wrong and where help is, not
// every flag.
func usageFailed(w io.Writer, cmd *cobra.Command, err error) int {
	fmt.Fprintf(w, "%s: %v\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, cmd.CommandPath())
	return exitUsage
}

// usageError is a command line the command cannot act on: exit 64.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

const rootLong = `reencrypt rotates the KMS key protecting envelope-encrypted tokens in Postgres.

Every setting is an environment variable (as a Kubernetes Job sets them) or
the flag mirroring it (BATCH_SIZE=500 or --batch-size 500; the flag wins).
'reencrypt <command> --help' lists the ones the command reads, with their
defaults. LOG_FORMAT=text|json|auto chooses plain lines or JSON records for
logs and errors (auto: text on a terminal, JSON otherwise, as in a Job).

exit codes:
  0   done
  64  command line not understood (unknown command or flag, extra arguments)
  65  done but rows quarantined (run); verification failed (verify)
  75  worth a retry (database, KMS, signal, work left)
  77  a KMS key is disabled, pending deletion or denied
  78  configuration refused before any write; rows still under the key (keys)
  1   internal error`

// tree builds the command tree for one invocation: flags bind to its
// variables.
func (inv *invocation) tree() *cobra.Command {
	root := &cobra.Command{
		Use:   "reencrypt",
		Short: "rotate the KMS key protecting envelope-encrypted tokens in Postgres",
		Long:  rootLong,
		// A bare `reencrypt` names no command: a usage error, with the
		// list of commands one --help away.
		RunE: func(*cobra.Command, []string) error {
			return usageErrorf("a command is required (run, plan, status, verify, keys, ...)")
		},
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	// --version answers before any configuration is read, so that a pod
	// whose variables are refused still says which build it is.
	root.Version = versionLine()
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(inv.stdout)
	root.SetErr(inv.stderr)
	root.SetContext(inv.ctx)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	built := map[string]*cobra.Command{"": root}
	sorted := slices.Clone(commands)
	slices.SortStableFunc(sorted, func(a, b command) int { return len(a.path) - len(b.path) })
	for _, c := range sorted {
		parent := built[strings.Join(c.path[:len(c.path)-1], " ")]
		cc := inv.build(c)
		parent.AddCommand(cc)
		built[strings.Join(c.path, " ")] = cc
	}
	return root
}

// build makes one command: its own flags first, then a flag for each
// variable it reads.
func (inv *invocation) build(c command) *cobra.Command {
	given := map[string]*envFlag{}
	var runCmd runFunc
	cc := &cobra.Command{
		Use:   c.path[len(c.path)-1],
		Short: c.summary,
		Long:  c.long,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			inv.code = inv.execute(cmd, c, given, runCmd, args)
			return nil
		},
	}
	if c.long == "" {
		cc.Long = c.summary
	}
	fs := cc.Flags()
	fs.SortFlags = false
	runCmd = c.setup(fs)
	read := map[string]bool{}
	for _, n := range c.vars {
		read[n] = true
	}
	for _, v := range config.Variables() {
		if c.vars != nil && !read[v.Name] {
			continue
		}
		f := &envFlag{kind: v.Kind, text: v.Default}
		if cur, ok := inv.environ[v.Name]; ok && cur != "" {
			f.text = cur // the default this invocation has
		}
		f.text = config.Shown(v, f.text)
		given[v.Name] = f
		fs.Var(f, v.Flag, v.Help+" [$"+v.Name+"]")
		if v.Kind == "bool" {
			fs.Lookup(v.Flag).NoOptDefVal = "true"
		}
		if values := flagValues[v.Name]; values != nil {
			_ = cc.RegisterFlagCompletionFunc(v.Flag, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
		}
	}
	return cc
}

// flagValues are the values a completion offers for a variable's flag.
var flagValues = map[string][]string{
	"MODE":       {"rekey", "rewrap"},
	"LOG_LEVEL":  {"debug", "info", "warn", "error"},
	"LOG_FORMAT": {"auto", "text", "json"},
	"PROGRESS":   {"auto", "on", "off"},
}

// noArgs refuses positional arguments: an unknown sub-command where the
// command has some, else an argument the command would ignore.
func noArgs(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return nil
	case cmd.HasSubCommands():
		return fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return fmt.Errorf("unexpected argument %q: %s takes flags only", args[0], cmd.CommandPath())
}

// envFlag is the flag mirroring a variable. It keeps the text it is given;
// Load then parses it in the variable's place.
type envFlag struct {
	kind string // int, float, duration, bool, string: what help shows
	text string
	set  bool
}

func (f *envFlag) String() string     { return f.text }
func (f *envFlag) Type() string       { return f.kind }
func (f *envFlag) Set(s string) error { f.text, f.set = s, true; return nil }

// singleDashCompat keeps `-batch-size 500` (Go's flag package, before
// cobra) working: a single-dash word naming a known long flag gets its
// second dash. Words after "--" are left alone.
func singleDashCompat(root *cobra.Command, args []string) []string {
	known := map[string]bool{"help": true}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	out := slices.Clone(args)
	for i, a := range out {
		if a == "--" {
			break
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if known[name] {
				out[i] = "-" + a
			}
		}
	}
	return out
}

// execute loads the configuration (flags over variables), sets up the
// app and runs the command; it returns the exit code.
func (inv *invocation) execute(cmd *cobra.Command, c command, given map[string]*envFlag, runCmd runFunc, args []string) int {
	path := cmd.CommandPath()
	flags := map[string]string{}
	for name, f := range given {
		if f.set {
			flags[name] = f.text
		}
	}
	cfg, err := config.Load(inv.environ, flags, c.vars)
	if err != nil {
		fmt.Fprintf(inv.stderr, "%s: configuration refused:\n%v\n", path, err)
		return exitConfig
	}
	a := &app{cfg: cfg, args: args, stdout: inv.stdout, stderr: inv.stderr, environ: inv.environ, hooks: inv.opts.Hooks}
	a.logw = newLogWriter(inv.stderr)
	a.textLogs = cfg.LogFormat == "text" || (cfg.LogFormat == "auto" && isTerminal(inv.stderr))
	a.log = newLogger(a.logw, cfg.LogLevel, a.textLogs)
	a.reg = prometheus.NewRegistry()
	a.metrics = metrics.New(a.reg)
	defer a.close()

	err = runCmd(inv.ctx, a, args)
	var usage *usageError
	if errors.As(err, &usage) {
		return usageFailed(inv.stderr, cmd, err)
	}
	if r := batch.Refused(err); r != nil {
		err = a.explainRefusal(strings.TrimPrefix(path, "reencrypt "), r)
	}
	err = nameFields(err)
	code := exitCode(err)
	if err != nil {
		a.failed(path, err, code)
	}
	return code
}

// failed reports the error that ends the command: one JSON record, or on
// a terminal (LOG_FORMAT=text) the message as it is, newlines and all.
func (a *app) failed(path string, err error, code int) {
	if a.textLogs {
		fmt.Fprintf(a.logw, "%s: %v (exit %d)\n", path, err, code)
		return
	}
	a.log.Error(path+" failed", "err", err.Error(), "exit_code", code)
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
	case errors.As(err, new(*usageError)):
		return exitUsage
	}
	return exitInternal
}

// errVerifyFailed: verify found rows that fail its checks.
var errVerifyFailed = errors.New("verification failed")

// newLogger logs JSON records (a Job's log, read by machines) or, for a
// person at a terminal, slog's key=value text lines.
func newLogger(w io.Writer, level string, text bool) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	if text {
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
	}
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
	pc.MaxConns = batch.PoolConns(a.cfg.RangeWorkers) // one per range worker, and spares (batch.PoolSpareConns)
	pinSession(pc)
	if err := a.iamAuth(ctx, pc, "DATABASE_URL"); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, configError("DATABASE_URL: %v", redactErr(err))
	}
	if a.reg != nil {
		if err := metrics.RegisterPool(a.reg, pool); err != nil {
			pool.Close()
			return nil, fmt.Errorf("register pool metrics: %w", err)
		}
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
		SDKOnly:     !a.cfg.KMSDirect,
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

func (a *app) tableSpec() tokentable.Spec {
	c := a.cfg
	return tokentable.Spec{Schema: c.TableSchema, Name: c.Table, IDColumn: c.IDColumn, TokenColumn: c.TokenColumn,
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

// fieldVariables is the variable a user sets for each of the engine's and
// the table's fields (batch.FieldError, tokentable.FieldError: one type).
var fieldVariables = map[batch.Field]string{
	batch.FieldDatabase:         "DATABASE_URL",
	tokentable.FieldTableSchema: "TABLE_SCHEMA",
	tokentable.FieldTable:       "TABLE",
	tokentable.FieldIDColumn:    "ID_COLUMN",
	tokentable.FieldTokenColumn: "TOKEN_COLUMN",
	tokentable.FieldAuditTable:  "AUDIT_TABLE",
	batch.FieldOldKey:           "OLD_KEY_ID",
	batch.FieldNewKey:           "NEW_KEY_ID",
	batch.FieldNamespace:        "NAMESPACE",
	batch.FieldMode:             "MODE",
	batch.FieldBatchSize:        "BATCH_SIZE",
	batch.FieldWorkers:          "KMS_CONCURRENCY",
	batch.FieldRangeWorkers:     "RANGE_WORKERS",
	batch.FieldRanges:           "RANGES",
	batch.FieldLeaseTTL:         "LEASE_TTL",
	batch.FieldPageTimeout:      "PAGE_TIMEOUT",
	batch.FieldLockTimeout:      "LOCK_TIMEOUT",
	batch.FieldStopGrace:        "STOP_GRACE",
}

// nameFields rewrites the message of an error that holds a
// *batch.FieldError so that it names the variables to fix (OLD_KEY_ID, not
// "old key"); the error still matches what it matched.
func nameFields(err error) error {
	var fe *batch.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	named := fe.Named(func(f batch.Field) string { return cmp.Or(fieldVariables[f], string(f)) })
	return &namedError{msg: strings.Replace(err.Error(), fe.Error(), named, 1), err: err}
}

// namedError is an error with its message rewritten by nameFields.
type namedError struct {
	msg string
	err error
}

func (e *namedError) Error() string { return e.msg }
func (e *namedError) Unwrap() error { return e.err }

// configError is a configuration the command refuses (batch.ErrConfig,
// exit 78).
func configError(format string, args ...any) error { return batch.ConfigErrorf(format, args...) }

// redactErr keeps a connection-string parse error from echoing a password.
func redactErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, "password"); i >= 0 {
		return "cannot parse the connection string (details withheld: it may contain a password)"
	}
	return s
}
