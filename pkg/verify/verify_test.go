package verify_test

import (
	"context"
	"strings"
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
	"github.com/reencrypt/reencrypt/pkg/verify"
)

// TestRunCountsAndOpens: Run on a table no run touched: rows under NEW are
// opened (one tampered row fails with auth_failed), rows under OLD all
// listed, a row without its audit row is no_audit, and a sample opens only
// its share.
func TestRunCountsAndOpens(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	ctx := context.Background()
	newIDs := e.Seed(30, e.New, 3)
	e.Seed(5, e.Old, 1)
	e.SetToken(newIDs[7], e.Seal(e.New, newIDs[0], []byte("sealed for another row")))
	tbl, err := tokentable.Inspect(ctx, e.DB, e.Spec())
	if err != nil {
		t.Fatal(err)
	}
	opts := verify.Options{Table: tbl, Old: e.Old, New: e.New, Namespace: fixture.Namespace, StateSchema: "reencrypt", MaxFailures: 100}

	r, err := verify.Run(ctx, e.DB, e.Client, opts)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Rows.Total != 35 || r.Rows.UnderNew != 30 || r.Rows.UnderOld != 5 || r.Opened != 29 || r.AuditChecked != 30 {
		t.Errorf("rows %+v, opened %d, audited %d, ok %v; want 35 rows, 30 under NEW, 5 under OLD, 29 opened, 30 audited, not ok",
			r.Rows, r.Opened, r.AuditChecked, r.OK)
	}
	want := map[string]int64{verify.FailUnderOld: 5, verify.FailAuth: 1, verify.FailNoAudit: 30}
	for class, n := range want {
		if r.FailuresByCls[class] != n {
			t.Errorf("failures by class %v, want %v", r.FailuresByCls, want)
			break
		}
	}
	if r.Audit.Checked || !strings.Contains(r.Audit.Note, "no bookkeeping schema") || len(r.Checks) != 5 {
		t.Errorf("audit %+v, %d checks; want not compared (no run recorded), 5 checks", r.Audit, len(r.Checks))
	}

	opts.Sample, opts.SkipAudit = 10, true
	r, err = verify.Run(ctx, e.DB, e.Client, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Opened + r.FailuresByCls[verify.FailAuth]; got != 10 || r.AuditChecked != 0 || r.Rows.UnderNew != 30 {
		t.Errorf("sample: %d rows opened or failed, %d audited, %d under NEW; want 10, 0 (--skip-audit), 30", got, r.AuditChecked, r.Rows.UnderNew)
	}
}
