package kmsclient

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
)

// The direct path's hand-written request bodies say what encoding/json says
// for the same structs: the same fields, values and omissions, including
// strings that need escaping and invalid UTF-8. (Bytes may differ only where
// encoding/json escapes HTML characters, which JSON does not require.)
func TestRequestBodiesAreEncodingJSON(t *testing.T) {
	n := int32(32)
	odd := []string{"", "plain", `quote " and back\slash`, "tab\tnewline\n\x00\x1f", "<html> & \u2028", "ünïcödé 鍵", "bad \xff\xfe utf-8", "alias/payment-tokens"}
	var bodies []requestBody
	for _, s := range odd {
		ec := map[string]string{"namespace": s, s + "k": "v", "z": "last"}
		bodies = append(bodies,
			decryptBody{CiphertextBlob: []byte(s + "\x00\xff blob"), KeyId: s, EncryptionContext: ec, EncryptionAlgorithm: s},
			generateBody{KeyId: s, KeySpec: s, NumberOfBytes: &n, EncryptionContext: ec},
			reEncryptBody{CiphertextBlob: []byte(s), SourceKeyId: s, DestinationKeyId: s, SourceEncryptionContext: ec,
				DestinationEncryptionContext: ec, SourceEncryptionAlgorithm: s, DestinationEncryptionAlgorithm: s},
		)
	}
	bodies = append(bodies, decryptBody{}, generateBody{}, reEncryptBody{}, decryptBody{CiphertextBlob: []byte{}})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		s := string(b)
		bodies = append(bodies, decryptBody{CiphertextBlob: b, KeyId: s, EncryptionContext: map[string]string{s: s}})
	}
	for _, body := range bodies {
		got := body.appendJSON(nil)
		want, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(got) {
			t.Fatalf("%T: not JSON: %s", body, got)
		}
		var g, w map[string]any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%T:\n got  %s\n want %s", body, got, want)
		}
	}
}
