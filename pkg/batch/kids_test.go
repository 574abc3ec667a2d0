package batch_test

import (
	"strings"
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/envelope"
)

// TestKidFormsOfOldAreRotated: a writer that recorded OLD's key id, alias
// name or alias ARN as the kid still wrapped the data key under OLD. Such
// tokens are under OLD: the engine rotates them (before, it counted them as
// "another key" and exited 0 with them left under OLD, and the key guard
// then refused to retire OLD forever). A kid KMS does not know stays
// another key's.
func TestKidFormsOfOldAreRotated(t *testing.T) {
	for _, mode := range []batch.Mode{batch.Rekey, batch.Rewrap} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			e := fixture.New(t, "uuid")
			ids := e.Seed(200, e.Old, 1)
			aliasARN := strings.Replace(e.Old.ARN, ":key/"+e.Old.ID, ":"+e.Old.Alias(), 1)
			kids := map[string]string{ids[0]: e.Old.ID, ids[1]: e.Old.Alias(), ids[2]: aliasARN, ids[3]: "alias/no-such-key"}
			for id, kid := range kids {
				env, err := envelope.Parse(e.Token(id))
				if err != nil {
					t.Fatal(err)
				}
				env.KID = kid
				b, err := env.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				e.SetToken(id, b)
			}
			sum, err := rotate(t, e, runOpts{mode: mode, batch: 50})
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got := sum.Process; got.Rotated != 199 || got.OtherKey != 1 {
				t.Errorf("rotated %d, other key %d; want 199 (the key id, alias and alias ARN kids included) and 1", got.Rotated, got.OtherKey)
			}
			if n := e.AssertAll(fixture.Check{Under: e.New, Skip: map[string]bool{ids[3]: true}}); n != 199 {
				t.Errorf("checked %d rows, want 199", n)
			}
		})
	}
}
