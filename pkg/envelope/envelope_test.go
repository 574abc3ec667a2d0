package envelope

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

const testKID = "arn:aws:kms:us-east-1:000000000000:key/0b8d9c52-2f3e-4a61-9d7e-5c4b3a291807"

var testWDEK = bytes.Repeat([]byte{0xC7}, 184)

// testKey returns a fixed, high-entropy-looking 32-byte key (fresh copy).
func testKey() []byte {
	k, _ := hex.DecodeString("61ef2a431d2f3c1500204c40ea71f042e83663ae842ee024379194a939b344b1")
	return k
}

// raw builds envelope bytes field by field, lengths given explicitly so that
// they can disagree with the fields.
func raw(version, alg byte, kidLen int, kid []byte, wdekLen int, wdek, nonce, ct []byte) []byte {
	b := []byte{version, alg}
	b = binary.BigEndian.AppendUint16(b, uint16(kidLen))
	b = append(b, kid...)
	b = binary.BigEndian.AppendUint16(b, uint16(wdekLen))
	b = append(b, wdek...)
	b = append(b, nonce...)
	return append(b, ct...)
}

func good(kid, wdek []byte, ctLen int) []byte {
	return raw(Version1, AlgAES256GCM, len(kid), kid, len(wdek), wdek, make([]byte, NonceSize), make([]byte, ctLen))
}

func TestParse(t *testing.T) {
	t.Parallel()
	kid := []byte(testKID)
	wdek := []byte{1, 2, 3}
	nonce := make([]byte, NonceSize)
	tag := make([]byte, TagSize)
	tests := []struct {
		name string
		in   []byte
		want error // nil: must parse
	}{
		{"minimal", good([]byte("k"), []byte{9}, TagSize), nil},
		{"min size", good([]byte("k"), []byte{9}, TagSize)[:MinSize], nil},
		{"kid 2048", good(bytes.Repeat([]byte("a"), MaxKIDLen), wdek, TagSize), nil},
		{"wdek 4096", good(kid, make([]byte, MaxWDEKLen), TagSize), nil},
		{"utf-8 kid", good([]byte("clé-ключ-鍵"), wdek, TagSize), nil},
		{"alias kid is still read", good([]byte("alias/old"), wdek, TagSize), nil},

		{"nil", nil, ErrTruncated},
		{"empty", []byte{}, ErrTruncated},
		{"version only", []byte{Version1}, ErrTruncated},
		{"version and alg", []byte{Version1, AlgAES256GCM}, ErrTruncated},
		{"half kid_len", []byte{Version1, AlgAES256GCM, 0}, ErrTruncated},
		{"version 0", raw(0, AlgAES256GCM, len(kid), kid, len(wdek), wdek, nonce, tag), ErrVersion},
		{"version 2", raw(2, AlgAES256GCM, len(kid), kid, len(wdek), wdek, nonce, tag), ErrVersion},
		{"version 2 short", []byte{2}, ErrVersion},
		{"alg 0", raw(Version1, 0, len(kid), kid, len(wdek), wdek, nonce, tag), ErrAlg},
		{"alg 2", raw(Version1, 2, len(kid), kid, len(wdek), wdek, nonce, tag), ErrAlg},
		{"kid_len 0", raw(Version1, AlgAES256GCM, 0, nil, len(wdek), wdek, nonce, tag), ErrKIDLength},
		{"kid_len 2049", good(bytes.Repeat([]byte("a"), MaxKIDLen+1), wdek, TagSize), ErrKIDLength},
		{"kid_len 65535", raw(Version1, AlgAES256GCM, 0xFFFF, kid, len(wdek), wdek, nonce, tag), ErrKIDLength},
		{"kid_len past end", raw(Version1, AlgAES256GCM, 2000, kid, len(wdek), wdek, nonce, tag), ErrTruncated},
		{"kid not utf-8", good([]byte{'a', 0xFF, 'b'}, wdek, TagSize), ErrKIDEncoding},
		{"kid truncated utf-8", good([]byte{'a', 0xC3}, wdek, TagSize), ErrKIDEncoding},
		{"no wdek_len", raw(Version1, AlgAES256GCM, len(kid), kid, 0, nil, nil, nil)[:4+len(kid)+1], ErrTruncated},
		{"wdek_len 0", raw(Version1, AlgAES256GCM, len(kid), kid, 0, nil, nonce, tag), ErrWDEKLength},
		{"wdek_len 4097", good(kid, make([]byte, MaxWDEKLen+1), TagSize), ErrWDEKLength},
		{"wdek_len past end", raw(Version1, AlgAES256GCM, len(kid), kid, 4000, wdek, nonce, tag), ErrTruncated},
		{"no nonce", raw(Version1, AlgAES256GCM, len(kid), kid, len(wdek), wdek, nil, nil), ErrTruncated},
		{"short nonce", raw(Version1, AlgAES256GCM, len(kid), kid, len(wdek), wdek, nonce[:11], nil), ErrTruncated},
		{"no ct", raw(Version1, AlgAES256GCM, len(kid), kid, len(wdek), wdek, nonce, nil), ErrCiphertextShort},
		{"ct 15 bytes", good(kid, wdek, TagSize-1), ErrCiphertextShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := Parse(tt.in)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Parse = %v; want success", err)
				}
				got, err := e.Marshal()
				if err != nil || !bytes.Equal(got, tt.in) {
					t.Fatalf("Marshal(Parse) = %x, %v; want %x", got, err, tt.in)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse error = %v; want %v", err, tt.want)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse error %v does not match ErrMalformed", err)
			}
			if e != nil {
				t.Errorf("Parse returned %+v with an error", e)
			}
		})
	}
}

func TestParseFields(t *testing.T) {
	t.Parallel()
	nonce := bytes.Repeat([]byte{0x4E}, NonceSize)
	ct := bytes.Repeat([]byte{0xC7}, 20)
	in := raw(Version1, AlgAES256GCM, len(testKID), []byte(testKID), 3, []byte{1, 2, 3}, nonce, ct)
	e, err := Parse(in)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if e.Version != Version1 || e.Alg != AlgAES256GCM || e.KID != testKID ||
		!bytes.Equal(e.WDEK, []byte{1, 2, 3}) || !bytes.Equal(e.Nonce, nonce) || !bytes.Equal(e.Ciphertext, ct) {
		t.Fatalf("Parse = %+v; want kid %q wdek 010203 nonce %x ct %x", e, testKID, nonce, ct)
	}
	if got, want := e.Size(), len(in); got != want {
		t.Errorf("Size = %d, want %d", got, want)
	}
}

// TestParseDoesNotAlias: overwriting the input after Parse changes nothing,
// and appending to one field does not overwrite the next.
func TestParseDoesNotAlias(t *testing.T) {
	t.Parallel()
	in := good([]byte(testKID), []byte{1, 2, 3}, 20)
	want := bytes.Clone(in)
	e, err := Parse(in)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	for i := range in {
		in[i] = 0xEE
	}
	_ = append(e.WDEK, 0xAA, 0xAA)
	_ = append(e.Nonce, 0xBB)
	got, err := e.Marshal()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Marshal after overwriting the input = %x, %v; want %x", got, err, want)
	}
}

func TestMarshal(t *testing.T) {
	t.Parallel()
	valid := func() *Envelope {
		return &Envelope{
			Version: Version1, Alg: AlgAES256GCM, KID: testKID, WDEK: []byte{1},
			Nonce: make([]byte, NonceSize), Ciphertext: make([]byte, TagSize),
		}
	}
	tests := []struct {
		name   string
		mutate func(*Envelope)
		want   error
	}{
		{"valid", func(*Envelope) {}, nil},
		{"version 0", func(e *Envelope) { e.Version = 0 }, ErrVersion},
		{"alg 2", func(e *Envelope) { e.Alg = 2 }, ErrAlg},
		{"empty kid", func(e *Envelope) { e.KID = "" }, ErrKIDLength},
		{"kid 2049", func(e *Envelope) { e.KID = strings.Repeat("a", MaxKIDLen+1) }, ErrKIDLength},
		{"kid not utf-8", func(e *Envelope) { e.KID = "a\xffb" }, ErrKIDEncoding},
		{"nil wdek", func(e *Envelope) { e.WDEK = nil }, ErrWDEKLength},
		{"wdek 4097", func(e *Envelope) { e.WDEK = make([]byte, MaxWDEKLen+1) }, ErrWDEKLength},
		{"nonce 11", func(e *Envelope) { e.Nonce = e.Nonce[:11] }, ErrNonceLength},
		{"nonce 13", func(e *Envelope) { e.Nonce = make([]byte, 13) }, ErrNonceLength},
		{"ct 15", func(e *Envelope) { e.Ciphertext = e.Ciphertext[:15] }, ErrCiphertextShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := valid()
			tt.mutate(e)
			got, err := e.Marshal()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Marshal = %v; want success", err)
				}
				if len(got) != e.Size() || cap(got) != e.Size() {
					t.Errorf("Marshal len %d cap %d; want both %d", len(got), cap(got), e.Size())
				}
				return
			}
			if !errors.Is(err, tt.want) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("Marshal error = %v; want %v (and ErrMalformed)", err, tt.want)
			}
			if got != nil {
				t.Errorf("Marshal = %x with an error; want nil", got)
			}
			dst := []byte("prefix")
			out, err := e.MarshalAppend(dst)
			if !errors.Is(err, tt.want) || !bytes.Equal(out, dst) {
				t.Errorf("MarshalAppend = %q, %v; want %q, %v", out, err, dst, tt.want)
			}
		})
	}

	var nilEnv *Envelope
	if _, err := nilEnv.Marshal(); !errors.Is(err, ErrMalformed) {
		t.Errorf("nil Marshal error = %v; want ErrMalformed", err)
	}
}

func TestMarshalAppend(t *testing.T) {
	t.Parallel()
	e, err := Seal(testKey(), make([]byte, NonceSize), SealOptions{KID: testKID, WDEK: testWDEK, Namespace: "ns", RowID: "1"}, []byte("tok"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	want, err := e.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	got, err := e.MarshalAppend([]byte("pre"))
	if err != nil {
		t.Fatalf("MarshalAppend: %v", err)
	}
	if !bytes.Equal(got, append([]byte("pre"), want...)) {
		t.Errorf("MarshalAppend = %x, want pre||%x", got, want)
	}
	// Marshal must not alias e.
	want[len(want)-1] ^= 0xFF
	if again, _ := e.Marshal(); bytes.Equal(again, want) {
		t.Errorf("Marshal output aliases the Envelope")
	}
}

func TestAAD(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, ns, row string
		want          string // hex
	}{
		{"payment_methods/uuid", "payment_methods", "3f0e8a52-6b1d-4c1e-9f7a-0c2b8d4e5f61",
			"0101000f" + hex.EncodeToString([]byte("payment_methods")) + "0024" + hex.EncodeToString([]byte("3f0e8a52-6b1d-4c1e-9f7a-0c2b8d4e5f61"))},
		{"integer row", "t", "42", "01010001" + "74" + "0002" + "3432"},
		{"both empty", "", "", "0101" + "0000" + "0000"},
		{"utf-8 counts bytes", "é", "7", "01010002" + "c3a9" + "0001" + "37"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := AAD(tt.ns, tt.row)
			if err != nil {
				t.Fatalf("AAD: %v", err)
			}
			if hex.EncodeToString(got) != tt.want {
				t.Errorf("AAD(%q, %q) = %x, want %s", tt.ns, tt.row, got, tt.want)
			}
		})
	}

	max := strings.Repeat("n", MaxAADFieldLen)
	if got, err := AAD(max, max); err != nil || len(got) != 2+2+MaxAADFieldLen+2+MaxAADFieldLen {
		t.Errorf("AAD(65535-byte fields) = %d bytes, %v; want %d bytes", len(got), err, 2+2+MaxAADFieldLen+2+MaxAADFieldLen)
	}
	for _, tc := range []struct{ name, ns, row string }{
		{"namespace too long", max + "n", "1"},
		{"row id too long", "ns", max + "1"},
	} {
		if got, err := AAD(tc.ns, tc.row); !errors.Is(err, ErrAADField) || got != nil {
			t.Errorf("AAD(%s) = %d bytes, %v; want ErrAADField", tc.name, len(got), err)
		}
	}

	// Length prefixes keep the pairs apart.
	a, _ := AAD("ab", "c")
	b, _ := AAD("a", "bc")
	if bytes.Equal(a, b) {
		t.Errorf(`AAD("ab","c") == AAD("a","bc") = %x`, a)
	}
}

func TestSealValidation(t *testing.T) {
	t.Parallel()
	nonce := make([]byte, NonceSize)
	tests := []struct {
		name                string
		dek, nonce          []byte
		kid                 string
		wdek                []byte
		ns, row             string
		want, alsoMalformed error
	}{
		{"nil key", nil, nonce, testKID, testWDEK, "ns", "1", ErrKeySize, nil},
		{"aes-128 key", make([]byte, 16), nonce, testKID, testWDEK, "ns", "1", ErrKeySize, nil},
		{"aes-192 key", make([]byte, 24), nonce, testKID, testWDEK, "ns", "1", ErrKeySize, nil},
		{"31-byte key", make([]byte, 31), nonce, testKID, testWDEK, "ns", "1", ErrKeySize, nil},
		{"33-byte key", make([]byte, 33), nonce, testKID, testWDEK, "ns", "1", ErrKeySize, nil},
		{"nonce 11", testKey(), nonce[:11], testKID, testWDEK, "ns", "1", ErrNonceLength, ErrMalformed},
		{"nonce 16", testKey(), make([]byte, 16), testKID, testWDEK, "ns", "1", ErrNonceLength, ErrMalformed},
		{"empty kid", testKey(), nonce, "", testWDEK, "ns", "1", ErrKIDLength, ErrMalformed},
		{"kid 2049", testKey(), nonce, strings.Repeat("k", MaxKIDLen+1), testWDEK, "ns", "1", ErrKIDLength, ErrMalformed},
		{"kid not utf-8", testKey(), nonce, "\xff", testWDEK, "ns", "1", ErrKIDEncoding, ErrMalformed},
		{"alias name", testKey(), nonce, "alias/payments", testWDEK, "ns", "1", ErrKIDAlias, nil},
		{"alias arn", testKey(), nonce, "arn:aws:kms:us-east-1:000000000000:alias/payments", testWDEK, "ns", "1", ErrKIDAlias, nil},
		{"empty wdek", testKey(), nonce, testKID, nil, "ns", "1", ErrWDEKLength, ErrMalformed},
		{"wdek 4097", testKey(), nonce, testKID, make([]byte, MaxWDEKLen+1), "ns", "1", ErrWDEKLength, ErrMalformed},
		{"namespace too long", testKey(), nonce, testKID, testWDEK, strings.Repeat("n", MaxAADFieldLen+1), "1", ErrAADField, nil},
		{"row id too long", testKey(), nonce, testKID, testWDEK, "ns", strings.Repeat("1", MaxAADFieldLen+1), ErrAADField, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := Seal(tt.dek, tt.nonce, SealOptions{KID: tt.kid, WDEK: tt.wdek, Namespace: tt.ns, RowID: tt.row}, []byte("tok"))
			if !errors.Is(err, tt.want) || e != nil {
				t.Fatalf("Seal = %+v, %v; want %v", e, err, tt.want)
			}
			if got := errors.Is(err, ErrMalformed); got != (tt.alsoMalformed != nil) {
				t.Errorf("errors.Is(%v, ErrMalformed) = %v, want %v", err, got, tt.alsoMalformed != nil)
			}
			if len(tt.nonce) == NonceSize {
				if e, err := SealRandom(tt.dek, SealOptions{KID: tt.kid, WDEK: tt.wdek, Namespace: tt.ns, RowID: tt.row}, []byte("tok")); !errors.Is(err, tt.want) {
					t.Errorf("SealRandom = %+v, %v; want %v", e, err, tt.want)
				}
			}
		})
	}
}

// TestSealDoesNotAlias: the envelope owns its bytes.
func TestSealDoesNotAlias(t *testing.T) {
	t.Parallel()
	nonce := bytes.Repeat([]byte{7}, NonceSize)
	wdek := bytes.Clone(testWDEK)
	pt := []byte("tok_visa")
	e, err := Seal(testKey(), nonce, SealOptions{KID: testKID, WDEK: wdek, Namespace: "ns", RowID: "1"}, pt)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	want, _ := e.Marshal()
	clear(nonce)
	clear(wdek)
	clear(pt)
	if got, _ := e.Marshal(); !bytes.Equal(got, want) {
		t.Errorf("clearing Seal's arguments changed the envelope")
	}
}

func TestSealRandomRoundTrip(t *testing.T) {
	t.Parallel()
	for _, pt := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte{0xAB}, 10000)} {
		e, err := SealRandom(testKey(), SealOptions{KID: testKID, WDEK: testWDEK, Namespace: "payment_methods", RowID: "7"}, pt)
		if err != nil {
			t.Fatalf("SealRandom(%d bytes): %v", len(pt), err)
		}
		if got, want := len(e.Ciphertext), len(pt)+TagSize; got != want {
			t.Errorf("ciphertext is %d bytes, want %d", got, want)
		}
		b, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		p, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		got, err := Open(p, testKey(), "payment_methods", "7")
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("Open = %x, %v; want %x", got, err, pt)
		}
	}
}

func TestOpenValidation(t *testing.T) {
	t.Parallel()
	e, err := SealRandom(testKey(), SealOptions{KID: testKID, WDEK: testWDEK, Namespace: "ns", RowID: "1"}, []byte("tok"))
	if err != nil {
		t.Fatalf("SealRandom: %v", err)
	}
	badNonce := *e
	badNonce.Nonce = e.Nonce[:8]
	shortCT := *e
	shortCT.Ciphertext = e.Ciphertext[:TagSize-1]
	badVersion := *e
	badVersion.Version = 2
	tests := []struct {
		name string
		e    *Envelope
		dek  []byte
		ns   string
		want error
	}{
		{"nil envelope", nil, testKey(), "ns", ErrMalformed},
		{"aes-128 key", e, testKey()[:16], "ns", ErrKeySize},
		{"short nonce", &badNonce, testKey(), "ns", ErrNonceLength},
		{"short ciphertext", &shortCT, testKey(), "ns", ErrCiphertextShort},
		{"version 2", &badVersion, testKey(), "ns", ErrVersion},
		{"namespace too long", e, testKey(), strings.Repeat("n", MaxAADFieldLen+1), ErrAADField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Open(tt.e, tt.dek, tt.ns, "1")
			if !errors.Is(err, tt.want) || got != nil {
				t.Errorf("Open = %x, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestRewrap(t *testing.T) {
	t.Parallel()
	dek := testKey()
	e, err := SealRandom(dek, SealOptions{KID: testKID, WDEK: testWDEK, Namespace: "payment_methods", RowID: "1"}, []byte("tok"))
	if err != nil {
		t.Fatalf("SealRandom: %v", err)
	}
	orig, _ := e.Marshal()
	const newKID = "arn:aws:kms:us-east-1:000000000000:key/11111111-2222-3333-4444-555555555555"
	newWDEK := bytes.Repeat([]byte{0x5A}, 190)

	r, err := e.Rewrap(newKID, newWDEK)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if r.KID != newKID || !bytes.Equal(r.WDEK, newWDEK) || !bytes.Equal(r.Nonce, e.Nonce) ||
		!bytes.Equal(r.Ciphertext, e.Ciphertext) || r.Version != e.Version || r.Alg != e.Alg {
		t.Fatalf("Rewrap = %+v; want kid %q, new wdek, same version/alg/nonce/ct as %+v", r, newKID, e)
	}
	if got, err := Open(r, dek, "payment_methods", "1"); err != nil || string(got) != "tok" {
		t.Errorf("Open(rewrapped) = %q, %v; want %q", got, err, "tok")
	}
	// No aliasing either way.
	clear(newWDEK)
	r.Nonce[0] ^= 0xFF
	r.Ciphertext[0] ^= 0xFF
	if got, _ := e.Marshal(); !bytes.Equal(got, orig) {
		t.Errorf("changing the rewrapped envelope changed the original")
	}
	if r.WDEK[0] != 0x5A {
		t.Errorf("rewrapped wdek aliases the argument")
	}

	tests := []struct {
		name string
		kid  string
		wdek []byte
		want error
	}{
		{"empty kid", "", testWDEK, ErrKIDLength},
		{"alias kid", "alias/payments-new", testWDEK, ErrKIDAlias},
		{"alias arn kid", "arn:aws:kms:eu-west-1:000000000000:alias/payments-new", testWDEK, ErrKIDAlias},
		{"empty wdek", newKID, nil, ErrWDEKLength},
		{"wdek 4097", newKID, make([]byte, MaxWDEKLen+1), ErrWDEKLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if r, err := e.Rewrap(tt.kid, tt.wdek); !errors.Is(err, tt.want) || r != nil {
				t.Errorf("Rewrap = %+v, %v; want %v", r, err, tt.want)
			}
		})
	}
}

// TestErrorsDoNotLeak drives every error path that has a key, token or wdek
// in reach and checks the message carries none of them in any usual encoding.
func TestErrorsDoNotLeak(t *testing.T) {
	t.Parallel()
	dek := testKey()
	token := []byte("tok_4242424242424242")
	wdek := bytes.Repeat([]byte{0xD1, 0x3E}, 92)
	e, err := SealRandom(dek, SealOptions{KID: testKID, WDEK: wdek, Namespace: "payment_methods", RowID: "1"}, token)
	if err != nil {
		t.Fatalf("SealRandom: %v", err)
	}
	b, _ := e.Marshal()
	badVersion := bytes.Clone(b)
	badVersion[0] = 9
	wrongKey := bytes.Clone(dek)
	wrongKey[0] ^= 1

	var errs []error
	add := func(_ any, err error) { errs = append(errs, err) }
	add(Open(e, wrongKey, "payment_methods", "1"))
	add(Open(e, dek, "payment_methods", "2"))
	add(Open(e, dek[:31], "payment_methods", "1"))
	add(Open(e, append(bytes.Clone(dek), dek...), "payment_methods", "1"))
	add(Seal(dek, dek[:11], SealOptions{KID: testKID, WDEK: wdek, Namespace: "ns", RowID: "1"}, token))
	add(Seal(dek[:16], make([]byte, NonceSize), SealOptions{KID: testKID, WDEK: wdek, Namespace: "ns", RowID: "1"}, token))
	add(Parse(badVersion))
	add(Parse(b[:len(b)-len(token)-3]))
	add(NewSealer(dek[:24], testKID, wdek, 0))

	secrets := map[string][]byte{"dek": dek, "wrong dek": wrongKey, "token": token, "wdek": wdek}
	for i, err := range errs {
		if err == nil {
			t.Fatalf("case %d: got nil error", i)
		}
		msg := err.Error()
		for name, s := range secrets {
			for _, enc := range encodings(s) {
				if strings.Contains(msg, enc) {
					t.Errorf("case %d: error %q contains the %s", i, msg, name)
				}
			}
		}
	}
}

// encodings returns the ways a secret could show up in text: raw, hex (both
// cases), base64 (four alphabets) and the decimal []byte form, for the whole
// secret and for its first 8 bytes.
func encodings(s []byte) []string {
	var out []string
	for _, p := range [][]byte{s, s[:min(8, len(s))]} {
		var dec []string
		for _, c := range p {
			dec = append(dec, strconv.Itoa(int(c)))
		}
		out = append(out,
			string(p),
			hex.EncodeToString(p),
			strings.ToUpper(hex.EncodeToString(p)),
			base64.StdEncoding.EncodeToString(p)[:len(p)*4/3],
			base64.URLEncoding.EncodeToString(p)[:len(p)*4/3],
			strings.Join(dec, " "),
			strings.Join(dec, ", "),
		)
	}
	return out
}

// TestGroupByWDEK: envelopes sharing a wrapped key form one group, groups
// in first-seen order, rows in order, nil envelopes left out.
func TestGroupByWDEK(t *testing.T) {
	a, b, c := &Envelope{WDEK: []byte("a")}, &Envelope{WDEK: []byte("b")}, &Envelope{WDEK: []byte("c")}
	got := GroupByWDEK([]*Envelope{b, nil, a, b, c, nil, a, b})
	want := []WDEKGroup{{[]byte("b"), []int{0, 3, 7}}, {[]byte("a"), []int{2, 6}}, {[]byte("c"), []int{4}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GroupByWDEK = %v, want %v", got, want)
	}
	if g := GroupByWDEK([]*Envelope{nil, nil}); len(g) != 0 {
		t.Errorf("GroupByWDEK of nils = %v, want none", g)
	}
}

// TestAADAllocatesOnce: the AAD is built twice per rotated row (open, then
// seal), so it is sized once instead of grown from nil (three allocations).
func TestAADAllocatesOnce(t *testing.T) {
	ns, id := "payments.payment_methods", "0190b7d2-4c1e-7a55-8d2e-6b1f0c3a9e77"
	want, err := AAD(ns, id)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := AAD(ns, id); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 1 {
		t.Errorf("AAD made %.0f allocations per call, want 1", allocs)
	}
	if len(want) != 2+2+len(ns)+2+len(id) || cap(want) != len(want) {
		t.Errorf("AAD is %d bytes (capacity %d), want %d", len(want), cap(want), 2+2+len(ns)+2+len(id))
	}
}

// TestParseSharedAliasesItsInput: ParseShared reads the same fields as
// Parse, without the copy: its slices are windows on the input, capped so
// that an append to one field cannot overwrite the next.
func TestParseSharedAliasesItsInput(t *testing.T) {
	in := good([]byte(testKID), []byte{1, 2, 3}, 20)
	want := bytes.Clone(in)
	private, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := ParseShared(in)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(private, shared) {
		t.Fatalf("ParseShared = %+v, Parse = %+v", shared, private)
	}
	_ = append(shared.WDEK, 0xAA, 0xAA)
	_ = append(shared.Nonce, 0xBB)
	if !bytes.Equal(in, want) {
		t.Fatalf("an append to a shared field changed the input: %x, want %x", in, want)
	}
	in[len(in)-1] ^= 0xFF
	if shared.Ciphertext[len(shared.Ciphertext)-1] != in[len(in)-1] {
		t.Error("ParseShared's ciphertext does not alias the input")
	}
	if private.Ciphertext[len(private.Ciphertext)-1] == in[len(in)-1] {
		t.Error("Parse's ciphertext aliases the input")
	}
	if _, err := ParseShared(in[:5]); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseShared of 5 bytes: %v, want ErrMalformed", err)
	}
	allocs := testing.AllocsPerRun(100, func() { _, _ = ParseShared(want) })
	if allocs > 2 { // the Envelope and its KID string
		t.Errorf("ParseShared made %.0f allocations, want at most 2", allocs)
	}
}
