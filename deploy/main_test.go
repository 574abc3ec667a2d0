package deploy

import (
	"testing"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

// TestMain stops the Postgres and KMS emulator that the metrics test starts
// (testbed's shared servers) and fails on leaked goroutines.
func TestMain(m *testing.M) { testbed.Main(m) }
