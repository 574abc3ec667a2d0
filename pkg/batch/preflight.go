package batch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Checked is what Preflight established: the table as it is, both keys
// resolved to ARNs, and how long one KMS call takes from here.
type Checked struct {
	Table      *tokentable.Table
	Old, New   kmsclient.Key
	KMSLatency time.Duration // mean of the round trip's two calls
}

// PreflightOptions is what Preflight checks: the table, the two keys as
// configured (a key id, an ARN or an alias each), the envelope namespace and
// the rotation mode.
type PreflightOptions struct {
	Spec      tokentable.Spec
	OldRef    string // OLD_KEY_ID
	NewRef    string // NEW_KEY_ID
	Namespace string
	Mode      Mode
}

// Preflight checks everything that can be checked before the first write,
// as the runbook's "test new key" step does, and more: the table and audit
// table exist with usable columns; OLD and NEW resolve to two different,
// enabled, symmetric keys; a seal/open round trip under NEW works; and
// sampled rows under OLD actually open with this namespace (rekey) or are
// re-encrypted by KMS with it (rewrap). It writes nothing. When the only
// refusal is a NULL-able id column, it returns the Checked along with the
// *tokentable.NullableIDError. A refusal a setting explains is a *FieldError naming it
// (the command names the variable to fix).
func Preflight(ctx context.Context, db DB, kc *kmsclient.Client, o PreflightOptions) (*Checked, error) {
	spec, oldRef, newRef, namespace, mode := o.Spec, o.OldRef, o.NewRef, o.Namespace, o.Mode
	if oldRef == "" || newRef == "" {
		var missing []Field
		if oldRef == "" {
			missing = append(missing, FieldOldKey)
		}
		if newRef == "" {
			missing = append(missing, FieldNewKey)
		}
		return nil, fieldError(configErrorf("required"), missing...)
	}
	// The probes go around the data-key cache: a sampled key met again by
	// the run would otherwise look shared and stay in memory.
	kc = kmsclient.NewClient(kc.API(), namespace, nil)
	if err := db.QueryRow(ctx, `SELECT 1`).Scan(new(int)); err != nil {
		return nil, fieldError(transient(fmt.Errorf("cannot reach the database: %w", err)), FieldDatabase)
	}
	t, err := tokentable.Inspect(ctx, db, spec)
	var nullable *tokentable.NullableIDError
	if err != nil && !errors.As(err, &nullable) {
		return nil, err
	}
	nullableErr := err // nil, or the NULL-able id column's refusal, naming its field
	c := &Checked{Table: t}
	if c.Old, err = resolve(ctx, kc, oldRef); err != nil {
		return nil, fieldError(err, FieldOldKey)
	}
	if c.New, err = resolve(ctx, kc, newRef); err != nil {
		return nil, fieldError(err, FieldNewKey)
	}
	if c.Old.ARN == c.New.ARN {
		return nil, fieldError(configErrorf("%q and %q are the same KMS key %s: nothing to rotate", oldRef, newRef, c.Old.ARN),
			FieldOldKey, FieldNewKey)
	}
	if c.KMSLatency, err = RoundTrip(ctx, kc, c.New.ARN, namespace); err != nil {
		if IsTransient(err) {
			return nil, err
		}
		return nil, fieldError(err, FieldNewKey)
	}
	check := sampleOld
	if mode == Rewrap {
		check = sampleRewrap
	}
	if err := check(ctx, sampling{db: db, kc: kc, t: t, oldARN: c.Old.ARN, newARN: c.New.ARN, ns: namespace}); err != nil {
		if errors.Is(err, ErrConfig) {
			return nil, fieldError(err, FieldNamespace, FieldOldKey)
		}
		return nil, err
	}
	if nullable != nil {
		return c, nullableErr // every other check passed: plan may still count the table
	}
	return c, nil
}

// resolve is kmsclient.ResolveKey (which classifies the failure: key or
// transient) and the engine's own demand that the key be usable.
func resolve(ctx context.Context, kc *kmsclient.Client, ref string) (kmsclient.Key, error) {
	k, err := kmsclient.ResolveKey(ctx, kc.API(), ref)
	if err != nil {
		return k, fmt.Errorf("%q: %w", ref, err)
	}
	return k, k.Usable()
}

// RoundTrip generates a data key under keyARN, seals a probe with it, unwraps
// the key again and opens the probe: the runbook's "test new key" step. It
// returns the mean latency of the two KMS calls.
func RoundTrip(ctx context.Context, kc *kmsclient.Client, keyARN, namespace string) (time.Duration, error) {
	start := time.Now()
	dek, wdek, err := kc.GenerateDataKey(ctx, keyARN)
	if err != nil {
		return 0, keyOrTransient(fmt.Errorf("round trip on the new key: %w", err))
	}
	probe := []byte("reencrypt preflight probe")
	env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: keyARN, WDEK: wdek, Namespace: namespace, RowID: "preflight"}, probe)
	dek.Zero()
	if err != nil {
		return 0, fmt.Errorf("round trip on the new key: seal: %w", err)
	}
	again, err := kc.Decrypt(ctx, keyARN, wdek)
	if err != nil {
		return 0, keyOrTransient(fmt.Errorf("round trip on the new key: %w", err))
	}
	defer again.Zero()
	got, err := envelope.Open(env, again, namespace, "preflight")
	if err != nil || !bytes.Equal(got, probe) {
		return 0, configErrorf("round trip on the new key %s failed: a probe sealed under it does not open", keyARN)
	}
	return time.Since(start) / 2, nil
}

func keyOrTransient(err error) error {
	if errors.Is(err, kmsclient.ErrKeyUnusable) {
		return err
	}
	return transient(err)
}

// sampling is what sampleOld and sampleRewrap probe: the table, through db
// and kc, for tokens under oldARN, with namespace ns.
type sampling struct {
	db             DB
	kc             *kmsclient.Client
	t              *tokentable.Table
	oldARN, newARN string
	ns             string
}

// sampleOld opens tokens under OLD taken from the start of the table and
// from random pages across it. When at least five were tried and none of
// them opens — and no token under NEW in the sample opens either — the
// configuration (NAMESPACE, OLD_KEY_ID) is almost surely wrong, and running
// would only quarantine the whole table: refuse instead. A few bad rows, even
// the first ones in the heap, do not stop the run: they are quarantined.
func sampleOld(ctx context.Context, s sampling) error {
	db, kc, t, oldARN, newARN, ns := s.db, s.kc, s.t, s.oldARN, s.newARN, s.ns
	sample, err := sampleRows(ctx, db, t)
	if err != nil {
		return transient(fmt.Errorf("sample rows: %w", err))
	}
	const maxTries, minTries = 12, 5
	tried := 0
	for _, r := range sample {
		env, err := envelope.Parse(r.Token)
		if err != nil || env.KID != oldARN {
			continue
		}
		tried++
		dek, err := kc.Decrypt(ctx, oldARN, env.WDEK)
		if err != nil && !errors.Is(err, kmsclient.ErrBadCiphertext) {
			return keyOrTransient(fmt.Errorf("sample decrypt under the old key: %w", err))
		}
		if err == nil {
			plain, oerr := envelope.Open(env, dek, ns, r.ID)
			clear(plain)
			dek.Zero()
			if oerr == nil {
				return nil
			}
		}
		if tried == maxTries {
			break
		}
	}
	if tried >= minTries && !anyOpens(ctx, kc, sample, newARN, ns) {
		return configErrorf("%d sampled tokens under the old key do not open with namespace %q: check both before every row gets quarantined", tried, ns)
	}
	return nil
}

// sampleRewrap has KMS re-encrypt sampled wrapped keys under OLD from OLD to
// NEW with the configured encryption context, results discarded: rewrap
// opens no token, so this is the only way to learn before the first write
// that NAMESPACE is wrong (KMS rejects the context). It stops at the first
// success (one ReEncrypt on good data). When every one of up to three
// distinct keys tried is rejected, it refuses unless a token under NEW in the
// sample opens with this namespace: then the namespace is right and the
// rejected rows are bad rows, which the run quarantines (a rerun that only
// has bad rows left under OLD must end with 65, not be refused).
func sampleRewrap(ctx context.Context, s sampling) error {
	db, kc, t, oldARN, newARN, ns := s.db, s.kc, s.t, s.oldARN, s.newARN, s.ns
	sample, err := sampleRows(ctx, db, t)
	if err != nil {
		return transient(fmt.Errorf("sample rows: %w", err))
	}
	const maxTries = 3
	tried := map[string]bool{}
	for _, r := range sample {
		env, err := envelope.Parse(r.Token)
		if err != nil || env.KID != oldARN || tried[string(env.WDEK)] {
			continue
		}
		tried[string(env.WDEK)] = true
		_, err = kc.ReEncrypt(ctx, env.WDEK, oldARN, newARN)
		if err == nil {
			return nil
		}
		if !errors.Is(err, kmsclient.ErrBadCiphertext) {
			return keyOrTransient(fmt.Errorf("sample re-encrypt from the old key to the new: %w", err))
		}
		if len(tried) == maxTries {
			break
		}
	}
	if len(tried) > 0 && !anyOpens(ctx, kc, sample, newARN, ns) {
		return configErrorf("KMS rejected all %d sampled wrapped keys under the old key with encryption context namespace=%q: check both before every row gets quarantined", len(tried), ns)
	}
	return nil
}

// sampleRows reads up to 200 rows from the start of the table and up to 200
// from random pages (TABLESAMPLE SYSTEM, sized from the planner's row
// estimate so that a huge table is not scanned).
func sampleRows(ctx context.Context, db DB, t *tokentable.Table) ([]tokentable.Row, error) {
	first, err := db.Query(ctx, fmt.Sprintf(`SELECT %s::text, %s FROM %s WHERE %[2]s IS NOT NULL AND %[1]s IS NOT NULL LIMIT 200`, t.QuotedID(), t.QuotedToken(), t.QuotedName()))
	if err != nil {
		return nil, err
	}
	sample, err := tokentable.CollectRows(first, 400)
	if err != nil {
		return nil, err
	}
	estimate, err := rowEstimate(ctx, db, t)
	if err != nil {
		return nil, err
	}
	percent := 100.0
	if estimate > 0 {
		percent = min(100, max(0.0001, 2000/estimate*100))
	}
	spread, err := db.Query(ctx, fmt.Sprintf(`SELECT %s::text, %s FROM %s TABLESAMPLE SYSTEM ($1) WHERE %[2]s IS NOT NULL AND %[1]s IS NOT NULL LIMIT 200`,
		t.QuotedID(), t.QuotedToken(), t.QuotedName()), percent)
	if err != nil {
		return nil, err
	}
	more, err := tokentable.CollectRows(spread, 200)
	if err != nil {
		return nil, err
	}
	// Interleave so that the tries are spread over both halves.
	out := make([]tokentable.Row, 0, len(sample)+len(more))
	for i := 0; i < max(len(sample), len(more)); i++ {
		if i < len(more) {
			out = append(out, more[i])
		}
		if i < len(sample) {
			out = append(out, sample[i])
		}
	}
	return out, nil
}

// anyOpens reports whether one of the first three tokens under keyARN in
// sample opens with namespace ns.
func anyOpens(ctx context.Context, kc *kmsclient.Client, sample []tokentable.Row, keyARN, ns string) bool {
	tried := 0
	for _, r := range sample {
		env, err := envelope.Parse(r.Token)
		if err != nil || env.KID != keyARN {
			continue
		}
		dek, err := kc.Decrypt(ctx, keyARN, env.WDEK)
		if err == nil {
			plain, oerr := envelope.Open(env, dek, ns, r.ID)
			clear(plain)
			dek.Zero()
			if oerr == nil {
				return true
			}
		}
		if tried++; tried == 3 {
			break
		}
	}
	return false
}
