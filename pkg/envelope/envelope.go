package envelope

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Format constants of envelope v1.
const (
	Version1     byte = 0x01 // the only version this package reads and writes
	AlgAES256GCM byte = 0x01 // AES-256-GCM, 32-byte key, 12-byte nonce, 16-byte tag

	MinKIDLen  = 1    // smallest kid_len
	MaxKIDLen  = 2048 // largest kid_len
	MinWDEKLen = 1    // smallest wdek_len
	MaxWDEKLen = 4096 // largest wdek_len

	KeySize   = 32 // AES-256 data key
	NonceSize = 12 // GCM standard nonce
	TagSize   = 16 // GCM tag, the minimum length of Ciphertext

	// MaxAADFieldLen is the largest namespace or row id the u16 prefix of
	// the AAD can describe.
	MaxAADFieldLen = 0xFFFF

	// headerSize is version, alg, kid_len and wdek_len; MinSize adds the
	// smallest kid and wdek, the nonce and the tag of an empty token.
	headerSize = 1 + 1 + 2 + 2
	// MinSize is the length of the smallest well-formed envelope.
	MinSize = headerSize + MinKIDLen + MinWDEKLen + NonceSize + TagSize
)

// Envelope is one parsed (or about to be marshalled) v1 envelope.
type Envelope struct {
	Version    byte   // Version1
	Alg        byte   // AlgAES256GCM
	KID        string // resolved ARN of the KMS key that wrapped the data key
	WDEK       []byte // KMS CiphertextBlob of the data key
	Nonce      []byte // NonceSize bytes
	Ciphertext []byte // AES-GCM ciphertext followed by the TagSize-byte tag
}

// Parse decodes one v1 envelope. Every failure is an error matching
// [ErrMalformed] and a more precise sentinel; Parse never panics.
//
// The returned Envelope does not alias b: its byte slices point into one
// private copy, so the caller may reuse or overwrite b immediately.
func Parse(b []byte) (*Envelope, error) { return parse(b, true) }

// ParseShared is [Parse] without the private copy: the Envelope's WDEK,
// Nonce and Ciphertext alias b, which must not change while the Envelope is
// in use. It is for a caller that owns b and only reads it, as a rotation
// does with the token it read: a page's 1,000 copies were about a quarter of
// the bytes a second rotation allocated.
func ParseShared(b []byte) (*Envelope, error) { return parse(b, false) }

func parse(b []byte, private bool) (*Envelope, error) {
	l, err := scan(b)
	if err != nil {
		return nil, err
	}
	// One private copy (unless shared); full slice expressions keep an
	// append to one field from overwriting the next.
	buf := b
	if private {
		buf = bytes.Clone(b)
	}
	return &Envelope{
		Version:    Version1,
		Alg:        AlgAES256GCM,
		KID:        string(b[l.kidOff : l.kidOff+l.kidLen]),
		WDEK:       buf[l.wdekOff : l.wdekOff+l.wdekLen : l.wdekOff+l.wdekLen],
		Nonce:      buf[l.nonceOff : l.nonceOff+NonceSize : l.nonceOff+NonceSize],
		Ciphertext: buf[l.ctOff:len(buf):len(buf)],
	}, nil
}

// fields is where a token's fields are, as scan found them.
type fields struct {
	kidOff, kidLen, wdekOff, wdekLen, nonceOff, ctOff int
}

// scan checks b against the v1 layout and returns where its fields are,
// without allocating (but for an error).
func scan(b []byte) (fields, error) {
	var l fields
	if len(b) < 1 {
		return l, fmt.Errorf("%w: empty input", ErrTruncated)
	}
	if b[0] != Version1 {
		return l, fmt.Errorf("%w: 0x%02x at offset 0", ErrVersion, b[0])
	}
	if len(b) < 2 {
		return l, fmt.Errorf("%w: %d bytes, no alg", ErrTruncated, len(b))
	}
	if b[1] != AlgAES256GCM {
		return l, fmt.Errorf("%w: 0x%02x at offset 1", ErrAlg, b[1])
	}
	off := 2
	if len(b) < off+2 {
		return l, fmt.Errorf("%w: %d bytes, kid_len at offset %d", ErrTruncated, len(b), off)
	}
	kidLen := int(binary.BigEndian.Uint16(b[off:]))
	if kidLen < MinKIDLen || kidLen > MaxKIDLen {
		return l, fmt.Errorf("%w: kid_len %d at offset %d, want %d..%d", ErrKIDLength, kidLen, off, MinKIDLen, MaxKIDLen)
	}
	off += 2
	if len(b)-off < kidLen {
		return l, fmt.Errorf("%w: kid_len %d at offset %d runs past the end (%d bytes)", ErrTruncated, kidLen, off-2, len(b))
	}
	if !utf8.Valid(b[off : off+kidLen]) {
		return l, fmt.Errorf("%w: kid at offset %d", ErrKIDEncoding, off)
	}
	l.kidOff, l.kidLen = off, kidLen
	off += kidLen
	if len(b)-off < 2 {
		return l, fmt.Errorf("%w: %d bytes, wdek_len at offset %d", ErrTruncated, len(b), off)
	}
	wdekLen := int(binary.BigEndian.Uint16(b[off:]))
	if wdekLen < MinWDEKLen || wdekLen > MaxWDEKLen {
		return l, fmt.Errorf("%w: wdek_len %d at offset %d, want %d..%d", ErrWDEKLength, wdekLen, off, MinWDEKLen, MaxWDEKLen)
	}
	off += 2
	if len(b)-off < wdekLen {
		return l, fmt.Errorf("%w: wdek_len %d at offset %d runs past the end (%d bytes)", ErrTruncated, wdekLen, off-2, len(b))
	}
	l.wdekOff, l.wdekLen = off, wdekLen
	off += wdekLen
	if len(b)-off < NonceSize {
		return l, fmt.Errorf("%w: %d bytes, nonce at offset %d needs %d", ErrTruncated, len(b), off, NonceSize)
	}
	l.nonceOff = off
	off += NonceSize
	if ctLen := len(b) - off; ctLen < TagSize {
		return l, fmt.Errorf("%w: %d bytes at offset %d, want at least %d", ErrCiphertextShort, ctLen, off, TagSize)
	}
	l.ctOff = off
	return l, nil
}

// validate applies the layout rules to an Envelope value. Errors match
// ErrMalformed.
func (e *Envelope) validate() error {
	if e == nil {
		return fmt.Errorf("%w: nil envelope", ErrMalformed)
	}
	if e.Version != Version1 {
		return fmt.Errorf("%w: 0x%02x", ErrVersion, e.Version)
	}
	if e.Alg != AlgAES256GCM {
		return fmt.Errorf("%w: 0x%02x", ErrAlg, e.Alg)
	}
	if err := validateKID(e.KID); err != nil {
		return err
	}
	if err := validateWDEK(e.WDEK); err != nil {
		return err
	}
	if len(e.Nonce) != NonceSize {
		return fmt.Errorf("%w: got %d bytes", ErrNonceLength, len(e.Nonce))
	}
	if len(e.Ciphertext) < TagSize {
		return fmt.Errorf("%w: %d bytes, want at least %d", ErrCiphertextShort, len(e.Ciphertext), TagSize)
	}
	return nil
}

func validateKID(kid string) error {
	if len(kid) < MinKIDLen || len(kid) > MaxKIDLen {
		return fmt.Errorf("%w: kid is %d bytes, want %d..%d", ErrKIDLength, len(kid), MinKIDLen, MaxKIDLen)
	}
	if !utf8.ValidString(kid) {
		return ErrKIDEncoding
	}
	return nil
}

func validateWDEK(wdek []byte) error {
	if len(wdek) < MinWDEKLen || len(wdek) > MaxWDEKLen {
		return fmt.Errorf("%w: wdek is %d bytes, want %d..%d", ErrWDEKLength, len(wdek), MinWDEKLen, MaxWDEKLen)
	}
	return nil
}

// validateNewKID is validateKID plus the writer-side rule that kid is the
// resolved key, not an alias. Parse and Marshal do not apply it: existing
// envelopes are read and re-encoded as they are.
func validateNewKID(kid string) error {
	if err := validateKID(kid); err != nil {
		return err
	}
	if strings.HasPrefix(kid, "alias/") || strings.Contains(kid, ":alias/") {
		return ErrKIDAlias
	}
	return nil
}

// Size returns the encoded length of e. It does not validate e.
func (e *Envelope) Size() int {
	return headerSize + len(e.KID) + len(e.WDEK) + len(e.Nonce) + len(e.Ciphertext)
}

// Marshal encodes e after checking the same rules as [Parse]; errors match
// [ErrMalformed]. The result is freshly allocated and aliases nothing in e.
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	return e.appendTo(make([]byte, 0, e.Size())), nil
}

// MarshalAppend appends the encoding of e to dst and returns the extended
// slice, after the same checks as Marshal. On error dst is returned unchanged.
func (e *Envelope) MarshalAppend(dst []byte) ([]byte, error) {
	if err := e.validate(); err != nil {
		return dst, err
	}
	return e.appendTo(dst), nil
}

func (e *Envelope) appendTo(dst []byte) []byte {
	dst = append(dst, e.Version, e.Alg)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(e.KID)))
	dst = append(dst, e.KID...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(e.WDEK)))
	dst = append(dst, e.WDEK...)
	dst = append(dst, e.Nonce...)
	return append(dst, e.Ciphertext...)
}

// Rewrap returns a new envelope with e's version, alg, nonce and ciphertext
// and the given kid and wdek: the envelope side of a rewrap rotation, after
// KMS ReEncrypt has produced newWDEK under the key newKID. e is not modified
// and the result aliases neither e nor newWDEK.
//
// newKID must be a resolved key ARN ([ErrKIDAlias] for an alias).
func (e *Envelope) Rewrap(newKID string, newWDEK []byte) (*Envelope, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	if err := validateNewKID(newKID); err != nil {
		return nil, fmt.Errorf("new kid: %w", err)
	}
	if err := validateWDEK(newWDEK); err != nil {
		return nil, fmt.Errorf("new wdek: %w", err)
	}
	return &Envelope{
		Version:    e.Version,
		Alg:        e.Alg,
		KID:        newKID,
		WDEK:       bytes.Clone(newWDEK),
		Nonce:      bytes.Clone(e.Nonce),
		Ciphertext: bytes.Clone(e.Ciphertext),
	}, nil
}
