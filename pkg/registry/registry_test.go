package registry_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/registry"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func setup(t *testing.T) (*fixture.Env, *registry.Registry, *tokentable.Table) {
	t.Helper()
	e := fixture.New(t, "uuid")
	tbl, err := tokentable.Inspect(context.Background(), e.DB, tokentable.Spec{Schema: "public", Name: "payment_methods",
		IDColumn: "id", TokenColumn: "encrypted_token", AuditTable: "payment_method_audit", AuditIDColumn: "payment_method_id"})
	if err != nil {
		t.Fatal(err)
	}
	return e, registry.New(e.DB, "public"), tbl
}

// TestBeginConcurrently: two operators beginning the same rotation at once
// both succeed, exactly one of them changes the registry, and the table
// holds one active key (also enforced by a unique index).
func TestBeginConcurrently(t *testing.T) {
	e, reg, _ := setup(t)
	ctx := context.Background()
	old, nk := registry.Ref{ARN: e.Old.ARN, Alias: "alias/a"}, registry.Ref{ARN: e.New.ARN}
	var wg sync.WaitGroup
	changed := make([]bool, 4)
	errs := make([]error, 4)
	for i := range changed {
		wg.Go(func() { changed[i], errs[i] = reg.Begin(ctx, old, nk) })
	}
	wg.Wait()
	n := 0
	for i := range changed {
		if errs[i] != nil {
			t.Fatalf("begin %d: %v", i, errs[i])
		}
		if changed[i] {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d of 4 concurrent begins changed the registry, want 1", n)
	}
	keys, exists, err := reg.List(ctx)
	if err != nil || !exists || len(keys) != 2 {
		t.Fatalf("list: %v, %v, %v", keys, exists, err)
	}
	if keys[0].KeyID != old.ARN || keys[0].Status != registry.StatusRotating || keys[0].Alias != "alias/a" ||
		keys[1].KeyID != nk.ARN || keys[1].Status != registry.StatusActive || keys[1].Alias != "" {
		t.Errorf("registry after begin: %+v", keys)
	}
	_, err = e.DB.Exec(ctx, `UPDATE token_encryption_keys SET status = 'active' WHERE key_id = $1`, old.ARN)
	if err == nil {
		t.Error("the registry accepted a second active key")
	}
	if _, err := reg.Begin(ctx, old, old); !errors.Is(err, registry.ErrRefused) {
		t.Errorf("begin with one key twice: %v, want ErrRefused", err)
	}
}

// TestRetireAndDeletionRefusals: the registry itself (not only the command)
// refuses to retire or delete a key while a row is under it.
func TestRetireAndDeletionRefusals(t *testing.T) {
	e, reg, tbl := setup(t)
	ctx := context.Background()
	e.Seed(25, e.Old, 5)
	if _, _, err := reg.Retire(ctx, e.Old.ARN, tbl); !errors.Is(err, registry.ErrRefused) {
		t.Errorf("retire before the registry exists: %v, want ErrRefused", err)
	}
	if _, exists, _ := reg.List(ctx); exists {
		t.Error("a refused retire created the registry")
	}
	if _, err := reg.Begin(ctx, registry.Ref{ARN: e.Old.ARN}, registry.Ref{ARN: e.New.ARN}); err != nil {
		t.Fatal(err)
	}
	_, _, err := reg.Retire(ctx, e.Old.ARN, tbl)
	var inUse *registry.InUseError
	if !errors.As(err, &inUse) || !errors.Is(err, registry.ErrInUse) || inUse.Rows != 25 || inUse.KeyARN != e.Old.ARN {
		t.Errorf("retire a key 25 rows are under: %v", err)
	}
	k, ok, err := reg.Get(ctx, e.Old.ARN)
	if err != nil || !ok || k.Status != registry.StatusRotating || k.RetiredAt != nil {
		t.Errorf("a refused retire changed the key: %+v %v", k, err)
	}
	for _, days := range []int{6, 31} {
		if _, _, err := reg.ScheduleDeletion(ctx, e.API, e.Old.ARN, days, tbl); !errors.Is(err, registry.ErrRefused) {
			t.Errorf("pending days %d: %v, want ErrRefused", days, err)
		}
	}
	if _, _, err := reg.ScheduleDeletion(ctx, e.API, e.Old.ARN, 7, tbl); !errors.Is(err, registry.ErrRefused) {
		t.Errorf("delete a rotating key: %v, want ErrRefused", err)
	}
	// Retire once no row is under it; deletion is still refused if one
	// comes back.
	if _, err := e.DB.Exec(ctx, `DELETE FROM payment_methods`); err != nil {
		t.Fatal(err)
	}
	if _, already, err := reg.Retire(ctx, e.Old.ARN, tbl); err != nil || already {
		t.Fatalf("retire an unused key: already %v, %v", already, err)
	}
	e.Seed(1, e.Old, 1)
	if _, _, err := reg.ScheduleDeletion(ctx, e.API, e.Old.ARN, 7, tbl); !errors.Is(err, registry.ErrInUse) {
		t.Errorf("delete a key a row is under: %v, want ErrInUse", err)
	}
}

// lateWriter is KMS that lets the live API write a row under the key while
// ScheduleKeyDeletion is in flight (a writer that takes no lock).
type lateWriter struct {
	kmsclient.KMS
	write func()
}

func (l lateWriter) ScheduleKeyDeletion(ctx context.Context, in *kms.ScheduleKeyDeletionInput, optFns ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error) {
	l.write()
	return l.KMS.ScheduleKeyDeletion(ctx, in, optFns...)
}

// TestScheduleDeletionCancelledWhenRowsAppear: schedule-deletion counts
// again after the KMS call; a row written meanwhile makes it cancel the
// deletion (the key enabled again) and leave the registry as it was.
func TestScheduleDeletionCancelledWhenRowsAppear(t *testing.T) {
	e, reg, tbl := setup(t)
	ctx := context.Background()
	if _, err := reg.Begin(ctx, registry.Ref{ARN: e.Old.ARN}, registry.Ref{ARN: e.New.ARN}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := reg.Retire(ctx, e.Old.ARN, tbl); err != nil {
		t.Fatal(err)
	}
	api := lateWriter{KMS: e.API, write: func() { e.Seed(1, e.Old, 1) }}
	_, _, err := reg.ScheduleDeletion(ctx, api, e.Old.ARN, 7, tbl)
	if !errors.Is(err, registry.ErrInUse) || !strings.Contains(err.Error(), "cancelled") {
		t.Errorf("rows appeared during ScheduleKeyDeletion: %v, want ErrInUse saying the deletion is cancelled", err)
	}
	out, derr := e.API.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(e.Old.ARN)})
	if derr != nil {
		t.Fatal(derr)
	}
	if s := out.KeyMetadata.KeyState; s != types.KeyStateEnabled {
		t.Errorf("after the cancelled deletion the key is %s, want Enabled", s)
	}
	k, _, gerr := reg.Get(ctx, e.Old.ARN)
	if gerr != nil || k.DeletionDate != nil || k.DeletionScheduledAt != nil || k.Status != registry.StatusRetired {
		t.Errorf("registry after the cancelled deletion: %+v %v", k, gerr)
	}
}
