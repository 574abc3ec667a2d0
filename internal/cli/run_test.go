package cli

// Tests of `reencrypt run` as a separate process: the binary TestMain built,
// against the test's own database and the shared local-kms, configured only
// through its environment, as a Kubernetes Job would run it.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// process is one reencrypt process.
type process struct {
	cmd          *exec.Cmd
	stdout       *testbed.SyncBuffer
	stderr       *testbed.SyncBuffer
	done         chan struct{}
	code         int // exit code, -1 when killed by a signal; valid after done
	start, ended time.Time
}

// cliEnv is the environment of a reencrypt process for e: nothing inherited
// but PATH and HOME, the emulator's AWS variables, the database, both keys
// (OLD by alias, NEW by ARN), a short lease, and extra (later entries win).
func cliEnv(e *fixture.Env, extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	env = append(env, e.KMS.Env()...)
	env = append(env,
		"DATABASE_URL="+e.URL,
		"OLD_KEY_ID="+e.Old.Ref,
		"NEW_KEY_ID="+e.New.ARN,
		"KMS_RATE_LIMIT=0",
		"LEASE_TTL=2s",
		"STOP_GRACE=1s",
		"PROGRESS=off",
	)
	return append(env, extra...)
}

// startCLI starts the binary with args. The process dies with the test
// binary (parent-death signal) and is killed at the end of the test.
func startCLI(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(reencryptBin, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &process{cmd: cmd, stdout: &testbed.SyncBuffer{}, stderr: &testbed.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start reencrypt: %v", err)
	}
	go func() {
		_ = cmd.Wait()
		p.ended = time.Now()
		p.code = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait returns the exit code, failing the test after timeout.
func (p *process) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("reencrypt %v still running after %s; stderr:\n%s", p.cmd.Args[1:], timeout, tail(p.stderr.String()))
		return -1
	}
}

// runCLI runs the binary to its end and returns its exit code.
func runCLI(t *testing.T, env []string, timeout time.Duration, args ...string) (*process, int) {
	t.Helper()
	p := startCLI(t, env, args...)
	return p, p.wait(t, timeout)
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// rotated counts the rows committed as rotated so far (their audit rows).
func rotated(t *testing.T, e *fixture.Env) int64 {
	t.Helper()
	return e.Int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'`)
}

// assertRotatedOnce is the end state of every successful rotation: every
// row under NEW opening to its seeded plaintext, exactly one audit row per
// row, nothing quarantined, nothing lost.
func assertRotatedOnce(t *testing.T, e *fixture.Env, ids []string) {
	t.Helper()
	if n := e.Int(`SELECT count(*) FROM payment_methods`); n != int64(len(ids)) {
		t.Errorf("rows in the table: %d, want %d", n, len(ids))
	}
	if n := e.AssertAll(fixture.Check{Under: e.New}); n != len(ids) {
		t.Errorf("checked %d rows, want %d", n, len(ids))
	}
	if got := e.KeyCounts(); len(got) != 1 || got[e.New.ARN] != len(ids) {
		t.Errorf("rows by key: %v, want all %d under %s", got, len(ids), e.New.ARN)
	}
	audit := e.AuditByRow("token_reencrypted")
	bad := 0
	for _, id := range ids {
		if audit[id] != 1 {
			bad++
			if bad <= 5 {
				t.Errorf("row %s: %d token_reencrypted audit rows, want 1", id, audit[id])
			}
		}
	}
	if total, dup := e.AuditCounts("token_reencrypted"); total != int64(len(ids)) || dup != 0 || bad != 0 {
		t.Errorf("audit: %d rows, %d rows audited more than once, %d rows not exactly once; want %d, 0, 0",
			total, dup, bad, len(ids))
	}
	if n := e.Int(`SELECT count(*) FROM reencrypt.quarantine`); n != 0 {
		t.Errorf("quarantined rows: %d, want 0", n)
	}
}

// TestCrashKill9: `reencrypt run` is killed with SIGKILL at random moments,
// at least five times, and rerun after each kill, then run to completion. A
// kill can land anywhere — in a KMS call, between UPDATE and COMMIT, while
// planning or claiming — and must never lose a row, change a plaintext,
// audit a row twice or leave a row under OLD.
func TestCrashKill9(t *testing.T) {
	t.Parallel()
	const rows, minKills = 20_000, 5
	e := fixture.New(t, "uuid")
	ids := e.Seed(rows, e.Old, 1)
	// A KMS budget of 2,500 requests/s makes a full run last at least 8 s on
	// any machine, so that five kills 0.1–1.5 s after each start always land
	// before the end.
	env := cliEnv(e, "BATCH_SIZE=250", "KMS_CONCURRENCY=8", "KMS_RATE_LIMIT=2500")

	kills, starts := 0, 0
	for kills < minKills+1 && starts < 30 {
		before := rotated(t, e)
		p := startCLI(t, env, "run")
		starts++
		d := 100*time.Millisecond + rand.N(1400*time.Millisecond)
		if starts%2 == 0 {
			// Every other kill lands while pages are being rotated: after
			// this process's first commit, not in its start-up (which, on a
			// busy machine, can take most of 1.5 s).
			testbed.Poll(time.Minute, func() bool { return rotated(t, e) != before })
			d = rand.N(700 * time.Millisecond)
		}
		select {
		case <-p.done:
			if p.code != 0 {
				t.Fatalf("run %d exited %d before its kill; stderr:\n%s", starts, p.code, tail(p.stderr.String()))
			}
			t.Logf("run %d finished by itself (exit 0) within %s", starts, d)
		case <-time.After(d):
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
			if p.code == 0 {
				t.Logf("run %d finished by itself (exit 0) just before its kill", starts)
				break
			}
			if p.code != -1 {
				t.Fatalf("run %d exited %d before its kill; stderr:\n%s", starts, p.code, tail(p.stderr.String()))
			}
			kills++
			t.Logf("kill -9 #%d, %s after start: %d of %d rows rotated", kills, time.Since(p.start).Round(time.Millisecond), rotated(t, e), rows)
		}
		if p.code == 0 {
			break
		}
	}
	if kills < minKills {
		t.Fatalf("the run finished after %d kills; want at least %d (make it longer)", kills, minKills)
	}
	final, code := runCLI(t, env, 3*time.Minute, "run")
	if code != 0 {
		t.Fatalf("final run: exit %d, want 0; stderr:\n%s", code, tail(final.stderr.String()))
	}
	t.Logf("final run took %s: %s", final.ended.Sub(final.start).Round(time.Millisecond), strings.TrimSpace(final.stdout.String()))
	assertRotatedOnce(t, e, ids)
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state <> 'done' AND pass = (SELECT max(pass) FROM reencrypt.ranges)`); n != 0 {
		t.Errorf("ranges not done: %d", n)
	}
	t.Logf("%d processes launched, %d killed; %d recorded their start (a kill can land before that)",
		starts+1, kills, e.Int(`SELECT count(*) FROM reencrypt.events WHERE event = 'process_started'`))
}

// TestSigterm: SIGTERM in the middle of a run stops it within STOP_GRACE
// plus a few seconds with the retry code 75, releasing its leases (with a
// 60 s lease, a rerun that finds them released finishes long before they
// could have expired); the rerun completes with 0.
func TestSigterm(t *testing.T) {
	t.Parallel()
	const rows = 20_000
	const grace = 2 * time.Second
	const lease = 60 * time.Second
	e := fixture.New(t, "bigint")
	ids := e.Seed(rows, e.Old, 1)
	// Eight ranges of ~2,500 rows (ten pages each): when the signal comes,
	// the range workers are in the middle of ranges, not between them.
	env := cliEnv(e, "BATCH_SIZE=250", "KMS_CONCURRENCY=8", "RANGE_WORKERS=3", "RANGES=8",
		"LEASE_TTL="+lease.String(), "STOP_GRACE="+grace.String())

	p := startCLI(t, env, "run")
	if !testbed.Poll(time.Minute, func() bool {
		select {
		case <-p.done:
			t.Fatalf("run ended (exit %d) before it could be signalled; stderr:\n%s", p.code, tail(p.stderr.String()))
		default:
		}
		return rotated(t, e) >= 1000
	}) {
		t.Fatalf("no progress within a minute; stderr:\n%s", tail(p.stderr.String()))
	}
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := p.wait(t, grace+30*time.Second)
	took := p.ended.Sub(sent)
	t.Logf("SIGTERM: exit %d after %s with %d of %d rows rotated", code, took.Round(time.Millisecond), rotated(t, e), rows)
	if code != 75 {
		t.Errorf("exit code after SIGTERM: %d, want 75; stderr:\n%s", code, tail(p.stderr.String()))
	}
	if took > grace+5*time.Second {
		t.Errorf("exit %s after SIGTERM, want within STOP_GRACE (%s) + 5s", took.Round(time.Millisecond), grace)
	}
	if done := rotated(t, e); done >= rows {
		t.Fatalf("all %d rows were rotated before SIGTERM took effect: the test proves nothing", done)
	}
	owner := fmt.Sprintf("%%/%d/%%", p.cmd.Process.Pid)
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state = 'running' AND lease_expires_at > now()`); n != 0 {
		t.Errorf("live leases after SIGTERM: %d, want 0 (released)", n)
	}
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE owner LIKE $1`, owner); n != 0 {
		t.Errorf("ranges still owned by the stopped process: %d, want 0", n)
	}
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state = 'pending' AND claims > 0`); n == 0 {
		t.Errorf("no range was given back (pending after a claim): want the ranges in flight released")
	}

	rerun, code := runCLI(t, env, lease/2, "run")
	if code != 0 {
		t.Fatalf("rerun: exit %d, want 0; stderr:\n%s", code, tail(rerun.stderr.String()))
	}
	t.Logf("rerun took %s", rerun.ended.Sub(rerun.start).Round(time.Millisecond))
	assertRotatedOnce(t, e, ids)
}

// TestExitCodes: each documented outcome of `run` has its exit code, and a
// refused configuration writes nothing.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, e *fixture.Env) []string // extra environment
		code    int
		says    string // in stderr
		refused bool   // nothing may be written
		rerun   bool   // a rerun ends with the same code
	}{
		{name: "done", code: 0, rerun: true,
			prepare: func(*testing.T, *fixture.Env) []string { return nil }},
		{name: "quarantined", code: 65, says: "quarantined", rerun: true,
			prepare: func(t *testing.T, e *fixture.Env) []string {
				var ids []string
				for _, r := range e.Rows()[200:206] {
					ids = append(ids, r.ID)
				}
				// Unreadable rows (NULL, truncated, unknown version) and rows
				// that parse but do not open (sealed for another row, altered):
				// after the first run the latter are the only rows left under
				// OLD, and the rerun must still end with 65, not be refused.
				a, b := e.Token(ids[3]), e.Token(ids[4])
				altered := bytes.Clone(e.Token(ids[5]))
				altered[len(altered)-1] ^= 1
				e.SetToken(ids[0], nil)
				e.SetToken(ids[1], []byte{0x01, 0x01, 0x00})
				e.SetToken(ids[2], append([]byte{0x09}, e.Token(ids[2])[1:]...))
				e.SetToken(ids[3], b)
				e.SetToken(ids[4], a)
				e.SetToken(ids[5], altered)
				// A good row, then the three that do not open, first in the
				// heap, where Preflight's sample of tokens under OLD looks.
				e.PutFirst(e.Rows()[0].ID, ids[3], ids[4], ids[5])
				return nil
			}},
		{name: "same key twice", code: 78, says: "same KMS key", refused: true,
			prepare: func(_ *testing.T, e *fixture.Env) []string { return []string{"NEW_KEY_ID=" + e.Old.ARN} }},
		{name: "unknown table", code: 78, says: "public.no_such_table does not exist", refused: true,
			prepare: func(*testing.T, *fixture.Env) []string { return []string{"TABLE=no_such_table"} }},
		// Rewrap never opens a token, so only a ReEncrypt can tell that the
		// encryption context (NAMESPACE) is wrong: before the fix every row
		// was quarantined (exit 65) at one KMS call each.
		{name: "rewrap with a wrong namespace", code: 78, says: "NAMESPACE", refused: true,
			prepare: func(*testing.T, *fixture.Env) []string {
				return []string{"MODE=rewrap", "NAMESPACE=payment_method"}
			}},
		{name: "bad setting", code: 78, says: "BATCH_SIZE", refused: true,
			prepare: func(*testing.T, *fixture.Env) []string { return []string{"BATCH_SIZE=0"} }},
		{name: "disabled new key", code: 77, says: "Disabled", refused: true,
			prepare: func(t *testing.T, e *fixture.Env) []string {
				if _, err := e.API.DisableKey(context.Background(), &kms.DisableKeyInput{KeyId: aws.String(e.New.ID)}); err != nil {
					t.Fatal(err)
				}
				return nil
			}},
		{name: "unreachable database", code: 75, says: "cannot reach the database", refused: true,
			prepare: func(t *testing.T, e *fixture.Env) []string {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				port := l.Addr().(*net.TCPAddr).Port
				l.Close()
				return []string{fmt.Sprintf("DATABASE_URL=postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", port)}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := fixture.New(t, "uuid")
			e.Seed(300, e.Old, 1)
			env := cliEnv(e, tc.prepare(t, e)...)
			digest := e.TableDigest()

			p, code := runCLI(t, env, time.Minute, "run")
			if code != tc.code {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, tc.code, tail(p.stderr.String()))
			}
			if tc.says != "" && !strings.Contains(p.stderr.String(), tc.says) {
				t.Errorf("stderr does not say %q:\n%s", tc.says, tail(p.stderr.String()))
			}
			if tc.refused {
				if e.SchemaExists("reencrypt") {
					t.Errorf("refused run created the bookkeeping schema")
				}
				if got := e.TableDigest(); got != digest {
					t.Errorf("refused run changed tokens")
				}
				if n := e.AuditTotal(); n != 0 {
					t.Errorf("refused run wrote %d audit rows", n)
				}
			}
			if tc.rerun {
				audit := e.AuditTotal()
				p2, code := runCLI(t, env, time.Minute, "run")
				if code != tc.code {
					t.Errorf("rerun exit code %d, want %d; stderr:\n%s", code, tc.code, tail(p2.stderr.String()))
				}
				if got := e.AuditTotal(); got != audit {
					t.Errorf("rerun wrote %d audit rows, want 0", got-audit)
				}
			}
		})
	}
}

// TestRunHelp: `run --help` lists the variables with their defaults and
// exits 0.
func TestRunHelp(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "--help"}, &stdout, &stderr, map[string]string{})
	if code != 0 {
		t.Fatalf("run --help: exit %d, want 0", code)
	}
	out := stdout.String() + stderr.String()
	for _, want := range []string{"OLD_KEY_ID", "NEW_KEY_ID", "BATCH_SIZE", "DATABASE_URL", "-batch-size", "(default 1000)"} {
		if !strings.Contains(out, want) {
			t.Errorf("help does not mention %q", want)
		}
	}
}

// TestUpgradeResumesRelease1Run: a run half done in a state schema as
// release 1 left it (the same tables, no version table) is resumed by this
// release: the schema is adopted and migrated in place, the run keeps its
// pass, and every row ends under NEW exactly once.
func TestUpgradeResumesRelease1Run(t *testing.T) {
	t.Parallel()
	const rows = 4_000
	e := fixture.New(t, "bigint")
	ids := e.Seed(rows, e.Old, 1)
	env := cliEnv(e, "BATCH_SIZE=100", "KMS_CONCURRENCY=4", "KMS_RATE_LIMIT=1000")

	p := startCLI(t, env, "run")
	testbed.Poll(time.Minute, func() bool { return rotated(t, e) >= rows/4 })
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	done := rotated(t, e)
	if done == 0 || done >= rows {
		t.Fatalf("set-up: %d of %d rows rotated before the kill; want a half-finished run", done, rows)
	}
	// Back to release 1's layout: the same tables without a version table.
	e.Exec(`DROP TABLE reencrypt.schema_version`)
	pass := e.Int(`SELECT pass FROM reencrypt.runs`)

	if p, code := runCLI(t, env, 2*time.Minute, "run"); code != exitOK {
		t.Fatalf("rerun after upgrade: exit %d; stderr:\n%s", code, tail(p.stderr.String()))
	}
	if got := e.Int(`SELECT pass FROM reencrypt.runs`); got != pass {
		t.Errorf("pass %d after the upgrade, want the half-finished pass %d resumed", got, pass)
	}
	if got := e.Int(`SELECT version FROM reencrypt.schema_version`); got != int64(checkpoint.SchemaVersion()) {
		t.Errorf("schema version %d, want %d", got, checkpoint.SchemaVersion())
	}
	assertRotatedOnce(t, e, ids)
}

// TestNewerStateSchemaRefused: a binary older than the state schema refuses
// to write it (run) or read it (status) with exit 78, changing nothing.
func TestNewerStateSchemaRefused(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	e.Seed(50, e.Old, 1)
	env := cliEnv(e)
	if p, code := runCLI(t, env, time.Minute, "run"); code != exitOK {
		t.Fatalf("first run: exit %d; stderr:\n%s", code, tail(p.stderr.String()))
	}
	newer := int64(checkpoint.SchemaVersion()) + 1
	e.Exec(`UPDATE reencrypt.schema_version SET version = $1`, newer)
	e.Seed(10, e.Old, 1)
	for _, cmd := range []string{"run", "status"} {
		p, code := runCLI(t, env, time.Minute, cmd)
		if code != exitConfig {
			t.Errorf("%s: exit %d, want %d; stderr:\n%s", cmd, code, exitConfig, tail(p.stderr.String()))
		}
		if !strings.Contains(p.stderr.String(), "newer") && !strings.Contains(p.stderr.String(), fmt.Sprintf("version %d", newer)) {
			t.Errorf("%s: stderr does not say the schema is newer:\n%s", cmd, tail(p.stderr.String()))
		}
	}
	if n := e.Int(`SELECT count(*) FROM payment_methods WHERE position($1::bytea IN encrypted_token) > 0`, []byte(e.Old.ARN)); n != 10 {
		t.Errorf("%d rows under OLD after the refused run, want the 10 left untouched", n)
	}
}
