package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"testing"
)

// TestRDSConnectPolicy: the policy for DATABASE_IAM_AUTH=true lets the Job's
// IRSA role sign in as its own database role on one database and nothing
// else: rds-db:connect only, no wildcard in the database or the user.
func TestRDSConnectPolicy(t *testing.T) {
	b, err := os.ReadFile("iam-policy-rds-connect.json")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Version   string
		Statement []struct {
			Sid, Effect, Action, Resource string
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // no Condition, NotAction, Principal, ...
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if p.Version != "2012-10-17" || len(p.Statement) != 1 {
		t.Fatalf("Version %q, %d statements; want 2012-10-17 and one statement", p.Version, len(p.Statement))
	}
	s := p.Statement[0]
	if s.Effect != "Allow" || s.Action != "rds-db:connect" {
		t.Errorf("Effect %q Action %q, want Allow rds-db:connect", s.Effect, s.Action)
	}
	// dbuser:<DbiResourceId of an instance, or cluster resource id>/<role>,
	// the role being the Job's in docs/privileges.md.
	want := regexp.MustCompile(`^arn:aws:rds-db:(<REGION>|[a-z0-9-]+):(<ACCOUNT_ID>|\d{12}):dbuser:(<DB_RESOURCE_ID>|(db|cluster)-[A-Z0-9]+)/reencrypt_job$`)
	if !want.MatchString(s.Resource) {
		t.Errorf("Resource %q, want it to match %s", s.Resource, want)
	}
}
