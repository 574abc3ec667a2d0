package envelope

import (
	"bytes"
	"cmp"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"log/slog"
	"sync"
)

// Limits on how many envelopes one Sealer (one data key) may seal.
const (
	// DefaultMaxUses is the cap of a Sealer built with maxUses 0.
	DefaultMaxUses uint64 = 1 << 20
	// MaxUsesCeiling is the largest cap a Sealer accepts: 2^28, a sixteenth
	// of the 2^32 random-nonce encryptions NIST SP 800-38D allows per key.
	MaxUsesCeiling uint64 = 1 << 28
)

const redacted = "[redacted]"

// Zero overwrites b with zeros. Use it on every copy of a plaintext data key
// once it is no longer needed.
func Zero(b []byte) {
	clear(b)
}

// DataKey is a plaintext data key. It prints as "[redacted]" through fmt
// (every verb, including %x and %d), log/slog and encoding/json, so it cannot
// be logged by accident. It is still a []byte: a caller that converts it or
// indexes it gets the bytes.
type DataKey []byte

// Zero overwrites the key with zeros.
func (k DataKey) Zero() { Zero(k) }

// String implements fmt.Stringer.
func (k DataKey) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (k DataKey) GoString() string { return redacted }

// Format implements fmt.Formatter so that no verb prints the bytes.
func (k DataKey) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (k DataKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON keeps encoding/json from base64-encoding the key.
func (k DataKey) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText keeps text encoders from printing the key.
func (k DataKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Sealer seals many rows with one data key, as a rekey batch does: each call
// draws a fresh random nonce, and the number of calls is capped (see
// [DefaultMaxUses], [MaxUsesCeiling]). The AES-GCM instance is built once.
//
// A Sealer is safe for concurrent use; calls are serialised. Destroy (or
// Close) zeroes the Sealer's copy of the key and makes every later call fail
// with [ErrSealerClosed]. A Sealer prints as "[redacted]" through fmt, slog
// and encoding/json.
type Sealer struct {
	mu      sync.Mutex
	key     DataKey
	aead    cipher.AEAD
	kid     string
	wdek    []byte
	maxUses uint64
	used    uint64
}

// NewSealer returns a Sealer for the data key dek, which KMS wrapped into
// wdek under the key kid (a resolved key ARN). The Sealer keeps its own copy of
// dek; the caller should [Zero] its copy once NewSealer returns.
//
// maxUses caps the number of seals; 0 means [DefaultMaxUses], and a value
// above [MaxUsesCeiling] is refused with [ErrMaxUses].
func NewSealer(dek []byte, kid string, wdek []byte, maxUses uint64) (*Sealer, error) {
	if maxUses > MaxUsesCeiling {
		return nil, fmt.Errorf("%w: %d > %d", ErrMaxUses, maxUses, MaxUsesCeiling)
	}
	if err := validateNewKID(kid); err != nil {
		return nil, err
	}
	if err := validateWDEK(wdek); err != nil {
		return nil, err
	}
	aead, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	return &Sealer{
		key:     DataKey(bytes.Clone(dek)),
		aead:    aead,
		kid:     kid,
		wdek:    bytes.Clone(wdek),
		maxUses: cmp.Or(maxUses, DefaultMaxUses),
	}, nil
}

// Seal encrypts plaintext for the row (namespace, rowID) under a fresh random
// nonce. After MaxUses successful calls it returns [ErrKeyExhausted]; after
// Destroy it returns [ErrSealerClosed].
func (s *Sealer) Seal(namespace, rowID string, plaintext []byte) (*Envelope, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.canSeal(); err != nil {
		return nil, err
	}
	// Reject a bad row before spending a use.
	aad, err := AAD(namespace, rowID)
	if err != nil {
		return nil, err
	}
	// What the envelope owns (its wdek, nonce and ciphertext) is one
	// buffer, sealed in place: one allocation where copying each field took
	// three, for every row of a rekey.
	w := len(s.wdek)
	buf := make([]byte, w+NonceSize, w+NonceSize+len(plaintext)+TagSize)
	copy(buf, s.wdek)
	nonce := buf[w : w+NonceSize : w+NonceSize]
	_, _ = rand.Read(nonce) // never fails (crypto/rand, Go 1.24+)
	// The use is counted once a nonce has been drawn for this key.
	s.used++
	return &Envelope{
		Version:    Version1,
		Alg:        AlgAES256GCM,
		KID:        s.kid,
		WDEK:       buf[:w:w],
		Nonce:      nonce,
		Ciphertext: s.aead.Seal(buf[w+NonceSize:w+NonceSize], nonce, plaintext, aad),
	}, nil
}

// Open is [Open] with the Sealer's data key, for checking what was sealed.
// It does not count as a use.
func (s *Sealer) Open(e *Envelope, namespace, rowID string) ([]byte, error) {
	aead, err := s.openAEAD()
	if err != nil {
		return nil, err
	}
	return openWith(aead, e, namespace, rowID)
}

// canSeal is why the next seal must be refused, if it must; s.mu is held.
func (s *Sealer) canSeal() error {
	if s.aead == nil {
		return ErrSealerClosed
	}
	if s.used >= s.maxUses {
		return fmt.Errorf("%w: %d of %d", ErrKeyExhausted, s.used, s.maxUses)
	}
	return nil
}

// openAEAD is the Sealer's AES-GCM for opening, or ErrSealerClosed.
func (s *Sealer) openAEAD() (cipher.AEAD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aead == nil {
		return nil, ErrSealerClosed
	}
	return s.aead, nil
}

// KID returns the key ARN this Sealer writes into every envelope.
func (s *Sealer) KID() string { return s.kid }

// Used returns how many envelopes the Sealer has sealed.
func (s *Sealer) Used() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// MaxUses returns the Sealer's cap.
func (s *Sealer) MaxUses() uint64 { return s.maxUses }

// Destroy zeroes the Sealer's copy of the data key and drops its AES-GCM
// instance; later Seal and Open calls fail with [ErrSealerClosed]. It is
// idempotent. See the package doc for what zeroing cannot reach.
func (s *Sealer) Destroy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	Zero(s.key)
	s.key = nil
	s.aead = nil
}

// Close is Destroy, for use as an io.Closer; it always returns nil.
func (s *Sealer) Close() error {
	s.Destroy()
	return nil
}

// String implements fmt.Stringer.
func (s *Sealer) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (s *Sealer) GoString() string { return redacted }

// Format implements fmt.Formatter so that no verb prints the fields.
func (s *Sealer) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (s *Sealer) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler.
func (s *Sealer) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
