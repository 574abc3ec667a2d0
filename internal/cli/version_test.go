package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
	"github.com/reencrypt/reencrypt/internal/fixture"
)

// TestVersion: `version`, `version --json` and `--version` answer with this
// build even when the configuration would be refused, and on stdout; extra
// arguments are refused.
func TestVersion(t *testing.T) {
	t.Parallel()
	b := buildinfo.Get()
	broken := map[string]string{"BATCH_SIZE": "abc"} // refused by every other command
	for _, tc := range []struct {
		args []string
		code int
		want []string // on stdout
	}{
		{[]string{"version"}, exitOK, []string{"reencrypt " + b.Version + "\n", "revision:", "go:        " + b.GoVersion}},
		{[]string{"--version"}, exitOK, []string{"reencrypt " + b.Version + " (revision ", b.GoVersion + ")\n"}},
		{[]string{"version", "--json"}, exitOK, []string{`"version":`}},
		{[]string{"version", "extra"}, exitUsage, nil},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr, broken)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			if tc.code != exitOK && stdout.Len() > 0 {
				t.Errorf("refused, yet stdout has %q", stdout.String())
			}
		})
	}

	var stdout bytes.Buffer
	run(context.Background(), []string{"version", "--json"}, &stdout, &bytes.Buffer{}, nil)
	var got buildinfo.Info
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("version --json: %v in %q", err, stdout.String())
	}
	if got != b {
		t.Errorf("version --json = %+v, want %+v", got, b)
	}
}

// TestRunRecordsBuild: a real run records the binary's build in the runs
// table and in its process_started event, and names it in the start log
// line; the binary is stamped with -ldflags -X as the image build stamps it.
// A rerun by another build keeps first_build and moves last_build.
func TestRunRecordsBuild(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "bigint")
	e.Seed(200, e.Old, 1)

	stamped := buildinfo.Info{Version: "v9.8.7", Revision: "0123456789abcdef0123456789abcdef01234567",
		Time: "2026-12-01T10:00:00Z", GoVersion: runtime.Version()}
	bin := filepath.Join(t.TempDir(), "reencrypt-stamped")
	x := func(name, value string) string { return "-X " + buildinfo.Package + "." + name + "=" + value }
	build := exec.Command("go", "build", "-o", bin, "-ldflags",
		strings.Join([]string{x("version", stamped.Version), x("revision", stamped.Revision), x("commitTime", stamped.Time)}, " "),
		"../../cmd/reencrypt")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -ldflags -X ...: %v\n%s", err, out)
	}
	if out := runBin(t, bin, nil, "--version"); !strings.Contains(out, "reencrypt v9.8.7 (revision "+stamped.Revision+", ") {
		t.Errorf("--version of the stamped binary: %q", out)
	}

	env := cliEnv(e)
	stderr := runBin(t, bin, env, "run")
	first, last, events := recordedBuilds(t, e)
	if want := stamped.Build(); first != want || last != want || events != want {
		t.Errorf("first_build %q, last_build %q, process_started builds %q; want %q", first, last, events, want)
	}
	var start struct {
		Build buildinfo.Info `json:"build"`
	}
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, `"msg":"reencrypt run starting"`) {
			if err := json.Unmarshal([]byte(line), &start); err != nil {
				t.Fatalf("start line: %v in %s", err, line)
			}
		}
	}
	if start.Build != stamped {
		t.Errorf("start line's build %+v, want %+v", start.Build, stamped)
	}

	// A rerun by another build (the tests' own binary, however stamped).
	var other buildinfo.Info
	if err := json.Unmarshal([]byte(runBin(t, reencryptBin, nil, "version", "--json")), &other); err != nil {
		t.Fatal(err)
	}
	runBin(t, reencryptBin, env, "run")
	first, last, events = recordedBuilds(t, e)
	if first != stamped.Build() || last != other.Build() || events != stamped.Build()+","+other.Build() {
		t.Errorf("after a rerun by %q: first_build %q, last_build %q, process_started builds %q; want %q, %q, both in order",
			other.Build(), first, last, events, stamped.Build(), other.Build())
	}
}

// runBin runs bin to its end with env (nil: inherited) and returns its
// stderr for `run` (the log lines), its stdout otherwise; any exit but 0
// fails the test.
func runBin(t *testing.T, bin string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v; stderr:\n%s", filepath.Base(bin), args, err, tail(stderr.String()))
	}
	if args[0] == "run" {
		return stderr.String()
	}
	return stdout.String()
}

// recordedBuilds reads the one run's builds and its process_started events'
// builds, in order.
func recordedBuilds(t *testing.T, e *fixture.Env) (first, last, events string) {
	t.Helper()
	if err := e.DB.QueryRow(context.Background(), `
		SELECT coalesce(first_build, 'NULL'), coalesce(last_build, 'NULL'),
			(SELECT string_agg(coalesce(details->>'build', 'NULL'), ',' ORDER BY id)
			 FROM reencrypt.events WHERE event = 'process_started')
		FROM reencrypt.runs`).Scan(&first, &last, &events); err != nil {
		t.Fatal(err)
	}
	return first, last, events
}
