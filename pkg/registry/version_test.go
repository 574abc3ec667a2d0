package registry_test

import (
	"testing"

	"github.com/reencrypt/reencrypt/pkg/registry"
)

// TestNextVersion: the next key_version continues the existing pattern.
func TestNextVersion(t *testing.T) {
	cases := []struct {
		versions []string
		text     bool
		want     string
	}{
		{nil, false, "1"},
		{nil, true, "v1"},
		{[]string{"1", "2"}, false, "3"},
		{[]string{"7"}, true, "8"},
		{[]string{"v1"}, true, "v2"},
		{[]string{"v9", "v10"}, true, "v11"},
		{[]string{"legacy", "v2"}, true, "v3"},
		{[]string{"key-3", "v1"}, true, "key-4"},
		{[]string{"legacy"}, true, "v1"},
	}
	for _, c := range cases {
		if got := registry.NextVersion(c.versions, c.text); got != c.want {
			t.Errorf("NextVersion(%q, text %v) = %q, want %q", c.versions, c.text, got, c.want)
		}
	}
}
