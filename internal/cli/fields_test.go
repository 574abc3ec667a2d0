package cli

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/config"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// TestEveryFieldHasAVariable: each field the engine can name in a
// FieldError maps to a variable the command reads.
func TestEveryFieldHasAVariable(t *testing.T) {
	t.Parallel()
	vars := map[string]bool{}
	for _, v := range config.Variables() {
		vars[v.Name] = true
	}
	for _, f := range batch.Fields() {
		if name, ok := fieldVariables[f]; !ok || !vars[name] {
			t.Errorf("field %q: variable %q, want one of config.Variables()", f, name)
		}
	}
}

// TestNameFields: a FieldError from the engine, bare or wrapped by the
// command, is shown with the variables to fix, and keeps its class.
func TestNameFields(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
		is   error
		code int
	}{
		{&batch.FieldError{Fields: []batch.Field{batch.FieldOldKey, batch.FieldNewKey},
			Err: batch.ConfigErrorf(`"alias/a" and "alias/b" are the same KMS key k: nothing to rotate`)},
			`OLD_KEY_ID, NEW_KEY_ID: "alias/a" and "alias/b" are the same KMS key k: nothing to rotate`, batch.ErrConfig, exitConfig},
		{fmt.Errorf("plan: the run would refuse to start: %w", &batch.FieldError{Fields: []batch.Field{batch.FieldDatabase},
			Err: batch.Transient(errors.New("cannot reach the database: dial tcp: connection refused"))}),
			"plan: the run would refuse to start: DATABASE_URL: cannot reach the database: dial tcp: connection refused", batch.ErrTransient, exitRetry},
		{&batch.FieldError{Fields: []batch.Field{batch.FieldNewKey},
			Err: fmt.Errorf(`"alias/x": %w`, &kmsclient.Error{Op: "DescribeKey", Code: "NotFoundException", Err: errors.New("no such alias")})},
			`NEW_KEY_ID: "alias/x": kms DescribeKey`, kmsclient.ErrKeyUnusable, exitKeyUnusable},
		{errors.New("not a field error"), "not a field error", nil, exitInternal},
	} {
		got := nameFields(tc.err)
		if !strings.HasPrefix(got.Error(), tc.want) {
			t.Errorf("nameFields(%q) = %q, want it to start with %q", tc.err, got, tc.want)
		}
		if tc.is != nil && !errors.Is(got, tc.is) {
			t.Errorf("nameFields(%q) no longer matches %v", tc.err, tc.is)
		}
		if c := exitCode(got); c != tc.code {
			t.Errorf("exitCode(nameFields(%q)) = %d, want %d", tc.err, c, tc.code)
		}
	}
}
