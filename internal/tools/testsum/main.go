// Command testsum reads `go test -json` on stdin and prints what a person
// needs: each package's result, the full output of every failed test, and a
// last line "N passed, N failed, N skipped". It exits 1 when anything failed,
// including a package that did not build.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
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

func main() {
	var passed, failed, skipped int
	outputs := map[string]*strings.Builder{} // package/test → output
	var failedNames []string
	pkgFailed := false
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil {
			fmt.Println(string(line)) // build errors arrive as plain text
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
				fmt.Printf("%s\t%s\t%.1fs\n", status, ev.Package, ev.Elapsed)
				if ev.Action == "fail" {
					pkgFailed = true
					if b := outputs[key]; b != nil {
						fmt.Print(b.String())
					}
				}
				delete(outputs, key)
				continue
			}
			if strings.Contains(ev.Test, "/") { // subtests are counted through their parents
				if ev.Action == "fail" {
					failedNames = append(failedNames, ev.Package+"."+ev.Test)
					if b := outputs[key]; b != nil {
						fmt.Printf("--- FAIL: %s (%s)\n%s", ev.Test, ev.Package, b.String())
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
					fmt.Printf("--- FAIL: %s (%s)\n%s", ev.Test, ev.Package, b.String())
				}
			}
			delete(outputs, key)
		}
	}
	if len(failedNames) > 0 {
		sort.Strings(failedNames)
		fmt.Println("\nfailed tests:")
		for _, n := range failedNames {
			fmt.Println("  " + n)
		}
	}
	fmt.Printf("\n%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFailed || passed == 0 {
		os.Exit(1)
	}
}
