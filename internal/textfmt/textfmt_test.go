package textfmt

import "testing"

func TestNum(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := Num(n); got != want {
			t.Errorf("Num(%d) = %q, want %q", n, got, want)
		}
	}
	if got := Classes(map[string]int64{"b": 1000, "a": 2}); got != "a 2, b 1,000" {
		t.Errorf("Classes = %q", got)
	}
}
