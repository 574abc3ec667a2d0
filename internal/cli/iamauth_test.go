package cli

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// With DATABASE_IAM_AUTH=true a connection string that could go in
// plaintext is configuration refused (exit 78) before any connection is
// tried: nothing listens on port 1 here, so a command that went on to
// connect would exit with a connection error instead.
func TestIAMAuthRefusesPlaintextBeforeConnecting(t *testing.T) {
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_REGION", "eu-west-1")
	for _, url := range []string{
		"postgres://reencrypt_job@127.0.0.1:1/payments?sslmode=disable",
		"postgres://reencrypt_job@127.0.0.1:1/payments", // pgx's default: prefer
	} {
		for _, cmd := range []string{"run", "status", "migrate"} {
			t.Run(cmd, func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				code := run(context.Background(), []string{cmd}, &stdout, &stderr, map[string]string{
					"DATABASE_URL": url, "DATABASE_IAM_AUTH": "true",
					"OLD_KEY_ID": "alias/old", "NEW_KEY_ID": "alias/new",
				})
				if code != exitConfig {
					t.Fatalf("%s with %s: exit %d, want %d\n%s", cmd, url, code, exitConfig, stderr.String())
				}
				for _, want := range []string{"DATABASE_IAM_AUTH", "TLS", "sslmode"} {
					if !strings.Contains(stderr.String(), want) {
						t.Errorf("%s: stderr lacks %q:\n%s", cmd, want, stderr.String())
					}
				}
			})
		}
	}
}
