package tokentable

import (
	"errors"

	"github.com/reencrypt/reencrypt/pkg/envelope"
)

// Class is the short class a row is quarantined under when its token cannot
// be rotated. It names the kind of fault, never key or token bytes. plan,
// status and verify report unreadable rows with the same words, so an
// operator can match them with the quarantine table and the
// token_reencrypt_failed audit rows.
type Class string

// The classes. The parse classes come from envelope.Parse (ParseClass),
// auth_failed from envelope.Open (OpenClass).
const (
	ClassNullToken      Class = "null_token"      // the token column is NULL
	ClassMalformed      Class = "malformed"       // not an envelope
	ClassTruncated      Class = "truncated"       // an envelope cut short
	ClassUnknownVersion Class = "unknown_version" // an envelope version this build does not read
	ClassUnknownAlg     Class = "unknown_alg"     // an algorithm this build does not know
	ClassUnreadable     Class = "unreadable"      // any other parse error
	ClassAuthFailed     Class = "auth_failed"     // wrong row, wrong namespace or altered bytes
	ClassKMSRejected    Class = "kms_rejected"    // KMS refused to unwrap the wrapped data key
)

// ParseClass is the class of an error of envelope.Parse (or Rewrap).
func ParseClass(err error) Class {
	switch {
	case errors.Is(err, envelope.ErrVersion):
		return ClassUnknownVersion
	case errors.Is(err, envelope.ErrAlg):
		return ClassUnknownAlg
	case errors.Is(err, envelope.ErrTruncated), errors.Is(err, envelope.ErrCiphertextShort):
		return ClassTruncated
	case errors.Is(err, envelope.ErrMalformed):
		return ClassMalformed
	}
	return ClassUnreadable
}

// OpenClass is the class of an error of envelope.Open: auth_failed when the
// token does not authenticate, else as ParseClass.
func OpenClass(err error) Class {
	if errors.Is(err, envelope.ErrAuth) {
		return ClassAuthFailed
	}
	return ParseClass(err)
}

// ParseToken parses one stored token. It returns the envelope, or the
// class the engine quarantines the row under (ClassNullToken for NULL).
// The envelope aliases token (envelope.ParseShared): every caller parses
// the token of a row it has just read and does not change.
func ParseToken(token []byte) (*envelope.Envelope, Class) {
	if token == nil {
		return nil, ClassNullToken
	}
	env, err := envelope.ParseShared(token)
	if err != nil {
		return nil, ParseClass(err)
	}
	return env, ""
}
