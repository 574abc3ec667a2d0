package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
)

// TestProductionBinaryHasNoTestHooks: the binary that ships honours no
// fault-injection variable and has no `seed` command. Only the fault suite's
// own binary (test/faults/cmd/reencrypt-faults) installs crash hooks.
func TestProductionBinaryHasNoTestHooks(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	ids := e.Seed(300, e.Old, 1)
	env := cliEnv(e, "BATCH_SIZE=100", "REENCRYPT_CRASH_AT=before_commit", "REENCRYPT_CRASH_AFTER=0")
	p, code := runCLI(t, env, time.Minute, "run")
	if code != exitOK {
		t.Fatalf("run with REENCRYPT_CRASH_AT=before_commit: exit %d (-1 = killed by a signal), want 0; stderr:\n%s",
			code, tail(p.stderr.String()))
	}
	assertRotatedOnce(t, e, ids)

	p, code = runCLI(t, cliEnv(e), time.Minute, "seed", "--rows", "10")
	if code != exitUsage || !strings.Contains(p.stderr.String(), `unknown command "seed"`) {
		t.Errorf("reencrypt seed: exit %d, want %d (unknown command); stderr:\n%s", code, exitUsage, tail(p.stderr.String()))
	}
	if n := e.Int(`SELECT count(*) FROM payment_methods`); n != int64(len(ids)) {
		t.Errorf("rows after `reencrypt seed`: %d, want %d", n, len(ids))
	}
}
