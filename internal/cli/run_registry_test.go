package cli

import (
	"strings"
	"testing"
)

// TestRunWarnsWithoutKeysBegin: the runbook has the operator record the
// rotation in the key registry (`keys begin`: OLD rotating, NEW active)
// before the Job runs. run does not refuse without it, but says so, in its
// log and again after its summary, and is quiet once the registry agrees.
func TestRunWarnsWithoutKeysBegin(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(50, o.Old, 1)

	for _, tc := range []struct {
		name    string
		prepare func()
		says    string
		warn    bool
	}{
		{name: "no registry", prepare: func() {}, says: "does not exist", warn: true},
		{name: "registry without this rotation", prepare: func() {
			o.exec(`CREATE TABLE public.token_encryption_keys (key_id text PRIMARY KEY, key_version int NOT NULL,
				status text NOT NULL, algorithm text NOT NULL, provider text NOT NULL, retired_at timestamptz)`)
			o.exec(`INSERT INTO public.token_encryption_keys VALUES ($1, 1, 'active', 'AES-256-GCM', 'aws-kms', NULL)`, o.Old.ARN)
		}, says: "OLD is active, NEW is not listed", warn: true},
		{name: "after keys begin", prepare: func() { o.mustCode(o.cmd([]string{"keys", "begin"}), exitOK) }},
	} {
		tc.prepare()
		r := o.cmd([]string{"run"})
		o.mustCode(r, exitOK)
		var records []map[string]any
		for _, rec := range opLogs(r.stderr) {
			if rec["level"] == "WARN" && strings.Contains(rec["msg"].(string), "key registry") {
				records = append(records, rec)
			}
		}
		switch {
		case !tc.warn && len(records) > 0:
			t.Errorf("%s: run warned about the registry:\n%s", tc.name, r.stderr)
		case tc.warn && len(records) != 2:
			t.Errorf("%s: got %d registry warnings, want 2 (at the start and after the summary):\n%s", tc.name, len(records), r.stderr)
		case tc.warn:
			for _, rec := range records {
				if s, _ := rec["registry"].(string); !strings.Contains(s, tc.says) || !strings.Contains(rec["msg"].(string), "keys begin") {
					t.Errorf("%s: warning %v does not say %q and name `keys begin`", tc.name, rec, tc.says)
				}
			}
		}
	}
}
