package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
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
		{[]string{"version", "extra"}, exitConfig, nil},
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

// TestRunRecordsBuild: a real run records the binary's build (as the binary
// itself reports it) in the runs table and in its process_started event,
// and names it in the start log line.
func TestRunRecordsBuild(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "bigint")
	e.Seed(200, e.Old, 1)

	out, err := exec.Command(reencryptBin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("reencrypt version --json: %v", err)
	}
	var b buildinfo.Info
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("reencrypt version --json: %v in %q", err, out)
	}

	p, code := runCLI(t, cliEnv(e), time.Minute, "run")
	if code != 0 {
		t.Fatalf("run: exit %d; stderr:\n%s", code, tail(p.stderr.String()))
	}
	var first, last, event string
	if err := e.DB.QueryRow(context.Background(), `
		SELECT coalesce(first_build, 'NULL'), coalesce(last_build, 'NULL'),
			(SELECT coalesce(details->>'build', 'NULL') FROM reencrypt.events WHERE event = 'process_started')
		FROM reencrypt.runs`).Scan(&first, &last, &event); err != nil {
		t.Fatal(err)
	}
	want := b.Build()
	t.Logf("recorded build %q", first)
	if first != want || last != want || event != want {
		t.Errorf("first_build %q, last_build %q, process_started build %q; want %q (reencrypt version)", first, last, event, want)
	}

	var start struct {
		Build buildinfo.Info `json:"build"`
	}
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(line, `"msg":"reencrypt run starting"`) {
			if err := json.Unmarshal([]byte(line), &start); err != nil {
				t.Fatalf("start line: %v in %s", err, line)
			}
		}
	}
	if start.Build != b {
		t.Errorf("start line's build %+v, want %+v", start.Build, b)
	}
}
