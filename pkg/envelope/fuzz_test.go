package envelope

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzParse: Parse never panics; every error matches ErrMalformed; whatever
// Parse accepts marshals back to exactly the input, parses again to an equal
// Envelope, and does not alias the input. The seed corpus is every envelope in
// the shared vectors, so `go test` runs all of them through these properties.
func FuzzParse(f *testing.F) {
	vf := loadVectors(f)
	for _, v := range vf.Valid {
		f.Add([]byte(v.Envelope))
	}
	for _, v := range vf.MustRejectParse {
		f.Add([]byte(v.Envelope))
	}
	for _, v := range vf.MustFailDecrypt {
		f.Add([]byte(v.Envelope))
	}
	f.Add([]byte(vf.Rewrap.Before))
	f.Add([]byte(vf.Rewrap.After))

	f.Fuzz(func(t *testing.T, in []byte) {
		b := bytes.Clone(in) // Parse a private copy so it can be overwritten below.
		e, err := Parse(b)
		if err != nil {
			if e != nil {
				t.Fatalf("Parse returned %+v and error %v", e, err)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse error %v does not match ErrMalformed", err)
			}
			return
		}
		got, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed envelope: %v", err)
		}
		if !bytes.Equal(got, in) {
			t.Fatalf("Marshal(Parse(b)) = %x\nwant               %x", got, in)
		}
		e2, err := Parse(got)
		if err != nil {
			t.Fatalf("Parse(Marshal(e)): %v", err)
		}
		if !reflect.DeepEqual(e2, e) {
			t.Fatalf("Parse(Marshal(e)) = %+v\nwant             %+v", e2, e)
		}

		// No aliasing: overwriting the input leaves the Envelope as it was.
		for i := range b {
			b[i] ^= 0xFF
		}
		again, err := e.Marshal()
		if err != nil || !bytes.Equal(again, in) {
			t.Fatalf("after overwriting the input, Marshal = %x, %v; want %x", again, err, in)
		}
	})
}
