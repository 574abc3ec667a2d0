package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// layout holds the field offsets of a well-formed envelope.
type layout struct {
	kidOff, wdekLenOff, wdekOff, nonceOff, ctOff, end int
}

func layoutOf(t *testing.T, b []byte) layout {
	t.Helper()
	if _, err := Parse(b); err != nil {
		t.Fatalf("layoutOf: Parse: %v", err)
	}
	kidLen := int(binary.BigEndian.Uint16(b[2:]))
	l := layout{kidOff: 4, wdekLenOff: 4 + kidLen}
	wdekLen := int(binary.BigEndian.Uint16(b[l.wdekLenOff:]))
	l.wdekOff = l.wdekLenOff + 2
	l.nonceOff = l.wdekOff + wdekLen
	l.ctOff = l.nonceOff + NonceSize
	l.end = len(b)
	return l
}

func (l layout) region(i int) string {
	switch {
	case i == 0:
		return "version"
	case i == 1:
		return "alg"
	case i < l.kidOff:
		return "kid_len"
	case i < l.wdekLenOff:
		return "kid"
	case i < l.wdekOff:
		return "wdek_len"
	case i < l.nonceOff:
		return "wdek"
	case i < l.ctOff:
		return "nonce"
	default:
		return "ct"
	}
}

// TestTamperBitFlip flips every bit of every valid vector, one at a time, and
// asserts exactly what v1 promises for the region the bit is in:
//
//   - version, alg: Parse refuses (ErrVersion, ErrAlg).
//   - kid_len, wdek_len: Parse refuses, or the fields shift so that Open
//     fails with ErrAuth. The token is never returned.
//   - nonce, ct (including the tag): Parse accepts, Open fails with ErrAuth.
//   - kid, wdek: these are outside the AAD by design (a rewrap replaces them
//     without the data key), so AES-GCM does not protect them. A flip in wdek
//     parses and, given the same data key, opens to the same token; so does a
//     flip in kid that leaves valid UTF-8, and one that does not is refused
//     with ErrKIDEncoding. In production the data key comes from KMS Decrypt
//     of wdek with KeyId kid, which fails for an altered wdek or kid; that
//     protection lives in pkg/kmsclient, not here.
func TestTamperBitFlip(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	for _, v := range vf.Valid {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			l := layoutOf(t, v.Envelope)
			counts := map[string]int{}
			b := bytes.Clone(v.Envelope)
			for i := range b {
				region := l.region(i)
				for bit := range 8 {
					b[i] ^= 1 << bit
					checkFlip(t, v, region, i, bit, b)
					b[i] ^= 1 << bit
					counts[region]++
				}
			}
			for _, r := range []string{"version", "alg", "kid_len", "kid", "wdek_len", "wdek", "nonce", "ct"} {
				if counts[r] == 0 {
					t.Errorf("no flips in region %s", r)
				}
			}
		})
	}
}

func checkFlip(t *testing.T, v validVector, region string, i, bit int, b []byte) {
	t.Helper()
	e, perr := Parse(b)
	var pt []byte
	var oerr error
	if perr == nil {
		pt, oerr = Open(e, v.DEK, v.Namespace, v.RowID)
	} else if !errors.Is(perr, ErrMalformed) {
		t.Fatalf("%s byte %d bit %d: Parse error %v does not match ErrMalformed", region, i, bit, perr)
	}
	switch region {
	case "version":
		if !errors.Is(perr, ErrVersion) {
			t.Fatalf("%s byte %d bit %d: Parse error = %v, want ErrVersion", region, i, bit, perr)
		}
	case "alg":
		if !errors.Is(perr, ErrAlg) {
			t.Fatalf("%s byte %d bit %d: Parse error = %v, want ErrAlg", region, i, bit, perr)
		}
	case "kid_len", "wdek_len":
		if perr == nil && !errors.Is(oerr, ErrAuth) {
			t.Fatalf("%s byte %d bit %d: parsed and Open = %x, %v; want a Parse error or ErrAuth", region, i, bit, pt, oerr)
		}
	case "nonce", "ct":
		if perr != nil {
			t.Fatalf("%s byte %d bit %d: Parse error %v, want success", region, i, bit, perr)
		}
		if !errors.Is(oerr, ErrAuth) || pt != nil {
			t.Fatalf("%s byte %d bit %d: Open = %x, %v; want ErrAuth", region, i, bit, pt, oerr)
		}
	case "kid":
		if perr != nil {
			if !errors.Is(perr, ErrKIDEncoding) {
				t.Fatalf("%s byte %d bit %d: Parse error = %v, want success or ErrKIDEncoding", region, i, bit, perr)
			}
			return
		}
		if e.KID == v.KID {
			t.Fatalf("%s byte %d bit %d: kid unchanged by the flip", region, i, bit)
		}
		if oerr != nil || !bytes.Equal(pt, v.Plaintext) {
			t.Fatalf("%s byte %d bit %d: Open = %x, %v; want %x (kid is outside the AAD)", region, i, bit, pt, oerr, []byte(v.Plaintext))
		}
	case "wdek":
		if perr != nil {
			t.Fatalf("%s byte %d bit %d: Parse error %v, want success", region, i, bit, perr)
		}
		if bytes.Equal(e.WDEK, v.WDEK) {
			t.Fatalf("%s byte %d bit %d: wdek unchanged by the flip", region, i, bit)
		}
		if oerr != nil || !bytes.Equal(pt, v.Plaintext) {
			t.Fatalf("%s byte %d bit %d: Open = %x, %v; want %x (wdek is outside the AAD)", region, i, bit, pt, oerr, []byte(v.Plaintext))
		}
	default:
		t.Fatalf("unknown region %q", region)
	}
}

// TestTamperTruncate cuts every valid vector at every length. A cut before
// the end of the tag's minimum is refused by Parse with the precise sentinel;
// a cut inside a longer ciphertext still parses (the ct is just shorter) and
// Open fails with ErrAuth.
func TestTamperTruncate(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	for _, v := range vf.Valid {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			l := layoutOf(t, v.Envelope)
			for n := range len(v.Envelope) {
				b := v.Envelope[:n:n]
				e, err := Parse(b)
				var want error
				switch {
				case n < l.ctOff:
					want = ErrTruncated
				case n < l.ctOff+TagSize:
					want = ErrCiphertextShort
				}
				if want != nil {
					if !errors.Is(err, want) || !errors.Is(err, ErrMalformed) {
						t.Fatalf("Parse(first %d of %d bytes) = %v; want %v", n, len(v.Envelope), err, want)
					}
					continue
				}
				if err != nil {
					t.Fatalf("Parse(first %d of %d bytes) = %v; want success", n, len(v.Envelope), err)
				}
				if pt, err := Open(e, v.DEK, v.Namespace, v.RowID); !errors.Is(err, ErrAuth) {
					t.Fatalf("Open(first %d of %d bytes) = %x, %v; want ErrAuth", n, len(v.Envelope), pt, err)
				}
			}
		})
	}
}

// TestTamperExtend appends bytes: the extra bytes become part of ct, so the
// envelope parses and Open fails.
func TestTamperExtend(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	v := vf.Valid[0]
	for _, extra := range [][]byte{{0x00}, {0x01}, bytes.Repeat([]byte{0xAA}, TagSize)} {
		b := append(bytes.Clone(v.Envelope), extra...)
		e, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(+%d bytes) = %v; want success", len(extra), err)
		}
		if pt, err := Open(e, v.DEK, v.Namespace, v.RowID); !errors.Is(err, ErrAuth) {
			t.Errorf("Open(+%d bytes) = %x, %v; want ErrAuth", len(extra), pt, err)
		}
	}
}

// TestWrongAAD: a token sealed for one row opens for that row only.
func TestWrongAAD(t *testing.T) {
	t.Parallel()
	dek := testKey()
	const (
		ns  = "payment_methods"
		row = "3f0e8a52-6b1d-4c1e-9f7a-0c2b8d4e5f61"
	)
	pt := []byte("tok_4242424242424242")
	e, err := SealRandom(dek, SealOptions{KID: testKID, WDEK: testWDEK, Namespace: ns, RowID: row}, pt)
	if err != nil {
		t.Fatalf("SealRandom: %v", err)
	}
	if got, err := Open(e, dek, ns, row); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open(right row) = %q, %v; want %q", got, err, pt)
	}
	otherKey := bytes.Clone(dek)
	otherKey[31] ^= 0x01

	tests := []struct {
		name, ns, row string
		dek           []byte
	}{
		{"other row id", ns, "3f0e8a52-6b1d-4c1e-9f7a-0c2b8d4e5f62", dek},
		{"uppercase row id", ns, "3F0E8A52-6B1D-4C1E-9F7A-0C2B8D4E5F61", dek},
		{"row id with trailing space", ns, row + " ", dek},
		{"empty row id", ns, "", dek},
		{"other namespace", "customer_secrets", row, dek},
		{"namespace prefix", "payment_method", row, dek},
		{"empty namespace", "", row, dek},
		{"namespace and row swapped", row, ns, dek},
		{"boundary moved into namespace", ns + "3", row[1:], dek},
		{"boundary moved into row", ns[:len(ns)-1], "s" + row, dek},
		{"other data key", ns, row, otherKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Open(e, tt.dek, tt.ns, tt.row)
			if !errors.Is(err, ErrAuth) || got != nil {
				t.Errorf("Open(ns %q, row %q) = %q, %v; want ErrAuth", tt.ns, tt.row, got, err)
			}
		})
	}
}

// TestMoveBetweenRows: two rows sealed with the same Sealer (one data key per
// batch) cannot be swapped.
func TestMoveBetweenRows(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(), testKID, testWDEK, 0)
	if err != nil {
		t.Fatalf("NewSealer: %v", err)
	}
	defer s.Destroy()
	a, err := s.Seal("payment_methods", "1", []byte("token-a"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	b, err := s.Seal("payment_methods", "2", []byte("token-b"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	if got, err := s.Open(a, "payment_methods", "2"); !errors.Is(err, ErrAuth) {
		t.Errorf("row 1's envelope opened as row 2: %q, %v; want ErrAuth", got, err)
	}
	if got, err := s.Open(b, "payment_methods", "1"); !errors.Is(err, ErrAuth) {
		t.Errorf("row 2's envelope opened as row 1: %q, %v; want ErrAuth", got, err)
	}
	if got, err := s.Open(b, "payment_methods", "2"); err != nil || string(got) != "token-b" {
		t.Errorf("Open(row 2) = %q, %v; want %q", got, err, "token-b")
	}
}
