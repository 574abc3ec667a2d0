package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestSealerNonceUniqueness seals 100,000 tokens under one key from several
// goroutines and asserts that no nonce repeats. It also opens a sample.
func TestSealerNonceUniqueness(t *testing.T) {
	t.Parallel()
	const (
		workers   = 4
		perWorker = 25_000
		total     = workers * perWorker
	)
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	defer s.Destroy()

	nonces := make([][perWorker][NonceSize]byte, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				row := strconv.Itoa(w*perWorker + i)
				e, err := s.Seal("payment_methods", row, []byte("tok"))
				if err != nil {
					errs[w] = err
					return
				}
				nonces[w][i] = [NonceSize]byte(e.Nonce)
				if i%5000 == 0 {
					if pt, err := s.Open(e, "payment_methods", row); err != nil || string(pt) != "tok" {
						errs[w] = fmt.Errorf("Open(row %s) = %q, %v", row, pt, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", w, err)
		}
	}

	seen := make(map[[NonceSize]byte]struct{}, total)
	for w := range nonces {
		for _, n := range nonces[w] {
			seen[n] = struct{}{}
		}
	}
	if got, want := len(seen), total; got != want {
		t.Errorf("distinct nonces = %d, want %d (%d repeats)", got, want, want-got)
	}
	if got, want := s.Used(), uint64(total); got != want {
		t.Errorf("Used = %d, want %d", got, want)
	}
}

func TestSealerCap(t *testing.T) {
	t.Parallel()
	for _, limit := range []uint64{1, 3, 17} {
		t.Run(strconv.FormatUint(limit, 10), func(t *testing.T) {
			t.Parallel()
			s, err := NewSealer(testKey(), testKID, testWDEK, limit)
			if err != nil {
				t.Fatalf("NewSealer: %v", err)
			}
			defer s.Destroy()
			if got := s.MaxUses(); got != limit {
				t.Errorf("MaxUses = %d, want %d", got, limit)
			}
			for i := range limit {
				if _, err := s.Seal("ns", strconv.FormatUint(i, 10), []byte("tok")); err != nil {
					t.Fatalf("Seal %d of %d: %v", i+1, limit, err)
				}
			}
			for range 2 {
				e, err := s.Seal("ns", "over", []byte("tok"))
				if !errors.Is(err, ErrKeyExhausted) || e != nil {
					t.Fatalf("Seal %d of %d = %+v, %v; want ErrKeyExhausted", limit+1, limit, e, err)
				}
			}
			if got := s.Used(); got != limit {
				t.Errorf("Used = %d, want %d", got, limit)
			}
		})
	}
}

func TestSealerRejectedRowDoesNotSpendAUse(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 1)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	defer s.Destroy()
	if _, err := s.Seal("ns", strings.Repeat("1", MaxAADFieldLen+1), nil); !errors.Is(err, ErrAADField) {
		t.Fatalf("Seal(oversized row id) = %v; want ErrAADField", err)
	}
	if got := s.Used(); got != 0 {
		t.Errorf("Used = %d after a refused row, want 0", got)
	}
	if _, err := s.Seal("ns", "1", nil); err != nil {
		t.Errorf("Seal after a refused row: %v", err)
	}
}

func TestNewSealer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		dek     []byte
		kid     string
		wdek    []byte
		maxUses uint64
		want    error
		wantMax uint64
	}{
		{"default cap", testKey(), testKID, testWDEK, 0, nil, DefaultMaxUses},
		{"ceiling", testKey(), testKID, testWDEK, MaxUsesCeiling, nil, MaxUsesCeiling},
		{"above ceiling", testKey(), testKID, testWDEK, MaxUsesCeiling + 1, ErrMaxUses, 0},
		{"2^32", testKey(), testKID, testWDEK, 1 << 32, ErrMaxUses, 0},
		{"aes-128 key", make([]byte, 16), testKID, testWDEK, 0, ErrKeySize, 0},
		{"alias kid", testKey(), "alias/payments", testWDEK, 0, ErrKIDAlias, 0},
		{"empty kid", testKey(), "", testWDEK, 0, ErrKIDLength, 0},
		{"empty wdek", testKey(), testKID, nil, 0, ErrWDEKLength, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := NewSealer(tt.dek, tt.kid, tt.wdek, tt.maxUses)
			if tt.want != nil {
				if !errors.Is(err, tt.want) || s != nil {
					t.Fatalf("NewSealer = %v, %v; want %v", s, err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSealer: %v", err)
			}
			defer s.Destroy()
			if got := s.MaxUses(); got != tt.wantMax {
				t.Errorf("MaxUses = %d, want %d", got, tt.wantMax)
			}
			if got := s.KID(); got != tt.kid {
				t.Errorf("KID = %q, want %q", got, tt.kid)
			}
		})
	}
}

// TestSealerOwnsItsKey: the Sealer copies the key, so the caller can zero its
// own copy at once; Destroy zeroes the Sealer's copy and stops it.
func TestSealerOwnsItsKey(t *testing.T) {
	t.Parallel()
	dek := testKey()
	wdek := bytes.Clone(testWDEK)
	s, err := NewSealer(dek, testKID, wdek, 0)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	Zero(dek)
	clear(wdek)
	if !bytes.Equal(dek, make([]byte, KeySize)) {
		t.Fatalf("Zero left %x", dek)
	}

	e, err := s.Seal("payment_methods", "1", []byte("tok"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	if !bytes.Equal(e.WDEK, testWDEK) || e.KID != testKID {
		t.Errorf("sealed kid/wdek = %q/%x, want %q/%x", e.KID, e.WDEK, testKID, testWDEK)
	}
	if got, err := Open(e, testKey(), "payment_methods", "1"); err != nil || string(got) != "tok" {
		t.Fatalf("Open with the original key = %q, %v; want %q", got, err, "tok")
	}

	key := s.key // the Sealer's private copy, kept to check it is zeroed
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !bytes.Equal(key, make([]byte, KeySize)) {
		t.Errorf("after Close the key bytes are not zero")
	}
	s.Destroy() // idempotent
	if e, err := s.Seal("payment_methods", "2", []byte("tok")); !errors.Is(err, ErrSealerClosed) || e != nil {
		t.Errorf("Seal after Destroy = %+v, %v; want ErrSealerClosed", e, err)
	}
	if pt, err := s.Open(e, "payment_methods", "1"); !errors.Is(err, ErrSealerClosed) || pt != nil {
		t.Errorf("Open after Destroy = %q, %v; want ErrSealerClosed", pt, err)
	}
}

// TestSealerDestroyWhileSealing runs Destroy against concurrent Seal calls;
// with -race it checks the locking. Every call either succeeds with an
// envelope that opens or fails with ErrSealerClosed.
func TestSealerDestroyWhileSealing(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				row := fmt.Sprintf("%d-%d", w, i)
				e, err := s.Seal("ns", row, []byte("tok"))
				if errors.Is(err, ErrSealerClosed) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				if pt, err := Open(e, testKey(), "ns", row); err != nil || string(pt) != "tok" {
					errs <- fmt.Errorf("Open(%s) = %q, %v", row, pt, err)
					return
				}
			}
		})
	}
	s.Destroy()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestOpenerOpensWhatSealed: an Opener opens every envelope sealed under
// its data key, for its own row only, like Open.
func TestOpenerOpensWhatSealed(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	op, err := NewOpener(testKey())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		row := fmt.Sprint(i)
		e, err := s.Seal("ns", row, []byte("tok-"+row))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := op.Open(e, "ns", row); err != nil || string(pt) != "tok-"+row {
			t.Errorf("Open(%s) = %q, %v", row, pt, err)
		}
		if _, err := op.Open(e, "ns", row+"x"); !errors.Is(err, ErrAuth) {
			t.Errorf("Open(%s) as another row: %v, want ErrAuth", row, err)
		}
	}
	if _, err := NewOpener(make([]byte, 16)); !errors.Is(err, ErrKeySize) {
		t.Errorf("NewOpener(16 bytes): %v, want ErrKeySize", err)
	}
}

// TestRedaction: no way of printing a Sealer, an Opener or a DataKey shows the key.
func TestRedaction(t *testing.T) {
	t.Parallel()
	dek := testKey()
	s, err := NewSealer(dek, testKID, testWDEK, 0)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	defer s.Destroy()
	dk := DataKey(bytes.Clone(dek))
	op, err := NewOpener(dek)
	if err != nil {
		t.Fatalf("NewOpener: %v", err)
	}

	var outputs []string
	for _, v := range []any{s, dk, &dk, op} {
		outputs = append(outputs,
			fmt.Sprintf("%v %+v %#v %s", v, v, v, v),
			fmt.Sprintf("%x %X %q %d %o %b %T", v, v, v, v, v, v, v),
			fmt.Sprint(v), fmt.Sprintln(v),
		)
	}
	outputs = append(outputs, fmt.Sprintf("%v %+v", struct {
		S *Sealer
		K DataKey
	}{s, dk}, []any{s, dk}))

	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var buf bytes.Buffer
		logger := slog.New(h(&buf))
		logger.Info("sealer", "sealer", s, "key", dk, slog.Any("any_key", dk), slog.Group("g", "s", s), "opener", op)
		logger.With("sealer", s).Error("with")
		outputs = append(outputs, buf.String())
	}

	jb, err := json.Marshal(map[string]any{"sealer": s, "key": dk, "opener": op})
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	outputs = append(outputs, string(jb))

	for _, out := range outputs {
		if !strings.Contains(out, "[redacted]") {
			t.Errorf("output %q does not say [redacted]", out)
		}
		for _, enc := range encodings(dek) {
			if strings.Contains(out, enc) {
				t.Errorf("output %q contains the key as %q", out, enc)
			}
		}
	}
	if got, want := s.String(), "[redacted]"; got != want {
		t.Errorf("Sealer.String() = %q, want %q", got, want)
	}
	if got, want := dk.GoString(), "[redacted]"; got != want {
		t.Errorf("DataKey.GoString() = %q, want %q", got, want)
	}

	dk.Zero()
	if !bytes.Equal(dk, make([]byte, KeySize)) {
		t.Errorf("DataKey.Zero left %x", []byte(dk))
	}
}

// Compile-time checks of the interfaces the redaction relies on.
var (
	_ fmt.Stringer   = (*Sealer)(nil)
	_ fmt.GoStringer = (*Sealer)(nil)
	_ fmt.Formatter  = (*Sealer)(nil)
	_ slog.LogValuer = (*Sealer)(nil)
	_ json.Marshaler = (*Sealer)(nil)
	_ fmt.Stringer   = DataKey(nil)
	_ fmt.GoStringer = DataKey(nil)
	_ fmt.Formatter  = DataKey(nil)
	_ slog.LogValuer = DataKey(nil)
	_ json.Marshaler = DataKey(nil)
)

// TestSealerSealAllocations: a rekey seals every row, so Sealer.Seal makes
// three allocations (AAD, one buffer for wdek, nonce and ciphertext, the
// Envelope), not one per field; and the envelopes still share nothing with
// the Sealer or with each other.
func TestSealerSealAllocations(t *testing.T) {
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	ns, id, pt := "payments.payment_methods", "0190b7d2-4c1e-7a55-8d2e-6b1f0c3a9e77", []byte("4111111111111111")
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := s.Seal(ns, id, pt); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 3 {
		t.Errorf("Sealer.Seal made %.0f allocations per call, want at most 3", allocs)
	}

	a, err := s.Seal(ns, id, pt)
	if err != nil {
		t.Fatal(err)
	}
	clear(a.WDEK)
	_ = append(a.WDEK, 0xAA)        // capped: must not reach the nonce
	_ = append(a.Nonce, 0xBB, 0xBB) // capped: must not reach the ciphertext
	if got, err := s.Open(a, ns, id); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open after appending to wdek and nonce = %q, %v", got, err)
	}
	b, err := s.Seal(ns, id, pt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.WDEK, testWDEK) {
		t.Fatalf("clearing one envelope's wdek changed the next one's: %x", b.WDEK)
	}
	if bytes.Equal(a.Nonce, b.Nonce) {
		t.Fatal("two seals drew the same nonce")
	}
	if len(b.Ciphertext) != len(pt)+TagSize || cap(b.Ciphertext) != len(b.Ciphertext) {
		t.Fatalf("ciphertext len %d cap %d, want %d", len(b.Ciphertext), cap(b.Ciphertext), len(pt)+TagSize)
	}
}
