package cli

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestShippedBinaryDeps: the binary links none of the test bed, the fault
// proxy, the seeder or the fixture, directly or through another package
// (depguard in .golangci.yaml checks direct imports; this the whole graph).
func TestShippedBinaryDeps(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "../../cmd/reencrypt").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/reencrypt/reencrypt/internal/cli") {
		t.Fatalf("go list -deps does not list internal/cli; is this the shipped binary?\n%s", out)
	}
	for _, p := range []string{"internal/testbed", "internal/kmsfault", "internal/seed", "internal/fixture"} {
		if slices.Contains(deps, "github.com/reencrypt/reencrypt/"+p) {
			t.Errorf("cmd/reencrypt links %s, a test-only package", p)
		}
	}
}
