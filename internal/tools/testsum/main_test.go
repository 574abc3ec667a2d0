package main

import (
	"strings"
	"testing"
)

// ev is one line of `go test -json`.
func ev(action, pkg, test, output string) string {
	q := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, `"`, `\"`), "\n", `\n`) }
	return `{"Action":"` + action + `","Package":"` + pkg + `","Test":"` + q(test) + `","Output":"` + q(output) + `"}` + "\n"
}

func TestSummarize(t *testing.T) {
	const p = "example.com/m/kms"
	passing := ev("run", p, "TestA", "") + ev("output", p, "TestA", "=== RUN   TestA\n") + ev("pass", p, "TestA", "") +
		ev("run", p, "TestB", "") +
		ev("run", p, "TestB/moto", "") +
		ev("output", p, "TestB/moto", "=== RUN   TestB/moto\n") +
		ev("output", p, "TestB/moto", "    kms_test.go:60: moto_server not found on PATH: skipping\n") +
		ev("output", p, "TestB/moto", "--- SKIP: TestB/moto (0.00s)\n") +
		ev("skip", p, "TestB/moto", "") + ev("pass", p, "TestB", "") +
		ev("output", p, "TestC", "    x_test.go:9: no database here\n") + ev("skip", p, "TestC", "")
	failing := ev("output", p, "TestD", "    d_test.go:3: got 1, want 2\n") + ev("fail", p, "TestD", "")

	for _, tc := range []struct {
		name, in string
		code     int
		want     []string
	}{
		{"passing, skips listed with reasons", passing + ev("pass", p, "", ""), 0, []string{
			"ok  \t" + p, "skipped tests:", p + ".TestB/moto: moto_server not found on PATH: skipping",
			p + ".TestC: no database here", "\n2 passed, 0 failed, 1 skipped\n"}},
		{"a failed test", passing + failing + ev("fail", p, "", ""), 1, []string{
			"--- FAIL: TestD", "got 1, want 2", "failed tests:\n  " + p + ".TestD", "\n2 passed, 1 failed, 1 skipped\n"}},
		{"a package that did not build", "# example.com/m/kms\nkms.go:1: syntax error\n" +
			ev("output", p, "", "FAIL\t"+p+" [build failed]\n") + ev("fail", p, "", ""), 1, []string{
			"kms.go:1: syntax error", "FAIL\t" + p, "\n0 passed, 0 failed, 0 skipped\n"}},
		{"no test ran", ev("skip", p, "", ""), 1, []string{"\n0 passed, 0 failed, 0 skipped\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			code := summarize(strings.NewReader(tc.in), &out)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if !strings.HasSuffix(out.String(), " skipped\n") {
				t.Errorf("last line is not the summary:\n%s", out.String())
			}
		})
	}
}
