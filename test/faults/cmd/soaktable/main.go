// Command soaktable reads `go test -v ./test/faults/` output on stdin and
// prints its FIGURE lines as a Markdown table: scenario | figure | expected |
// result | ok. `make soak` pipes the soak run through it.
package main

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/reencrypt/reencrypt/test/faults"
)

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var figs []faults.Figure
	for sc.Scan() {
		if f, ok := faults.ParseFigure(sc.Text()); ok {
			figs = append(figs, f)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "soaktable:", err)
		os.Exit(1)
	}
	if len(figs) == 0 {
		fmt.Fprintln(os.Stderr, "soaktable: no FIGURE line in the input")
		os.Exit(1)
	}
	// Group by scenario (they interleave: the scenarios run in parallel),
	// in the order of their number, keeping each scenario's figures in order.
	num := func(s string) int {
		n, _ := strconv.Atoi(strings.Fields(s + " 0")[0])
		return n
	}
	first := map[string]int{}
	for i, f := range figs {
		if _, ok := first[f.Scenario]; !ok {
			first[f.Scenario] = i
		}
	}
	sort.SliceStable(figs, func(i, j int) bool {
		a, b := figs[i].Scenario, figs[j].Scenario
		if num(a) != num(b) {
			return num(a) < num(b)
		}
		return first[a] < first[b]
	})
	cell := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	fmt.Println("| scenario | figure | expected | result | ok |")
	fmt.Println("|---|---|---|---|---|")
	failed := 0
	for _, f := range figs {
		ok := "yes"
		if !f.OK {
			ok = "**NO**"
			failed++
		}
		fmt.Printf("| %s | %s | %s | %s | %s |\n", cell(f.Scenario), cell(f.Name), cell(f.Expected), cell(f.Result), ok)
	}
	fmt.Printf("\n%d figures, %d out of bounds\n", len(figs), failed)
}
