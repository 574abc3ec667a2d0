package kmsclient

import (
	"encoding/base64"
	"encoding/json"
	"unicode/utf8"
)

// answerFields is a direct-path answer (decryptAnswer and the others): where
// each field it knows goes, a string or a blob (base64 in JSON). ok is false
// for a field it does not know.
type answerFields interface {
	field(name []byte) (s *string, blob *[]byte, ok bool)
	reset()
}

// decodeAnswer fills a from a KMS answer. The answers of the direct path's
// calls are flat objects of plain strings, read here without encoding/json's
// reflection (about a tenth of a call's client CPU); anything else (an
// escape, a non-string value, a field a does not know, a name in another
// case, invalid UTF-8) goes to encoding/json, so the result is always
// encoding/json's (TestDecodeAnswerIsEncodingJSON).
func decodeAnswer(body []byte, a answerFields) error {
	if decodeFlat(body, a) {
		return nil
	}
	a.reset()
	return json.Unmarshal(body, a)
}

// decodeFlat is decodeAnswer's fast path; false means "not a flat object of
// plain strings with known fields" (a may then be half filled).
func decodeFlat(b []byte, a answerFields) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		name, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		val, j, ok := plainString(b, skipSpace(b, i+1))
		if !ok {
			return false
		}
		s, blob, known := a.field(name)
		switch {
		case !known:
			return false
		case s != nil:
			*s = string(val)
		case blob != nil:
			out := make([]byte, base64.StdEncoding.DecodedLen(len(val)))
			n, err := base64.StdEncoding.Decode(out, val)
			if err != nil {
				clear(out)
				return false
			}
			*blob = out[:n]
		}
		i = skipSpace(b, j)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		return i < len(b) && b[i] == '}' && skipSpace(b, i+1) == len(b)
	}
}

// plainString reads the JSON string at b[i]: its bytes (no quotes) and the
// index after it; ok is false when there is none, or it has an escape, a
// control character or invalid UTF-8.
func plainString(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			s = b[i+1 : j]
			return s, j + 1, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// reset zeroes a half-filled answer, clearing a plaintext key it holds.
func (a *decryptAnswer) reset() { clear(a.Plaintext); *a = decryptAnswer{} }
func (a *decryptAnswer) field(name []byte) (*string, *[]byte, bool) {
	switch string(name) {
	case "KeyId":
		return &a.KeyId, nil, true
	case "Plaintext":
		return nil, &a.Plaintext, true
	case "EncryptionAlgorithm":
		return &a.EncryptionAlgorithm, nil, true
	}
	return nil, nil, false
}

func (a *generateAnswer) reset() { clear(a.Plaintext); *a = generateAnswer{} }
func (a *generateAnswer) field(name []byte) (*string, *[]byte, bool) {
	switch string(name) {
	case "KeyId":
		return &a.KeyId, nil, true
	case "Plaintext":
		return nil, &a.Plaintext, true
	case "CiphertextBlob":
		return nil, &a.CiphertextBlob, true
	}
	return nil, nil, false
}

func (a *reEncryptAnswer) reset() { *a = reEncryptAnswer{} }
func (a *reEncryptAnswer) field(name []byte) (*string, *[]byte, bool) {
	switch string(name) {
	case "KeyId":
		return &a.KeyId, nil, true
	case "SourceKeyId":
		return &a.SourceKeyId, nil, true
	case "CiphertextBlob":
		return nil, &a.CiphertextBlob, true
	case "SourceEncryptionAlgorithm":
		return &a.SourceEncryptionAlgorithm, nil, true
	case "DestinationEncryptionAlgorithm":
		return &a.DestinationEncryptionAlgorithm, nil, true
	}
	return nil, nil, false
}
