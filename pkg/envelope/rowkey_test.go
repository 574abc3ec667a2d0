package envelope

import (
	"bytes"
	"errors"
	"testing"
)

// TestRowKeyCallsMatch: SealToken writes what Seal + Marshal write (a token
// Parse reads back, Marshal re-encodes byte for byte, Open opens), and
// OpenAppend and OpenToken open what Open opens, for the same row only.
func TestRowKeyCallsMatch(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	ns, id, pt := "payments.payment_methods", "0190b7d2-4c1e-7a55-8d2e-6b1f0c3a9e77", []byte("4111111111111111")
	aad, err := AppendAAD([]byte("left over"), ns, id)
	if err != nil {
		t.Fatal(err)
	}
	aad = aad[len("left over"):]
	if want, _ := AAD(ns, id); !bytes.Equal(aad, want) {
		t.Fatalf("AppendAAD = %x, AAD = %x", aad, want)
	}

	tok, err := s.SealToken(aad, pt)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != cap(tok) {
		t.Errorf("token len %d cap %d: not sized once", len(tok), cap(tok))
	}
	e, err := Parse(tok)
	if err != nil {
		t.Fatalf("Parse(SealToken) = %v", err)
	}
	if e.KID != testKID || !bytes.Equal(e.WDEK, testWDEK) {
		t.Errorf("sealed kid/wdek = %q/%x, want %q/%x", e.KID, e.WDEK, testKID, testWDEK)
	}
	if again, err := e.Marshal(); err != nil || !bytes.Equal(again, tok) {
		t.Errorf("Marshal(Parse(token)) = %x, %v; want the token", again, err)
	}
	if got, err := Open(e, testKey(), ns, id); err != nil || !bytes.Equal(got, pt) {
		t.Errorf("Open = %q, %v", got, err)
	}
	o, err := NewOpener(testKey())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := o.OpenAppend([]byte("x"), e, aad); err != nil || string(got) != "x"+string(pt) {
		t.Errorf("OpenAppend = %q, %v; want the plaintext after the prefix", got, err)
	}
	if got, err := s.OpenToken(nil, tok, aad); err != nil || !bytes.Equal(got, pt) {
		t.Errorf("OpenToken = %q, %v", got, err)
	}

	other, _ := AAD(ns, "0190b7d2-4c1e-7a55-8d2e-6b1f0c3a9e78")
	if _, err := o.OpenAppend(nil, e, other); !errors.Is(err, ErrAuth) {
		t.Errorf("OpenAppend with another row's AAD: %v, want ErrAuth", err)
	}
	if _, err := s.OpenToken(nil, tok, other); !errors.Is(err, ErrAuth) {
		t.Errorf("OpenToken with another row's AAD: %v, want ErrAuth", err)
	}
	bad := bytes.Clone(tok)
	bad[len(bad)-1] ^= 1
	if _, err := s.OpenToken(nil, bad, aad); !errors.Is(err, ErrAuth) {
		t.Errorf("OpenToken of a flipped tag: %v, want ErrAuth", err)
	}
	if _, err := s.OpenToken(nil, bad[:10], aad); !errors.Is(err, ErrMalformed) {
		t.Errorf("OpenToken of 10 bytes: %v, want ErrMalformed", err)
	}
}

// TestRowKeyCallsRefuseForeignAAD: an AAD AppendAAD cannot have built (none,
// cut short, with bytes after it) is refused before a nonce is spent: a
// token sealed under it would be bound to no row.
func TestRowKeyCallsRefuseForeignAAD(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	o, err := NewOpener(testKey())
	if err != nil {
		t.Fatal(err)
	}
	good, _ := AAD("payment_methods", "42")
	tok, err := s.SealToken(good, []byte("tok"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	used := s.Used()
	for name, aad := range map[string][]byte{
		"nil":         nil,
		"empty":       {},
		"cut short":   good[:len(good)-1],
		"extra byte":  append(bytes.Clone(good), 0),
		"version 2":   append([]byte{2}, good[1:]...),
		"header only": good[:6],
	} {
		if _, err := s.SealToken(aad, []byte("tok")); !errors.Is(err, ErrAADField) {
			t.Errorf("SealToken with %s AAD: %v, want ErrAADField", name, err)
		}
		if _, err := o.OpenAppend(nil, e, aad); !errors.Is(err, ErrAADField) {
			t.Errorf("OpenAppend with %s AAD: %v, want ErrAADField", name, err)
		}
		if _, err := s.OpenToken(nil, tok, aad); !errors.Is(err, ErrAADField) {
			t.Errorf("OpenToken with %s AAD: %v, want ErrAADField", name, err)
		}
	}
	if s.Used() != used {
		t.Errorf("refused seals spent %d uses", s.Used()-used)
	}
	s.Destroy()
	if _, err := s.SealToken(good, []byte("tok")); !errors.Is(err, ErrSealerClosed) {
		t.Errorf("SealToken after Destroy: %v", err)
	}
	if _, err := s.OpenToken(nil, tok, good); !errors.Is(err, ErrSealerClosed) {
		t.Errorf("OpenToken after Destroy: %v", err)
	}
}

// TestSealTokenCap: SealToken counts uses as Seal does.
func TestSealTokenCap(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	aad, _ := AAD("payment_methods", "1")
	for i := range 2 {
		if _, err := s.SealToken(aad, []byte("tok")); err != nil {
			t.Fatalf("seal %d: %v", i+1, err)
		}
	}
	if _, err := s.SealToken(aad, []byte("tok")); !errors.Is(err, ErrKeyExhausted) {
		t.Fatalf("third seal with MaxUses 2: %v, want ErrKeyExhausted", err)
	}
}

// TestRowKeyCallsAllocations: per row, the token is the only allocation.
func TestRowKeyCallsAllocations(t *testing.T) {
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	o, err := NewOpener(testKey())
	if err != nil {
		t.Fatal(err)
	}
	pt := []byte("4111111111111111")
	aad, _ := AAD("payments.payment_methods", "0190b7d2-4c1e-7a55-8d2e-6b1f0c3a9e77")
	tok, err := s.SealToken(aad, pt)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseShared(tok)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 64)
	var aadBuf []byte
	for name, f := range map[string]func(){
		"AppendAAD": func() {
			aadBuf, _ = AppendAAD(aadBuf[:0], "payments.payment_methods", "0190b7d2-4c1e-7a55-8d2e-6b1f0c3a9e77")
		},
		"OpenAppend": func() { _, _ = o.OpenAppend(buf[:0], e, aad) },
		"OpenToken":  func() { _, _ = s.OpenToken(buf[:0], tok, aad) },
	} {
		f() // sizes aadBuf
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s into a reused buffer made %.0f allocations, want 0", name, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = s.SealToken(aad, pt) }); n > 1 {
		t.Errorf("SealToken made %.0f allocations, want 1 (the token)", n)
	}
}
