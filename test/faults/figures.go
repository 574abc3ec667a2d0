package faults

import (
	"fmt"
	"regexp"
	"strconv"
)

// Figure is one number a fault scenario is judged on: what was measured,
// what the issue expects, what the run gave, and whether that passes.
type Figure struct {
	Scenario string
	Name     string
	Expected string
	Result   string
	OK       bool
}

// String is the line the tests log and ParseFigure reads back.
func (f Figure) String() string {
	return fmt.Sprintf("FIGURE scenario=%q figure=%q expected=%q result=%q ok=%t",
		f.Scenario, f.Name, f.Expected, f.Result, f.OK)
}

var figureRe = regexp.MustCompile(`FIGURE scenario=("(?:[^"\\]|\\.)*") figure=("(?:[^"\\]|\\.)*") ` +
	`expected=("(?:[^"\\]|\\.)*") result=("(?:[^"\\]|\\.)*") ok=(true|false)`)

// ParseFigure finds a figure line anywhere in line (go test -v prefixes it
// with the file and line of the t.Logf call).
func ParseFigure(line string) (Figure, bool) {
	m := figureRe.FindStringSubmatch(line)
	if m == nil {
		return Figure{}, false
	}
	var f Figure
	for i, dst := range []*string{&f.Scenario, &f.Name, &f.Expected, &f.Result} {
		s, err := strconv.Unquote(m[i+1])
		if err != nil {
			return Figure{}, false
		}
		*dst = s
	}
	f.OK = m[5] == "true"
	return f, true
}
