package config

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/pkg/batch"
)

func TestEnvThenFlags(t *testing.T) {
	env := map[string]string{"BATCH_SIZE": "250", "MODE": "rewrap", "LEASE_TTL": "45s", "JOB_COMPLETION_INDEX": "3", "SHARD_COUNT": "5"}
	cfg, err := Load(env, map[string]string{"BATCH_SIZE": "500"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BatchSize != 500 {
		t.Errorf("BatchSize = %d, want 500 (the flag wins over BATCH_SIZE)", cfg.BatchSize)
	}
	if cfg.Mode != "rewrap" || cfg.LeaseTTL != 45*time.Second {
		t.Errorf("Mode %q LeaseTTL %s, want rewrap 45s from the environment", cfg.Mode, cfg.LeaseTTL)
	}
	if cfg.ShardIndex != 3 {
		t.Errorf("ShardIndex = %d, want 3 from JOB_COMPLETION_INDEX", cfg.ShardIndex)
	}
	if cfg.Table != "payment_methods" || cfg.TokenColumn != "encrypted_token" || cfg.Namespace != "payment_methods" {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestVariablesMirrorTheFields(t *testing.T) {
	byName := map[string]Variable{}
	for _, v := range Variables() {
		byName[v.Name] = v
	}
	for name, want := range map[string]Variable{
		"BATCH_SIZE":   {Name: "BATCH_SIZE", Flag: "batch-size", Kind: "int", Default: "1000"},
		"LEASE_TTL":    {Name: "LEASE_TTL", Flag: "lease-ttl", Kind: "duration", Default: "30s"},
		"KMS_ADAPTIVE": {Name: "KMS_ADAPTIVE", Flag: "kms-adaptive", Kind: "bool", Default: "true"},
		"DATABASE_URL": {Name: "DATABASE_URL", Flag: "database-url", Kind: "string", Secret: true},
		"LOG_FORMAT":   {Name: "LOG_FORMAT", Flag: "log-format", Kind: "string", Default: "auto"},
	} {
		got := byName[name]
		got.Help = ""
		if got != want {
			t.Errorf("%s: got %+v, want %+v", name, got, want)
		}
	}
	if len(byName) != reflect.TypeOf(Config{}).NumField() {
		t.Errorf("%d variables for %d fields", len(byName), reflect.TypeOf(Config{}).NumField())
	}
}

// TestParseErrorsNameWhatTheUserWrote: caarlos0/env names the Go field
// ("BatchSize"); Load names the variable, or the flag the value came from.
func TestParseErrorsNameWhatTheUserWrote(t *testing.T) {
	_, err := Load(map[string]string{"BATCH_SIZE": "abc", "LEASE_TTL": "30", "DATABASE_URL": "x"},
		map[string]string{"KMS_ADAPTIVE": "yes", "PUSHGATEWAY_URL": "p"}, nil)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{`BATCH_SIZE: "abc" is not an integer`, `LEASE_TTL: "30" is not a duration`,
		`--kms-adaptive: "yes" is not true or false`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "BatchSize") || strings.Contains(err.Error(), "field") {
		t.Errorf("error names the Go field:\n%v", err)
	}
	// A command that does not read a variable is not refused over it.
	cfg, err := Load(map[string]string{"BATCH_SIZE": "abc", "STOP_GRACE": "1m", "TABLE": "cards"}, nil, []string{"DATABASE_URL", "TABLE"})
	if err != nil {
		t.Fatalf("variables outside the command's refused it: %v", err)
	}
	if cfg.Table != "cards" || cfg.BatchSize != 1000 {
		t.Errorf("TABLE %q BatchSize %d, want cards and the default 1000 for the unread, unparsable BATCH_SIZE", cfg.Table, cfg.BatchSize)
	}
}

func TestValidationNamesTheVariable(t *testing.T) {
	cases := map[string]map[string]string{
		"MODE":           {"MODE": "rotate"},
		"BATCH_SIZE":     {"BATCH_SIZE": "0"},
		"TABLE":          {"TABLE": "pay\x00ments"},
		"SHARD_INDEX":    {"SHARD_INDEX": "5", "SHARD_COUNT": "5"},
		"STOP_GRACE":     {"STOP_GRACE": "40s", "LEASE_TTL": "30s"},
		"LOG_LEVEL":      {"LOG_LEVEL": "loud"},
		"ID_COLUMN":      {"ID_COLUMN": strings.Repeat("x", 64)},
		"KMS_RATE_LIMIT": {"KMS_RATE_LIMIT": "-1"},
	}
	for name, env := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load(env, nil, nil)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("got %v, want an error naming %s", err, name)
			}
		})
	}
	if _, err := Load(map[string]string{"BATCH_SIZE": "many"}, nil, nil); err == nil {
		t.Errorf("BATCH_SIZE=many accepted")
	}
}

func TestRedactedHidesPasswords(t *testing.T) {
	cfg, err := Load(map[string]string{
		"DATABASE_URL":    "postgres://app:hunter2@db:5432/payments",
		"PUSHGATEWAY_URL": "https://push:s3cret@pushgw:9091",
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := ""
	for _, v := range cfg.Redacted() {
		all += v.(string) + " "
	}
	for _, secret := range []string{"hunter2", "s3cret"} {
		if strings.Contains(all, secret) {
			t.Errorf("Redacted() shows %q: %s", secret, all)
		}
	}
	if !strings.Contains(all, "db:5432") {
		t.Errorf("Redacted() lost the host: %s", all)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@db:5432/p?sslmode=require":              "postgres://u:xxxxx@db:5432/p?sslmode=require",
		"postgres://u@db/p?password=secret&sslpassword=s2&sslmode=x": "postgres://u@db/p?password=xxxxx&sslmode=x&sslpassword=xxxxx",
		"host=db user=u password='se cret' sslpassword=s2 dbname=p":  "host=db user=u password=xxxxx sslpassword=xxxxx dbname=p",
		"http://push:secret@gw:9091":                                 "http://push:xxxxx@gw:9091",
		"postgres://u@db/p":                                          "postgres://u@db/p",
		"postgres://u:sec%zzret@db/p":                                "[redacted: unparsable URL]",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDatabaseIAMAuth(t *testing.T) {
	for env, want := range map[string]bool{"": false, "true": true, "false": false} {
		environ := map[string]string{}
		if env != "" {
			environ["DATABASE_IAM_AUTH"] = env
		}
		cfg, err := Load(environ, nil, nil)
		if err != nil {
			t.Fatalf("DATABASE_IAM_AUTH=%q: %v", env, err)
		}
		if cfg.DatabaseIAMAuth != want {
			t.Errorf("DATABASE_IAM_AUTH=%q: DatabaseIAMAuth = %v, want %v", env, cfg.DatabaseIAMAuth, want)
		}
	}
	if _, err := Load(map[string]string{"DATABASE_IAM_AUTH": "maybe"}, nil, nil); err == nil {
		t.Error("DATABASE_IAM_AUTH=maybe accepted")
	}
}

// TestEngineDefaultsWrittenOnce: the settings the engine owns take the
// engine's defaults (package batch), not a copy in an envDefault tag: no
// field has both, Load with nothing set gives the engine's values, and the
// variables list shows them as a tag would.
func TestEngineDefaultsWrittenOnce(t *testing.T) {
	cfg, err := Load(map[string]string{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := batch.Config{BatchSize: batch.DefaultBatchSize, RangeWorkers: batch.DefaultRangeWorkers,
		LeaseTTL: batch.DefaultLeaseTTL, PageTimeout: batch.DefaultPageTimeout, LockTimeout: batch.DefaultLockTimeout,
		StopGrace: batch.DefaultStopGrace, Mode: batch.DefaultMode, Namespace: batch.DefaultNamespace}
	got := batch.Config{BatchSize: cfg.BatchSize, RangeWorkers: cfg.RangeWorkers, LeaseTTL: cfg.LeaseTTL,
		PageTimeout: cfg.PageTimeout, LockTimeout: cfg.LockTimeout, StopGrace: cfg.StopGrace,
		Mode: batch.Mode(cfg.Mode), Namespace: cfg.Namespace}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults after Load: got %+v, want the engine's %+v", got, want)
	}
	if cfg.Table != batch.DefaultTable {
		t.Errorf("TABLE default %q, want the engine's %q", cfg.Table, batch.DefaultTable)
	}
	if cfg.RangeCount() != batch.DefaultRanges {
		t.Errorf("RangeCount() = %d with one shard, want the engine's %d", cfg.RangeCount(), batch.DefaultRanges)
	}

	typ, defaults := reflect.TypeOf(Config{}), reflect.ValueOf(Defaults())
	for i := range typ.NumField() {
		f := typ.Field(i)
		if _, tagged := f.Tag.Lookup("envDefault"); tagged && !defaults.Field(i).IsZero() {
			t.Errorf("%s has an envDefault tag and an engine default: write it once", f.Tag.Get("env"))
		}
	}
	byName := map[string]string{}
	for _, v := range Variables() {
		byName[v.Name] = v.Default
	}
	for name, want := range map[string]string{"MODE": "rekey", "BATCH_SIZE": "1000", "TABLE": "payment_methods",
		"NAMESPACE": "payment_methods", "RANGE_WORKERS": "3", "LEASE_TTL": "30s", "PAGE_TIMEOUT": "2m",
		"LOCK_TIMEOUT": "5s", "STOP_GRACE": "10s", "RANGES": "0", "LOG_LEVEL": "info"} {
		if byName[name] != want {
			t.Errorf("%s shown default %q, want %q", name, byName[name], want)
		}
	}
	// An empty value keeps the default, as an envDefault tag did.
	if cfg, err := Load(map[string]string{"BATCH_SIZE": "", "MODE": ""}, nil, nil); err != nil || cfg.BatchSize != batch.DefaultBatchSize || cfg.Mode != "rekey" {
		t.Errorf("BATCH_SIZE= MODE=: got %+v, %v; want the defaults", cfg, err)
	}
}

// TestEngineBoundsWrittenOnce: Load accepts exactly the range the engine's
// Validate accepts, from the same constants.
func TestEngineBoundsWrittenOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ok, no int
	}{
		{"BATCH_SIZE", batch.MaxBatchSize, batch.MaxBatchSize + 1},
		{"BATCH_SIZE", batch.MinBatchSize, batch.MinBatchSize - 1},
		{"RANGE_WORKERS", batch.MaxRangeWorkers, batch.MaxRangeWorkers + 1},
		{"RANGE_WORKERS", 1, 0},
		{"RANGES", batch.MaxRanges, batch.MaxRanges + 1},
		{"KMS_CONCURRENCY", batch.MaxWorkers, batch.MaxWorkers + 1},
	} {
		if _, err := Load(map[string]string{tc.name: strconv.Itoa(tc.ok)}, nil, nil); err != nil {
			t.Errorf("%s=%d refused: %v", tc.name, tc.ok, err)
		}
		if _, err := Load(map[string]string{tc.name: strconv.Itoa(tc.no)}, nil, nil); err == nil {
			t.Errorf("%s=%d accepted", tc.name, tc.no)
		}
	}
	if _, err := Load(map[string]string{"LEASE_TTL": (batch.MinLeaseTTL - time.Millisecond).String(), "STOP_GRACE": "1s"}, nil, nil); err == nil {
		t.Errorf("LEASE_TTL under %s accepted", batch.MinLeaseTTL)
	}
	for _, tc := range []struct {
		name string
		min  time.Duration
	}{
		{"PAGE_TIMEOUT", batch.MinPageTimeout},
		{"LOCK_TIMEOUT", batch.MinLockTimeout},
		{"STOP_GRACE", batch.MinStopGrace},
	} {
		if _, err := Load(map[string]string{tc.name: tc.min.String()}, nil, nil); err != nil {
			t.Errorf("%s=%s refused: %v", tc.name, tc.min, err)
		}
		if _, err := Load(map[string]string{tc.name: (tc.min - time.Millisecond).String()}, nil, nil); err == nil {
			t.Errorf("%s=%s accepted", tc.name, tc.min-time.Millisecond)
		}
	}
}
