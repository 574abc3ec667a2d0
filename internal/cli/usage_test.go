package cli

// Tests of the command line as a person meets it (issue 12): help on
// stdout, usage errors apart from configuration errors, each command's own
// flags, errors named by what the user wrote, plain-text errors on a
// terminal, shell completion. None of them needs a database: every path
// here ends before the first connection.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// invoke runs the command line in-process with env ("NAME=value") only.
func invoke(t *testing.T, args []string, env ...string) opResult {
	t.Helper()
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, vars)
	return opResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// TestHelpOnStdout: `reencrypt --help | less` must show something: help is
// asked for, so it is output, and exits 0.
func TestHelpOnStdout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"run", "plan", "status", "verify", "keys", "completion", "exit codes", "64"}},
		{[]string{"-h"}, []string{"run", "status"}},
		{[]string{"help"}, []string{"run", "status"}},
		{[]string{"run", "--help"}, []string{"--batch-size", "$BATCH_SIZE", "(default 1000)", "$OLD_KEY_ID", "--stop-grace"}},
		{[]string{"help", "run"}, []string{"--batch-size", "$BATCH_SIZE"}},
		{[]string{"status", "-h"}, []string{"--json", "--no-scan", "$DATABASE_URL"}},
		{[]string{"keys", "retire", "--help"}, []string{"--key", "--json", "$OLD_KEY_ID"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := invoke(t, tc.args)
			if r.code != exitOK {
				t.Fatalf("exit %d, want 0\n%s", r.code, r)
			}
			if r.stderr != "" {
				t.Errorf("help wrote to stderr:\n%s", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help on stdout lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// TestUsageErrorsExit64: a command line that cannot be understood exits 64
// (EX_USAGE) with a short message naming the problem and pointing at
// --help, never with the list of every flag; a refused configuration keeps
// exit 78.
func TestUsageErrorsExit64(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		says []string
	}{
		{"no command", nil, []string{"command", "reencrypt --help"}},
		{"unknown command", []string{"rotate"}, []string{`unknown command "rotate"`, "reencrypt --help"}},
		{"unknown flag", []string{"run", "--no-such-flag"}, []string{"--no-such-flag", "reencrypt run --help"}},
		{"flag of another command", []string{"status", "--stop-grace", "5s"}, []string{"--stop-grace", "reencrypt status --help"}},
		{"extra argument", []string{"run", "now"}, []string{`"now"`, "reencrypt run --help"}},
		{"extra argument to status", []string{"status", "--json", "all"}, []string{`"all"`}},
		{"extra argument to keys", []string{"keys", "list", "extra"}, []string{`"extra"`, "reencrypt keys list --help"}},
		{"unknown keys action", []string{"keys", "rotate"}, []string{`"rotate"`, "reencrypt keys --help"}},
		{"missing flag value", []string{"status", "--run"}, []string{"--run", "argument"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := invoke(t, tc.args)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want %d (EX_USAGE)\n%s", r.code, exitUsage, r)
			}
			for _, w := range tc.says {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; n > 3 || strings.Contains(r.stderr, "--batch-size") {
				t.Errorf("usage error is %d lines (or lists the flags); want a short message:\n%s", n, r.stderr)
			}
		})
	}
	// A value the command understands but refuses stays a configuration
	// error.
	if r := invoke(t, []string{"run"}, "BATCH_SIZE=0"); r.code != exitConfig {
		t.Errorf("BATCH_SIZE=0: exit %d, want %d\n%s", r.code, exitConfig, r)
	}
}

// TestFlagsPerCommand: each command lists and accepts only the flags of the
// variables it reads.
func TestFlagsPerCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd           []string
		want, without []string
	}{
		{[]string{"status"}, []string{"--database-url", "--table", "--state-schema", "--json", "--log-format"},
			[]string{"--stop-grace", "--batch-size", "--lease-ttl", "--kms-rate-limit", "--old-key-id", "--metrics-addr"}},
		{[]string{"migrate"}, []string{"--database-url", "--state-schema"}, []string{"--table", "--stop-grace", "--old-key-id"}},
		{[]string{"plan"}, []string{"--old-key-id", "--new-key-id", "--batch-size", "--ranges", "--json"}, []string{"--stop-grace", "--lease-ttl", "--metrics-addr"}},
		{[]string{"verify"}, []string{"--old-key-id", "--sample"}, []string{"--stop-grace", "--batch-size"}},
		{[]string{"keys", "schedule-deletion"}, []string{"--key", "--pending-days", "--old-key-id"}, []string{"--stop-grace", "--batch-size"}},
		{[]string{"pause"}, []string{"--reason", "--wait", "--table"}, []string{"--stop-grace", "--old-key-id"}},
		{[]string{"run"}, []string{"--stop-grace", "--lease-ttl", "--metrics-addr", "--replica-urls", "--kms-adaptive"}, []string{"--json", "--no-scan"}},
	} {
		t.Run(strings.Join(tc.cmd, " "), func(t *testing.T) {
			r := invoke(t, append(tc.cmd, "--help"))
			if r.code != exitOK {
				t.Fatalf("exit %d\n%s", r.code, r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w+" ") {
					t.Errorf("help lacks %s:\n%s", w, r.stdout)
				}
			}
			for _, w := range tc.without {
				if strings.Contains(r.stdout, w+" ") {
					t.Errorf("help lists %s, which this command does not read:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// TestErrorsNameWhatTheUserWrote: a value that does not parse is named by
// the variable or the flag it came from, never by the Go field.
func TestErrorsNameWhatTheUserWrote(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		says string
	}{
		{"variable int", []string{"run"}, []string{"BATCH_SIZE=abc"}, `BATCH_SIZE: "abc" is not an integer`},
		{"variable duration", []string{"run"}, []string{"LEASE_TTL=30"}, `LEASE_TTL: "30" is not a duration`},
		{"variable bool", []string{"run"}, []string{"KMS_ADAPTIVE=yes"}, `KMS_ADAPTIVE: "yes" is not true or false`},
		{"variable float", []string{"plan"}, []string{"KMS_RATE_LIMIT=fast"}, `KMS_RATE_LIMIT: "fast" is not a number`},
		{"flag", []string{"run", "--batch-size=abc"}, nil, `--batch-size: "abc" is not an integer`},
		{"flag over a good variable", []string{"run", "--batch-size", "1e3"}, []string{"BATCH_SIZE=500"}, `--batch-size: "1e3" is not an integer`},
		{"single-dash flag as before", []string{"run", "-batch-size=abc"}, nil, `--batch-size: "abc" is not an integer`},
		{"command flag", []string{"status", "--quarantine=many"}, nil, `--quarantine: "many" is not an integer`},
		{"both", []string{"run", "--lease-ttl=x"}, []string{"BATCH_SIZE=y"}, `BATCH_SIZE: "y" is not an integer`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := invoke(t, tc.args, tc.env...)
			if r.code != exitConfig {
				t.Fatalf("exit %d, want %d\n%s", r.code, exitConfig, r)
			}
			if !strings.Contains(r.stderr, tc.says) {
				t.Errorf("stderr lacks %q:\n%s", tc.says, r.stderr)
			}
			for _, field := range []string{"BatchSize", "LeaseTTL", "KMSAdaptive", "KMSRateLimit", "strconv", "field"} {
				if strings.Contains(r.stderr, field) {
					t.Errorf("stderr names %q:\n%s", field, r.stderr)
				}
			}
		})
	}
}

// TestLogFormat: LOG_FORMAT=text prints a failure as a plain line (real
// newlines, no JSON escapes), json as one JSON record; auto is JSON off a
// terminal (a Job's log) and text on one.
func TestLogFormat(t *testing.T) {
	t.Parallel()
	// status without DATABASE_URL fails after the logger is set up.
	text := invoke(t, []string{"status"}, "LOG_FORMAT=text")
	if text.code != exitConfig {
		t.Fatalf("exit %d, want %d\n%s", text.code, exitConfig, text)
	}
	if !strings.HasPrefix(text.stderr, "reencrypt status: DATABASE_URL is required") || strings.Contains(text.stderr, "{") {
		t.Errorf("LOG_FORMAT=text: want a plain line starting with the command and the error:\n%s", text.stderr)
	}
	for _, env := range [][]string{{"LOG_FORMAT=json"}, nil} {
		r := invoke(t, []string{"status"}, env...)
		var rec map[string]any
		if err := json.Unmarshal([]byte(strings.TrimSpace(r.stderr)), &rec); err != nil || rec["err"] != "DATABASE_URL is required" {
			t.Errorf("%v off a terminal: want one JSON record with err: %v\n%s", env, err, r.stderr)
		}
	}
	if r := invoke(t, []string{"status"}, "LOG_FORMAT=xml"); r.code != exitConfig || !strings.Contains(r.stderr, "LOG_FORMAT") {
		t.Errorf("LOG_FORMAT=xml: exit %d, want %d naming LOG_FORMAT\n%s", r.code, exitConfig, r)
	}

	// On a terminal (a pseudo-terminal's follower end as stderr), auto is text.
	pty := openPTY(t)
	var stdout bytes.Buffer
	code := run(context.Background(), []string{"status"}, &stdout, pty.follower, map[string]string{})
	if code != exitConfig {
		t.Fatalf("on a terminal: exit %d, want %d", code, exitConfig)
	}
	pty.follower.Close()
	got := pty.read(t)
	if !strings.Contains(got, "reencrypt status: DATABASE_URL is required") || strings.Contains(got, `"level"`) {
		t.Errorf("auto on a terminal: want the plain line, got:\n%s", got)
	}
}

type ptyPair struct{ leader, follower *os.File }

// openPTY opens a pseudo-terminal pair (Linux /dev/ptmx).
func openPTY(t *testing.T) *ptyPair {
	t.Helper()
	leader, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	t.Cleanup(func() { leader.Close() })
	fd := int(leader.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	follower, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty follower: %v", err)
	}
	t.Cleanup(func() { follower.Close() })
	return &ptyPair{leader: leader, follower: follower}
}

// read returns what was written to the follower (closed by then): reading
// the leader ends in EIO once the follower is closed and drained.
func (p *ptyPair) read(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := p.leader.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return strings.ReplaceAll(b.String(), "\r\n", "\n")
}

// TestCompletion: `reencrypt completion bash|zsh|fish` prints a script for
// that shell, and the completions it asks the binary for are each
// command's own flags.
func TestCompletion(t *testing.T) {
	t.Parallel()
	for shell, want := range map[string]string{
		"bash": "complete -o default -F __start_reencrypt reencrypt",
		"zsh":  "#compdef reencrypt",
		"fish": "complete -c reencrypt",
	} {
		r := invoke(t, []string{"completion", shell})
		if r.code != exitOK || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, want 0 and a script with %q\n%.400s", shell, r.code, want, r.stdout)
		}
	}
	// What the scripts run: `reencrypt __complete <words>`.
	r := invoke(t, []string{"__complete", "status", "--"})
	if r.code != exitOK || !strings.Contains(r.stdout, "--no-scan") || !strings.Contains(r.stdout, "--database-url") ||
		strings.Contains(r.stdout, "--stop-grace") {
		t.Errorf("completing `status --`: want --no-scan and --database-url, not --stop-grace; exit %d\n%s", r.code, r.stdout)
	}
	r = invoke(t, []string{"__complete", "keys", ""})
	for _, w := range []string{"list", "begin", "retire", "schedule-deletion"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("completing `keys `: lacks %s\n%s", w, r.stdout)
		}
	}
	r = invoke(t, []string{"__complete", "run", "--log-format", ""})
	if !strings.Contains(r.stdout, "text") || !strings.Contains(r.stdout, "json") {
		t.Errorf("completing --log-format: want text and json\n%s", r.stdout)
	}
}
