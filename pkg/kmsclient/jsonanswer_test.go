package kmsclient

import (
	"encoding/json"
	"reflect"
	"testing"
)

// decodeAnswer gives what encoding/json gives, error or value, for KMS
// answers as they come and for every shape its fast path leaves to
// encoding/json; and the answers KMS sends do take the fast path.
func TestDecodeAnswerIsEncodingJSON(t *testing.T) {
	const arn = "arn:aws:kms:eu-west-1:111122223333:key/0c5e6c4e-7d6a-4a52-9d3c-1f0d1c1e2f30"
	typical := map[string]string{
		"decrypt":   `{"KeyId":"` + arn + `","Plaintext":"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}`,
		"generate":  `{"CiphertextBlob":"AQIDBAUGBwgJCgsMDQ4PEA==","KeyId":"` + arn + `","Plaintext":"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="}`,
		"reencrypt": `{"CiphertextBlob":"AQIDBAUGBwgJCgsMDQ4PEA==","DestinationEncryptionAlgorithm":"SYMMETRIC_DEFAULT","KeyId":"` + arn + `","SourceEncryptionAlgorithm":"SYMMETRIC_DEFAULT","SourceKeyId":"` + arn + `"}`,
	}
	others := []string{
		`{}`, ` { } `, "{\n \"KeyId\" :\t\"k\" ,\r\n \"Plaintext\": \"AAEC\" }\n",
		`{"KeyId":"a\/b"}`, `{"KeyId":"\u00e9t\u00e9"}`, `{"KeyId":"k","Extra":{"nested":[1,2]}}`,
		`{"KeyId":"k","KeyMaterialId":"m"}`, `{"keyid":"lower case name"}`, `{"KeyId":"first","KeyId":"second"}`,
		`{"Plaintext":"not base64!"}`, `{"Plaintext":null}`, `{"KeyId":5}`, `{"KeyId":"bad ` + "\xff" + ` utf-8"}`,
		`{"KeyId":"k"} trailing`, `{"KeyId":"k"`, `{"KeyId":"k",}`, `{"KeyId" "k"}`, ``, `[]`, `null`,
		`{"CiphertextBlob":"","Plaintext":""}`, "{\"KeyId\":\"tab\tinside\"}",
	}
	type pair struct {
		name      string
		fast, ref func() answerFields
	}
	kinds := []pair{
		{"decrypt", func() answerFields { return &decryptAnswer{} }, func() answerFields { return &decryptAnswer{} }},
		{"generate", func() answerFields { return &generateAnswer{} }, func() answerFields { return &generateAnswer{} }},
		{"reencrypt", func() answerFields { return &reEncryptAnswer{} }, func() answerFields { return &reEncryptAnswer{} }},
	}
	for _, k := range kinds {
		if !decodeFlat([]byte(typical[k.name]), k.fast()) {
			t.Errorf("%s: a typical answer did not take the fast path", k.name)
		}
		bodies := append([]string{typical["decrypt"], typical["generate"], typical["reencrypt"]}, others...)
		for _, body := range bodies {
			got, want := k.fast(), k.ref()
			gerr := decodeAnswer([]byte(body), got)
			werr := json.Unmarshal([]byte(body), want)
			if (gerr == nil) != (werr == nil) {
				t.Errorf("%s %q: error %v, encoding/json %v", k.name, body, gerr, werr)
				continue
			}
			if werr == nil && !reflect.DeepEqual(got, want) {
				t.Errorf("%s %q:\n got  %+v\n want %+v", k.name, body, got, want)
			}
		}
	}
}
