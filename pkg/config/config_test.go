package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestEnvThenFlags(t *testing.T) {
	env := map[string]string{"BATCH_SIZE": "250", "MODE": "rewrap", "LEASE_TTL": "45s", "JOB_COMPLETION_INDEX": "3", "SHARD_COUNT": "5"}
	cfg, rest, err := Load("t", []string{"--batch-size", "500", "extra"}, env, &bytes.Buffer{}, nil)
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
	if len(rest) != 1 || rest[0] != "extra" {
		t.Errorf("rest = %v", rest)
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	_, _, err := Load("reencrypt run", []string{"--help"}, map[string]string{}, &out, nil)
	if err == nil {
		t.Fatal("--help returned no error")
	}
	for _, want := range []string{"-batch-size", "$BATCH_SIZE", "(default 1000)", "$OLD_KEY_ID", "$KMS_RATE_LIMIT", "$DATABASE_URL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help output lacks %q", want)
		}
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
			_, _, err := Load("t", nil, env, &bytes.Buffer{}, nil)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("got %v, want an error naming %s", err, name)
			}
		})
	}
	if _, _, err := Load("t", nil, map[string]string{"BATCH_SIZE": "many"}, &bytes.Buffer{}, nil); err == nil {
		t.Errorf("BATCH_SIZE=many accepted")
	}
}

func TestRedactedHidesPasswords(t *testing.T) {
	cfg, _, err := Load("t", nil, map[string]string{
		"DATABASE_URL":    "postgres://app:hunter2@db:5432/payments",
		"PUSHGATEWAY_URL": "https://push:s3cret@pushgw:9091",
	}, &bytes.Buffer{}, nil)
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
		cfg, _, err := Load("t", nil, environ, &bytes.Buffer{}, nil)
		if err != nil {
			t.Fatalf("DATABASE_IAM_AUTH=%q: %v", env, err)
		}
		if cfg.DatabaseIAMAuth != want {
			t.Errorf("DATABASE_IAM_AUTH=%q: DatabaseIAMAuth = %v, want %v", env, cfg.DatabaseIAMAuth, want)
		}
	}
	if _, _, err := Load("t", nil, map[string]string{"DATABASE_IAM_AUTH": "maybe"}, &bytes.Buffer{}, nil); err == nil {
		t.Error("DATABASE_IAM_AUTH=maybe accepted")
	}
}
