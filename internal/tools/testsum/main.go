// Command testsum reads `go test -json` on stdin and prints what a person
// needs: each package's result, the full output of every failed test, each
// skipped test (subtests too) with its reason, and a last line
// "N passed, N failed, N skipped" counting top-level tests. It exits 1 when
// anything failed, including a package that did not build, or when no test
// passed.
//
// gotest.tools/gotestsum was evaluated as a replacement (see the commit that
// added this paragraph): its summary is "DONE N tests, N skipped, N failures"
// counting subtests, printing our line needs a shell --post-run-command, and
// it exits 0 when no test ran; this file is the whole of what the project
// needs, with no dependency.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() { os.Exit(summarize(os.Stdin, os.Stdout)) }

// summarize prints the summary of the `go test -json` stream in to out and
// returns the exit code.
func summarize(in io.Reader, out io.Writer) int {
	var passed, failed, skipped int
	outputs := map[string]*strings.Builder{} // package/test → output
	var failedNames, skippedLines []string
	pkgFailed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil {
			fmt.Fprintln(out, string(line)) // build errors arrive as plain text
			continue
		}
		key := ev.Package + " " + ev.Test
		switch ev.Action {
		case "output":
			b := outputs[key]
			if b == nil {
				b = &strings.Builder{}
				outputs[key] = b
			}
			if b.Len() < 256<<10 {
				b.WriteString(ev.Output)
			}
		case "pass", "fail", "skip":
			if ev.Test == "" {
				status := map[string]string{"pass": "ok  ", "fail": "FAIL", "skip": "?   "}[ev.Action]
				fmt.Fprintf(out, "%s\t%s\t%.1fs\n", status, ev.Package, ev.Elapsed)
				if ev.Action == "fail" {
					pkgFailed = true
					if b := outputs[key]; b != nil {
						fmt.Fprint(out, b.String())
					}
				}
				delete(outputs, key)
				continue
			}
			if ev.Action == "skip" {
				skippedLines = append(skippedLines, ev.Package+"."+ev.Test+skipReason(outputs[key]))
			}
			if strings.Contains(ev.Test, "/") { // subtests are counted through their parents
				if ev.Action == "fail" {
					failedNames = append(failedNames, ev.Package+"."+ev.Test)
					if b := outputs[key]; b != nil {
						fmt.Fprintf(out, "--- FAIL: %s (%s)\n%s", ev.Test, ev.Package, b.String())
					}
				}
				delete(outputs, key)
				continue
			}
			switch ev.Action {
			case "pass":
				passed++
			case "skip":
				skipped++
			case "fail":
				failed++
				failedNames = append(failedNames, ev.Package+"."+ev.Test)
				if b := outputs[key]; b != nil {
					fmt.Fprintf(out, "--- FAIL: %s (%s)\n%s", ev.Test, ev.Package, b.String())
				}
			}
			delete(outputs, key)
		}
	}
	if len(skippedLines) > 0 {
		sort.Strings(skippedLines)
		fmt.Fprintln(out, "\nskipped tests:")
		for _, n := range skippedLines {
			fmt.Fprintln(out, "  "+n)
		}
	}
	if len(failedNames) > 0 {
		sort.Strings(failedNames)
		fmt.Fprintln(out, "\nfailed tests:")
		for _, n := range failedNames {
			fmt.Fprintln(out, "  "+n)
		}
	}
	fmt.Fprintf(out, "\n%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFailed || passed == 0 {
		return 1
	}
	return 0
}

// skipReason is ": " and the last line a skipped test logged before its
// "--- SKIP" line (t.Skip's message, without its file:line), or "".
func skipReason(b *strings.Builder) string {
	if b == nil {
		return ""
	}
	var last string
	for _, l := range strings.Split(b.String(), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		last = l
	}
	if _, msg, ok := strings.Cut(last, ": "); ok && strings.Contains(last[:len(last)-len(msg)], ".go:") {
		last = msg
	}
	if last == "" {
		return ""
	}
	return ": " + last
}
