package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// The vector file is a byte-identical copy of shared/design/vectors-v1.json,
// made by an independent implementation of envelope-v1.md. Decoding is strict
// (unknown fields are an error) and every section must be non-empty, so a
// renamed field or section fails the test instead of skipping cases.

type vectorFile struct {
	Spec            string         `json:"spec"`
	Valid           []validVector  `json:"valid"`
	MustRejectParse []rejectVector `json:"must_reject_parse"`
	MustFailDecrypt []failVector   `json:"must_fail_decrypt"`
	Rewrap          rewrapVector   `json:"rewrap"`
}

type validVector struct {
	Name      string   `json:"name"`
	DEK       hexBytes `json:"dek"`
	Nonce     hexBytes `json:"nonce"`
	KID       string   `json:"kid"`
	WDEK      hexBytes `json:"wdek"`
	Namespace string   `json:"namespace"`
	RowID     string   `json:"row_id"`
	Plaintext hexBytes `json:"plaintext"`
	Envelope  hexBytes `json:"envelope"`
}

type rejectVector struct {
	Name     string   `json:"name"`
	Envelope hexBytes `json:"envelope"`
}

type failVector struct {
	Name      string   `json:"name"`
	DEK       hexBytes `json:"dek"`
	Namespace string   `json:"namespace"`
	RowID     string   `json:"row_id"`
	Envelope  hexBytes `json:"envelope"`
}

type rewrapVector struct {
	Name    string   `json:"name"`
	Before  hexBytes `json:"before"`
	NewKID  string   `json:"new_kid"`
	NewWDEK hexBytes `json:"new_wdek"`
	After   hexBytes `json:"after"`
}

// hexBytes decodes a JSON hex string; a missing field stays nil, which the
// checks below tell apart from an empty (present) one.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	if d == nil {
		d = []byte{}
	}
	*h = d
	return nil
}

func loadVectors(tb testing.TB) *vectorFile {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "vectors-v1.json"))
	if err != nil {
		tb.Fatalf("read vectors: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var vf vectorFile
	if err := dec.Decode(&vf); err != nil {
		tb.Fatalf("decode vectors: %v", err)
	}
	if got, want := vf.Spec, "envelope-v1.md"; got != want {
		tb.Fatalf("vectors spec = %q, want %q", got, want)
	}
	if len(vf.Valid) == 0 || len(vf.MustRejectParse) == 0 || len(vf.MustFailDecrypt) == 0 {
		tb.Fatalf("empty vector section: valid=%d must_reject_parse=%d must_fail_decrypt=%d",
			len(vf.Valid), len(vf.MustRejectParse), len(vf.MustFailDecrypt))
	}
	for _, v := range vf.Valid {
		if v.Name == "" || v.DEK == nil || v.Nonce == nil || v.KID == "" || v.WDEK == nil ||
			v.Namespace == "" || v.RowID == "" || v.Plaintext == nil || v.Envelope == nil {
			tb.Fatalf("valid vector %q has a missing field", v.Name)
		}
	}
	for _, v := range vf.MustRejectParse {
		if v.Name == "" || v.Envelope == nil {
			tb.Fatalf("must_reject_parse vector %q has a missing field", v.Name)
		}
	}
	for _, v := range vf.MustFailDecrypt {
		if v.Name == "" || v.DEK == nil || v.Namespace == "" || v.RowID == "" || v.Envelope == nil {
			tb.Fatalf("must_fail_decrypt vector %q has a missing field", v.Name)
		}
	}
	r := vf.Rewrap
	if r.Name == "" || r.Before == nil || r.NewKID == "" || r.NewWDEK == nil || r.After == nil {
		tb.Fatalf("rewrap vector %q has a missing field", r.Name)
	}
	return &vf
}

func TestVectorsValid(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	for _, v := range vf.Valid {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			e, err := Seal(v.DEK, v.Nonce, SealOptions{KID: v.KID, WDEK: v.WDEK, Namespace: v.Namespace, RowID: v.RowID}, v.Plaintext)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			got, err := e.Marshal()
			if err != nil {
				t.Fatalf("Marshal(Seal): %v", err)
			}
			if !bytes.Equal(got, v.Envelope) {
				t.Fatalf("Seal = %x\nwant  %x", got, []byte(v.Envelope))
			}

			p, err := Parse(v.Envelope)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(p, e) {
				t.Errorf("Parse = %+v\nwant    %+v", p, e)
			}
			if p.KID != v.KID || !bytes.Equal(p.WDEK, v.WDEK) || !bytes.Equal(p.Nonce, v.Nonce) {
				t.Errorf("Parse fields: kid %q wdek %x nonce %x, want %q %x %x",
					p.KID, p.WDEK, p.Nonce, v.KID, []byte(v.WDEK), []byte(v.Nonce))
			}
			round, err := p.Marshal()
			if err != nil {
				t.Fatalf("Marshal(Parse): %v", err)
			}
			if !bytes.Equal(round, v.Envelope) {
				t.Errorf("Marshal(Parse) = %x\nwant            %x", round, []byte(v.Envelope))
			}

			pt, err := Open(p, v.DEK, v.Namespace, v.RowID)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(pt, v.Plaintext) {
				t.Errorf("Open = %x, want %x", pt, []byte(v.Plaintext))
			}
		})
	}
}

func TestVectorsMustRejectParse(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	for _, v := range vf.MustRejectParse {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			e, err := Parse(v.Envelope)
			if err == nil {
				t.Fatalf("Parse = %+v, nil; want an error", e)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse error = %v; want one matching ErrMalformed", err)
			}
			if e != nil {
				t.Errorf("Parse returned %+v with error %v; want nil", e, err)
			}
		})
	}
}

func TestVectorsMustFailDecrypt(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	for _, v := range vf.MustFailDecrypt {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			e, err := Parse(v.Envelope)
			if err != nil {
				t.Fatalf("Parse: %v; want success", err)
			}
			pt, err := Open(e, v.DEK, v.Namespace, v.RowID)
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("Open = %x, %v; want ErrAuth", pt, err)
			}
			if pt != nil {
				t.Errorf("Open returned plaintext %x with ErrAuth", pt)
			}
		})
	}
}

func TestVectorsRewrap(t *testing.T) {
	t.Parallel()
	vf := loadVectors(t)
	r := vf.Rewrap

	// The vector names no data key: find the valid vector sealed as `before`.
	var orig *validVector
	for i := range vf.Valid {
		if bytes.Equal(vf.Valid[i].Envelope, r.Before) {
			orig = &vf.Valid[i]
		}
	}
	if orig == nil {
		t.Fatalf("rewrap %q: no valid vector has envelope == before", r.Name)
	}

	before, err := Parse(r.Before)
	if err != nil {
		t.Fatalf("Parse(before): %v", err)
	}
	after, err := before.Rewrap(r.NewKID, r.NewWDEK)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	got, err := after.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if !bytes.Equal(got, r.After) {
		t.Fatalf("Rewrap = %x\nwant     %x", got, []byte(r.After))
	}
	if !bytes.Equal(after.Nonce, before.Nonce) || !bytes.Equal(after.Ciphertext, before.Ciphertext) {
		t.Errorf("Rewrap changed nonce or ciphertext")
	}
	if b2, _ := before.Marshal(); !bytes.Equal(b2, r.Before) {
		t.Errorf("Rewrap modified its receiver")
	}

	pa, err := Parse(r.After)
	if err != nil {
		t.Fatalf("Parse(after): %v", err)
	}
	if got, want := pa.KID, r.NewKID; got != want {
		t.Errorf("after kid = %q, want %q", got, want)
	}
	pt, err := Open(pa, orig.DEK, orig.Namespace, orig.RowID)
	if err != nil {
		t.Fatalf("Open(after) with the original dek: %v", err)
	}
	if !bytes.Equal(pt, orig.Plaintext) {
		t.Errorf("Open(after) = %x, want %x", pt, []byte(orig.Plaintext))
	}
}
