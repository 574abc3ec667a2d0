package batch_test

import (
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
)

func TestSmoke(t *testing.T) {
	e := fixture.New(t, "uuid")
	e.Seed(3000, e.Old, 1)
	sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 500})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("%+v", sum)
	e.AssertAll(fixture.Check{Under: e.New})
}
