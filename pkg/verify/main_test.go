package verify_test

import (
	"testing"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

func TestMain(m *testing.M) { testbed.Main(m) }
