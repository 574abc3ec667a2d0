package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
)

// AAD returns the associated data that binds a v1 ciphertext to its row:
//
//	version || alg || u16(len(namespace)) || namespace || u16(len(rowID)) || rowID
//
// rowID must already be canonical (lowercase UUID, decimal integer); AAD
// does not change it. A field longer than MaxAADFieldLen bytes is refused
// with [ErrAADField].
func AAD(namespace, rowID string) ([]byte, error) {
	// Sized once: growing from nil took three allocations per call, and a
	// rotation computes the AAD twice per row (open, then seal).
	return appendAAD(make([]byte, 0, aadFixedLen+len(namespace)+len(rowID)), namespace, rowID)
}

// aadFixedLen is the AAD's bytes besides its two fields: version, algorithm
// and the two fields' 16-bit lengths.
const aadFixedLen = 2 + 2 + 2

func appendAAD(dst []byte, namespace, rowID string) ([]byte, error) {
	if len(namespace) > MaxAADFieldLen {
		return nil, fmt.Errorf("%w: namespace is %d bytes", ErrAADField, len(namespace))
	}
	if len(rowID) > MaxAADFieldLen {
		return nil, fmt.Errorf("%w: row id is %d bytes", ErrAADField, len(rowID))
	}
	dst = append(dst, Version1, AlgAES256GCM)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(namespace)))
	dst = append(dst, namespace...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(rowID)))
	dst = append(dst, rowID...)
	return dst, nil
}

// newAEAD returns AES-256-GCM for dek, refusing any key that is not exactly
// KeySize bytes (crypto/aes would also take AES-128 and AES-192 keys).
func newAEAD(dek []byte) (cipher.AEAD, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("%w: got %d bytes", ErrKeySize, len(dek))
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		// Unreachable for a 32-byte key; the message of crypto/aes holds
		// only the key length.
		return nil, fmt.Errorf("envelope: aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("envelope: gcm: %w", err)
	}
	return aead, nil
}

// SealOptions is what [Seal] and [SealRandom] write into an envelope beside
// the ciphertext (KID, WDEK) and bind it to through the AAD (Namespace,
// RowID): named, since three of them are strings that a positional call
// could swap without a compile error.
type SealOptions struct {
	KID       string // the resolved ARN of the key that wraps the data key
	WDEK      []byte // the data key wrapped under KID
	Namespace string // AAD: the token's namespace (by convention the table)
	RowID     string // AAD: the token's row id
}

// Seal encrypts plaintext with the data key dek under the given nonce and
// returns the envelope carrying o.KID and o.WDEK, bound to (o.Namespace,
// o.RowID). The output is a pure function
// of the inputs, which is what the test vectors need.
//
// The caller is responsible for never using the same nonce twice with the
// same dek; outside tests use [SealRandom] or a [Sealer], which draw a fresh
// random nonce for every call.
//
// o.KID must be the resolved key ARN ([ErrKIDAlias] for an alias). The result
// aliases none of the arguments.
func Seal(dek, nonce []byte, o SealOptions, plaintext []byte) (*Envelope, error) {
	aead, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	return sealWith(aead, nonce, o, plaintext)
}

// SealRandom is [Seal] with a fresh 12-byte nonce from crypto/rand.
func SealRandom(dek []byte, o SealOptions, plaintext []byte) (*Envelope, error) {
	aead, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, NonceSize)
	// crypto/rand.Read never returns an error and never returns short
	// reads (it crashes the program irrecoverably instead).
	_, _ = rand.Read(nonce)
	return sealWith(aead, nonce, o, plaintext)
}

func sealWith(aead cipher.AEAD, nonce []byte, o SealOptions, plaintext []byte) (*Envelope, error) {
	kid, wdek, namespace, rowID := o.KID, o.WDEK, o.Namespace, o.RowID
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: got %d bytes", ErrNonceLength, len(nonce))
	}
	if err := validateNewKID(kid); err != nil {
		return nil, err
	}
	if err := validateWDEK(wdek); err != nil {
		return nil, err
	}
	aad, err := AAD(namespace, rowID)
	if err != nil {
		return nil, err
	}
	return &Envelope{
		Version:    Version1,
		Alg:        AlgAES256GCM,
		KID:        kid,
		WDEK:       bytes.Clone(wdek),
		Nonce:      bytes.Clone(nonce),
		Ciphertext: aead.Seal(make([]byte, 0, len(plaintext)+TagSize), nonce, plaintext, aad),
	}, nil
}

// Open authenticates and decrypts e with the data key dek for the row
// (namespace, rowID). Any authentication failure (wrong key, another row or
// namespace, an altered nonce or ciphertext) is [ErrAuth]; an invalid e
// matches [ErrMalformed]. No error carries key or token bytes.
//
// Open does not look at e.KID or e.WDEK, which are outside the AAD: the caller
// got dek by asking KMS to decrypt e.WDEK with KeyId e.KID.
func Open(e *Envelope, dek []byte, namespace, rowID string) ([]byte, error) {
	aead, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	return openWith(aead, e, namespace, rowID)
}

func openWith(aead cipher.AEAD, e *Envelope, namespace, rowID string) ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	aad, err := AAD(namespace, rowID)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(make([]byte, 0, len(e.Ciphertext)-TagSize), e.Nonce, e.Ciphertext, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

// Opener opens many envelopes under one data key: the AES key schedule and
// GCM tables are built once, not once per envelope as Open does (a page of
// rows often shares one data key). It holds key material: it prints as
// "[redacted]", and the caller drops it with the data key.
type Opener struct {
	aead cipher.AEAD
}

// NewOpener prepares dek for Open; dek must be KeySize bytes.
func NewOpener(dek []byte) (*Opener, error) {
	aead, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	return &Opener{aead: aead}, nil
}

// Open is [Open] with the Opener's data key.
func (o *Opener) Open(e *Envelope, namespace, rowID string) ([]byte, error) {
	return openWith(o.aead, e, namespace, rowID)
}

func (o *Opener) String() string                { return redacted }
func (o *Opener) GoString() string              { return redacted }
func (o *Opener) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(redacted)) }
func (o *Opener) LogValue() slog.Value          { return slog.StringValue(redacted) }
func (o *Opener) MarshalJSON() ([]byte, error)  { return []byte(`"` + redacted + `"`), nil }
