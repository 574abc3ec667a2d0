// Package config is reencrypt's one configuration: environment variables
// (as in the runbook's Job) parsed by caarlos0/env, with a command-line flag
// mirroring each variable (BATCH_SIZE ⇔ --batch-size). Flags win over the
// environment. Only cmd/ reads the environment; packages take values.
//
// The flags themselves are the command line's (internal/cli): it lists
// Variables, and hands Load the text given to each flag it saw, by
// variable name. Values are then typed in one place, by caarlos0/env,
// whichever way they came.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caarlos0/env/v11"

	"github.com/reencrypt/reencrypt/pkg/batch"
)

// Config holds every setting of every sub-command. A setting the engine
// owns (package batch) has no envDefault tag: Defaults fills it with the
// engine's default before the environment is read, and caarlos0/env leaves
// a field alone when its variable is unset and it has no envDefault. The
// others default to their envDefault tag.
type Config struct {
	DatabaseURL string `env:"DATABASE_URL" help:"Postgres connection URL (keyword/value strings work too)"`
	OldKeyID    string `env:"OLD_KEY_ID" help:"KMS key the tokens are under now: key id, ARN, alias/name or alias ARN"`
	NewKeyID    string `env:"NEW_KEY_ID" help:"KMS key to move the tokens to: key id, ARN, alias/name or alias ARN"`
	Mode        string `env:"MODE" help:"rekey (new data keys, tokens re-sealed) or rewrap (KMS ReEncrypt of each data key; no plaintext here)"`
	BatchSize   int    `env:"BATCH_SIZE" help:"rows per page and per transaction"`

	// DatabaseIAMAuth: RDS IAM database authentication, a fresh token per
	// connection from the AWS credentials (IRSA), no password (pkg/rdsauth).
	DatabaseIAMAuth bool `env:"DATABASE_IAM_AUTH" envDefault:"false" help:"sign in to RDS/Aurora with an IAM token made per connection from the AWS credentials (IRSA) instead of a password; needs sslmode=require or verify-full"`

	TableSchema   string `env:"TABLE_SCHEMA" envDefault:"public" help:"schema of the token and audit tables"`
	Table         string `env:"TABLE" help:"table holding the tokens"`
	IDColumn      string `env:"ID_COLUMN" envDefault:"id" help:"primary key column (uuid, bigint or integer)"`
	TokenColumn   string `env:"TOKEN_COLUMN" envDefault:"encrypted_token" help:"bytea column holding envelope-v1 tokens"`
	AuditTable    string `env:"AUDIT_TABLE" envDefault:"payment_method_audit" help:"audit table, one row per rotated token"`
	AuditIDColumn string `env:"AUDIT_ID_COLUMN" envDefault:"payment_method_id" help:"audit column referencing the token row"`
	Namespace     string `env:"NAMESPACE" help:"envelope AAD namespace and KMS encryption context"`
	StateSchema   string `env:"STATE_SCHEMA" envDefault:"reencrypt" help:"schema for reencrypt's own bookkeeping tables"`

	KMSRateLimit   float64       `env:"KMS_RATE_LIMIT" envDefault:"1000" help:"KMS requests per second for the whole Job, shared by SHARD_COUNT pods (0 = unlimited)"`
	KMSConcurrency int           `env:"KMS_CONCURRENCY" envDefault:"0" help:"KMS calls in flight per process (0 = sized from measured latency and the rate budget)"`
	KMSMaxAttempts int           `env:"KMS_MAX_ATTEMPTS" envDefault:"8" help:"attempts per KMS call on throttling or 5xx"`
	KMSDirect      bool          `env:"KMS_DIRECT" envDefault:"true" help:"send Decrypt, GenerateDataKey and ReEncrypt as signed requests of reencrypt's own, about 40 % less CPU per call than the AWS SDK's middleware (false: every call through the SDK)"`
	DEKCacheSize   int           `env:"DEK_CACHE_SIZE" envDefault:"4096" help:"unwrapped data keys kept in memory, only keys rows share (0 = none)"`
	DEKCacheTTL    time.Duration `env:"DEK_CACHE_TTL" envDefault:"5m" help:"longest time an unwrapped data key is kept (then zeroed)"`

	ShardIndex   int           `env:"SHARD_INDEX" envDefault:"-1" help:"this pod's index in the Job (default: JOB_COMPLETION_INDEX, else 0)"`
	ShardCount   int           `env:"SHARD_COUNT" envDefault:"1" help:"pods sharing the work and the KMS budget"`
	Ranges       int           `env:"RANGES" envDefault:"0" help:"most ranges a pass is cut into (0 = 16 per shard, at least 64); each holds whole pages, so a small table gets fewer"`
	RangeWorkers int           `env:"RANGE_WORKERS" help:"ranges one process works at once (3 keeps KMS busy while a page reads and commits)"`
	LeaseTTL     time.Duration `env:"LEASE_TTL" help:"range lease; a dead pod's range is taken over after it"`
	PageTimeout  time.Duration `env:"PAGE_TIMEOUT" help:"longest time for one page, KMS calls and commit included; also the statement_timeout of its transaction"`
	LockTimeout  time.Duration `env:"LOCK_TIMEOUT" help:"longest wait of a page transaction for a row lock held by another transaction (the page is then retried)"`
	StopGrace    time.Duration `env:"STOP_GRACE" help:"on SIGTERM, time the page in flight has to commit before it is rolled back"`

	KMSAdaptive      bool          `env:"KMS_ADAPTIVE" envDefault:"true" help:"follow KMS throttling: the KMS rate backs off and recovers under KMS_RATE_LIMIT, together with the other pods (false: a fixed budget)"`
	MaxRowsPerSecond float64       `env:"MAX_ROWS_PER_SECOND" envDefault:"0" help:"rows per second for the whole Job, split across the live pods (0 = unlimited)"`
	MaxReplicaLag    time.Duration `env:"MAX_REPLICA_LAG" envDefault:"5s" help:"pages wait while a streaming replica lags more than this, until it is under half of it (0 = replicas not watched)"`
	ReplicaURLs      string        `env:"REPLICA_URLS" envDefault:"" help:"comma-separated URLs of replicas the primary's pg_stat_replication does not show (e.g. RDS read replicas), watched for MAX_REPLICA_LAG"`

	MetricsAddr    string `env:"METRICS_ADDR" envDefault:"" help:"serve /metrics on this address while running (e.g. :9090)"`
	PushgatewayURL string `env:"PUSHGATEWAY_URL" envDefault:"" help:"push final metrics to this Prometheus Pushgateway"`
	LogLevel       string `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat      string `env:"LOG_FORMAT" envDefault:"auto" help:"logs and errors: text (plain lines), json (one JSON record a line), or auto (text on a terminal, else json, as in a Job)"`
	Progress       string `env:"PROGRESS" envDefault:"auto" help:"progress bar: auto (only on a terminal), on or off"`
}

// Variable is one setting as the command line shows it: its environment
// variable, the flag mirroring it, the kind of value, its default and help.
type Variable struct {
	Name    string // BATCH_SIZE
	Flag    string // batch-size
	Kind    string // int, float, duration, bool or string
	Default string // the envDefault tag, or the engine's default (Defaults)
	Help    string
	Secret  bool // the value may hold a password: never shown as given
}

// Defaults is the configuration before the environment is read: the
// engine's defaults for the settings it owns; every other field is zero
// and takes its envDefault tag.
func Defaults() Config {
	return Config{
		Mode:         string(batch.DefaultMode),
		BatchSize:    batch.DefaultBatchSize,
		Table:        batch.DefaultTable,
		Namespace:    batch.DefaultNamespace,
		RangeWorkers: batch.DefaultRangeWorkers,
		LeaseTTL:     batch.DefaultLeaseTTL,
		PageTimeout:  batch.DefaultPageTimeout,
		LockTimeout:  batch.DefaultLockTimeout,
		StopGrace:    batch.DefaultStopGrace,
	}
}

// Variables lists every setting, in the order of Config's fields.
func Variables() []Variable {
	t := reflect.TypeOf(Config{})
	defaults := reflect.ValueOf(Defaults())
	out := make([]Variable, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("env")
		if name == "" {
			continue
		}
		def, ok := f.Tag.Lookup("envDefault")
		if !ok && !defaults.Field(i).IsZero() {
			def = defaultText(defaults.Field(i).Interface())
		}
		out = append(out, Variable{Name: name, Flag: FlagName(name), Kind: kindOf(f.Type),
			Default: def, Help: f.Tag.Get("help"), Secret: secretBearing[name]})
	}
	return out
}

// defaultText is a default as it would be written in an envDefault tag:
// 2m, not 2m0s.
func defaultText(v any) string {
	d, ok := v.(time.Duration)
	if !ok {
		return fmt.Sprint(v)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// FlagName is the flag mirroring a variable: BATCH_SIZE → batch-size.
func FlagName(variable string) string {
	return strings.ReplaceAll(strings.ToLower(variable), "_", "-")
}

var durationType = reflect.TypeOf(time.Duration(0))

func kindOf(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t.Kind() == reflect.Int:
		return "int"
	case t.Kind() == reflect.Float64:
		return "float"
	case t.Kind() == reflect.Bool:
		return "bool"
	}
	return "string"
}

// Shown is how a variable's current value may be printed (as a flag's
// default in help): passwords masked.
func Shown(v Variable, value string) string {
	if v.Secret {
		return redactValue(v.Name, value)
	}
	return value
}

// Load parses the environment with caarlos0/env, flags (values given on
// the command line, by variable name) taking precedence over it, and
// validates. Only the variables in only (all when nil) are checked: a
// command is not refused over a setting it does not read. Every error
// names what the user wrote: the flag (--batch-size) when the value came
// from one, else the variable (BATCH_SIZE), never a Go field.
func Load(environ, flags map[string]string, only []string) (*Config, error) {
	merged := make(map[string]string, len(environ)+len(flags))
	for k, v := range environ {
		merged[k] = v
	}
	for k, v := range flags {
		merged[k] = v
	}
	checked := func(string) bool { return true }
	if only != nil {
		set := map[string]bool{}
		for _, n := range only {
			set[n] = true
		}
		checked = func(name string) bool { return set[name] }
	}
	defaults := Defaults()
	cfg := &defaults
	if err := env.ParseWithOptions(cfg, env.Options{Environment: merged}); err != nil {
		var errs []error
		for _, e := range parseErrors(err, merged, flags) {
			if checked(e.name) || e.err != nil {
				errs = append(errs, e)
			}
			delete(merged, e.name)
		}
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		// Only variables the command does not read failed: they take
		// their defaults rather than the zero value a failed field has.
		defaults = Defaults()
		cfg = &defaults
		if err := env.ParseWithOptions(cfg, env.Options{Environment: merged}); err != nil {
			return nil, err
		}
	}
	if cfg.ShardIndex < 0 {
		cfg.ShardIndex = 0
		if v, ok := environ["JOB_COMPLETION_INDEX"]; ok && v != "" {
			i, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("JOB_COMPLETION_INDEX %q is not a number", v)
			}
			cfg.ShardIndex = i
		}
	}
	if err := cfg.validate(checked); err != nil {
		return nil, err
	}
	return cfg, nil
}

// valueError is a value that does not parse, named as the user wrote it.
type valueError struct {
	err   error  // an error that names no field: shown as it is
	name  string // the variable
	shown string // the variable, or the flag it came from
	value string
	kind  string
}

func (e *valueError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	if secretBearing[e.name] {
		return fmt.Sprintf("%s: not %s (value not shown: it may hold a password)", e.shown, want[e.kind])
	}
	return fmt.Sprintf("%s: %q is not %s", e.shown, e.value, want[e.kind])
}

// KindPhrase is what a value of kind (as Variable.Kind, or a pflag type)
// must be: "an integer".
func KindPhrase(kind string) string {
	if kind == "float64" {
		kind = "float"
	}
	if p, ok := want[kind]; ok {
		return p
	}
	return "a valid " + kind
}

var want = map[string]string{"int": "an integer", "float": "a number", "bool": "true or false",
	"duration": "a duration (like 30s, 5m or 1h30m)", "string": "a string"}

// parseErrors turns caarlos0/env's errors, which name the Go field, into
// ones naming the variable or flag. An error it cannot place is kept as
// it is.
func parseErrors(err error, values, flags map[string]string) []*valueError {
	byField := map[string]reflect.StructField{}
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		byField[t.Field(i).Name] = t.Field(i)
	}
	var list []error
	var agg env.AggregateError
	if errors.As(err, &agg) {
		list = agg.Errors
	} else {
		list = []error{err}
	}
	var out []*valueError
	for _, e := range list {
		var pe env.ParseError
		var f reflect.StructField
		ok := errors.As(e, &pe)
		if ok {
			f, ok = byField[pe.Name]
		}
		if !ok {
			out = append(out, &valueError{err: e})
			continue
		}
		name := f.Tag.Get("env")
		shown := name
		if _, fromFlag := flags[name]; fromFlag {
			shown = "--" + FlagName(name)
		}
		out = append(out, &valueError{name: name, shown: shown, value: values[name], kind: kindOf(f.Type)})
	}
	return out
}

// Validate checks what can be checked without a database or KMS. Every
// message names the variable to fix.
func (c *Config) Validate() error { return c.validate(func(string) bool { return true }) }

// validate reports the problems of the variables checked accepts.
func (c *Config) validate(checked func(name string) bool) error {
	var errs []error
	bad := func(name, format string, args ...any) {
		if checked(name) {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	if m := batch.Mode(c.Mode); m != batch.Rekey && m != batch.Rewrap {
		bad("MODE", "MODE %q: want %s or %s", c.Mode, batch.Rekey, batch.Rewrap)
	}
	if c.BatchSize < batch.MinBatchSize || c.BatchSize > batch.MaxBatchSize {
		bad("BATCH_SIZE", "BATCH_SIZE %d: want %d..%d", c.BatchSize, batch.MinBatchSize, batch.MaxBatchSize)
	}
	for name, val := range map[string]string{"TABLE_SCHEMA": c.TableSchema, "TABLE": c.Table, "ID_COLUMN": c.IDColumn,
		"TOKEN_COLUMN": c.TokenColumn, "AUDIT_TABLE": c.AuditTable, "AUDIT_ID_COLUMN": c.AuditIDColumn, "STATE_SCHEMA": c.StateSchema} {
		if err := identifier(val); err != nil {
			bad(name, "%s: %v", name, err)
		}
	}
	if c.Namespace == "" || len(c.Namespace) > 1024 {
		bad("NAMESPACE", "NAMESPACE must be 1..1024 bytes")
	}
	if c.KMSRateLimit < 0 {
		bad("KMS_RATE_LIMIT", "KMS_RATE_LIMIT %v: want >= 0", c.KMSRateLimit)
	}
	if c.KMSConcurrency < 0 || c.KMSConcurrency > batch.MaxWorkers {
		bad("KMS_CONCURRENCY", "KMS_CONCURRENCY %d: want 0..%d", c.KMSConcurrency, batch.MaxWorkers)
	}
	if c.ShardCount < 1 || c.ShardCount > 10_000 {
		bad("SHARD_COUNT", "SHARD_COUNT %d: want 1..10000", c.ShardCount)
	}
	if c.ShardIndex < 0 || c.ShardIndex >= c.ShardCount {
		bad("SHARD_INDEX", "SHARD_INDEX %d: want 0..SHARD_COUNT-1 (%d)", c.ShardIndex, c.ShardCount-1)
	}
	if c.Ranges < 0 || c.Ranges > batch.MaxRanges {
		bad("RANGES", "RANGES %d: want 0..%d", c.Ranges, batch.MaxRanges)
	}
	if c.RangeWorkers < 1 || c.RangeWorkers > batch.MaxRangeWorkers {
		bad("RANGE_WORKERS", "RANGE_WORKERS %d: want 1..%d", c.RangeWorkers, batch.MaxRangeWorkers)
	}
	if c.LeaseTTL < batch.MinLeaseTTL {
		bad("LEASE_TTL", "LEASE_TTL %s: want at least %s", c.LeaseTTL, batch.MinLeaseTTL)
	}
	if c.PageTimeout < batch.MinPageTimeout {
		bad("PAGE_TIMEOUT", "PAGE_TIMEOUT %s: want at least %s", c.PageTimeout, batch.MinPageTimeout)
	}
	if c.LockTimeout < batch.MinLockTimeout {
		bad("LOCK_TIMEOUT", "LOCK_TIMEOUT %s: want at least %s", c.LockTimeout, batch.MinLockTimeout)
	}
	if c.StopGrace < batch.MinStopGrace || c.StopGrace >= c.LeaseTTL {
		bad("STOP_GRACE", "STOP_GRACE %s: want at least %s and less than LEASE_TTL", c.StopGrace, batch.MinStopGrace)
	}
	if c.MaxRowsPerSecond < 0 {
		bad("MAX_ROWS_PER_SECOND", "MAX_ROWS_PER_SECOND %v: want >= 0", c.MaxRowsPerSecond)
	}
	if c.MaxReplicaLag < 0 {
		bad("MAX_REPLICA_LAG", "MAX_REPLICA_LAG %s: want >= 0", c.MaxReplicaLag)
	}
	for i, r := range c.Replicas() {
		if u, err := url.Parse(r); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			bad("REPLICA_URLS", "REPLICA_URLS entry %d is not a postgres:// URL (value not shown: it may hold a password)", i+1)
		}
	}
	if c.PushgatewayURL != "" {
		if u, err := url.Parse(c.PushgatewayURL); err != nil || u.Scheme == "" || u.Host == "" {
			// Not echoed: a malformed URL is not reliably redacted.
			bad("PUSHGATEWAY_URL", "PUSHGATEWAY_URL is not an absolute URL like http://host:9091 (value not shown: it may hold a password)")
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("LOG_LEVEL", "LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		bad("LOG_FORMAT", "LOG_FORMAT %q: want auto, text or json", c.LogFormat)
	}
	switch c.Progress {
	case "auto", "on", "off":
	default:
		bad("PROGRESS", "PROGRESS %q: want auto, on or off", c.Progress)
	}
	return errors.Join(errs...)
}

// identifier accepts any name Postgres accepts once quoted, except empty,
// over-long or NUL-containing ones, which quoting cannot make safe.
func identifier(s string) error {
	switch {
	case s == "":
		return errors.New("empty name")
	case len(s) > 63:
		return fmt.Errorf("name of %d bytes: Postgres truncates names above 63", len(s))
	case strings.ContainsRune(s, 0):
		return errors.New("name contains a NUL byte")
	case !utf8.ValidString(s):
		return errors.New("name is not valid UTF-8")
	}
	return nil
}

// RangeCount is the number of ranges to plan: RANGES, or 16 per shard, at
// least the engine's default.
func (c *Config) RangeCount() int {
	if c.Ranges > 0 {
		return c.Ranges
	}
	return max(batch.DefaultRanges, 16*c.ShardCount)
}

// Redacted is the configuration as it may be logged: the database password
// is masked.
func (c *Config) Redacted() map[string]any {
	out := map[string]any{}
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("env")
		val := v.Field(i).Interface()
		if secretBearing[name] {
			val = redactValue(name, fmt.Sprint(val))
		}
		out[name] = fmt.Sprint(val)
	}
	return out
}

// Replicas are the entries of REPLICA_URLS.
func (c *Config) Replicas() []string {
	var out []string
	for _, r := range strings.Split(c.ReplicaURLs, ",") {
		if r = strings.TrimSpace(r); r != "" {
			out = append(out, r)
		}
	}
	return out
}

// secretBearing are the variables whose value may hold a password.
var secretBearing = map[string]bool{"DATABASE_URL": true, "PUSHGATEWAY_URL": true, "REPLICA_URLS": true}

// redactValue masks the passwords of a secret-bearing variable: each URL of
// a comma-separated list.
func redactValue(name, s string) string {
	if name != "REPLICA_URLS" {
		return RedactURL(s)
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = RedactURL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// kvPassword is a password in a keyword/value connection string.
var kvPassword = regexp.MustCompile(`\b(ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)

// RedactURL masks the passwords of a URL (userinfo, and the password and
// sslpassword query parameters) or of a keyword/value connection string,
// so that the rest can still be shown.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		if err != nil && strings.Contains(s, "://") {
			return "[redacted: unparsable URL]"
		}
		return kvPassword.ReplaceAllString(s, "${1}password=xxxxx")
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	if q := u.Query(); q.Has("password") || q.Has("sslpassword") {
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
