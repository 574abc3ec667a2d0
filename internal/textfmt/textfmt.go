// Package textfmt formats counts for people, the same way in every command
// and in the reports the commands print (verify's check lines).
package textfmt

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Num formats an integer with thousands separators: 1234567 → "1,234,567".
func Num(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// Classes lists counts by class in class order: "auth_failed 2, null_token 1".
func Classes(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	parts := make([]string, 0, len(m))
	for _, k := range SortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %s", k, Num(m[k])))
	}
	return strings.Join(parts, ", ")
}

// SortedKeys is m's keys in order.
func SortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
