package envelope

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
)

// A rekey opens each row under the old data key, seals it under the new one
// and opens the result again to check it: three uses of the same row's AAD,
// and a plaintext, a sealed envelope and its encoding per row. The calls in
// this file let such a caller build the AAD once into a buffer it reuses
// (AppendAAD), open into a buffer it reuses and clears (Opener.OpenAppend),
// and seal straight into the token's encoding (Sealer.SealToken): one
// allocation per row, the token, where Open, Seal and Marshal took nine.
// They write and read exactly what Open, Seal and Marshal do
// (TestRowKeyCallsMatch).

// AppendAAD appends [AAD](namespace, rowID) to dst.
func AppendAAD(dst []byte, namespace, rowID string) ([]byte, error) {
	return appendAAD(dst, namespace, rowID)
}

// checkAAD refuses what AppendAAD cannot have built: sealing under an empty
// or foreign AAD would write a token bound to no row.
func checkAAD(aad []byte) error {
	if len(aad) < aadFixedLen || aad[0] != Version1 || aad[1] != AlgAES256GCM {
		return fmt.Errorf("%w: not an AAD from AppendAAD", ErrAADField)
	}
	ns := int(binary.BigEndian.Uint16(aad[2:]))
	if len(aad) < 4+ns+2 || len(aad) != 4+ns+2+int(binary.BigEndian.Uint16(aad[4+ns:])) {
		return fmt.Errorf("%w: not an AAD from AppendAAD", ErrAADField)
	}
	return nil
}

// OpenAppend is [Opener.Open] for the row whose AAD is aad (AppendAAD),
// appending the plaintext to dst. The caller clears what it appended.
func (o *Opener) OpenAppend(dst []byte, e *Envelope, aad []byte) ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	if err := checkAAD(aad); err != nil {
		return nil, err
	}
	pt, err := o.aead.Open(dst, e.Nonce, e.Ciphertext, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

// SealToken is [Sealer.Seal] for the row whose AAD is aad (AppendAAD),
// returning the envelope's encoding ([Envelope.Marshal]) in one allocation.
func (s *Sealer) SealToken(aad, plaintext []byte) ([]byte, error) {
	if err := checkAAD(aad); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.canSeal(); err != nil {
		return nil, err
	}
	tok := make([]byte, 0, headerSize+len(s.kid)+len(s.wdek)+NonceSize+len(plaintext)+TagSize)
	tok = append(tok, Version1, AlgAES256GCM)
	tok = binary.BigEndian.AppendUint16(tok, uint16(len(s.kid)))
	tok = append(tok, s.kid...)
	tok = binary.BigEndian.AppendUint16(tok, uint16(len(s.wdek)))
	tok = append(tok, s.wdek...)
	n := len(tok)
	tok = tok[:n+NonceSize]
	nonce := tok[n:]
	_, _ = rand.Read(nonce) // never fails (crypto/rand, Go 1.24+)
	// The use is counted once a nonce has been drawn for this key.
	s.used++
	return s.aead.Seal(tok, nonce, plaintext, aad), nil
}

// OpenToken opens a token this Sealer sealed, for the row whose AAD is aad,
// appending the plaintext to dst: the check that what was sealed opens
// again, reading the token in place. It does not count as a use.
func (s *Sealer) OpenToken(dst, token, aad []byte) ([]byte, error) {
	if err := checkAAD(aad); err != nil {
		return nil, err
	}
	aead, err := s.openAEAD()
	if err != nil {
		return nil, err
	}
	f, err := scan(token)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(dst, token[f.nonceOff:f.ctOff], token[f.ctOff:], aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}
