package tokentable_test

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestAuditDetailsKeys: the details the engine writes have exactly the keys
// verify reads by name.
func TestAuditDetailsKeys(t *testing.T) {
	var got map[string]any
	if err := json.Unmarshal(tokentable.AuditDetails{RunID: "r", Pass: 2, Mode: "rekey", OldKeyARN: "o", NewKeyARN: "n"}.JSON(), &got); err != nil {
		t.Fatal(err)
	}
	want := []string{tokentable.DetailMode, tokentable.DetailNewKeyARN, tokentable.DetailOldKeyARN, tokentable.DetailPass, tokentable.DetailRunID}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
		t.Errorf("details keys %v, want %v", keys, want)
	}
	if got[tokentable.DetailPass] != 2.0 || got[tokentable.DetailRunID] != "r" {
		t.Errorf("details %v: want pass 2 and run_id r", got)
	}
}
