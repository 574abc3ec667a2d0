package envelope

import "errors"

// ErrMalformed is matched (with errors.Is) by every error that says a byte
// string or an [Envelope] value breaks the v1 layout rules: every error from
// [Parse], and the same errors from [Envelope.Marshal], [Envelope.Rewrap],
// [Seal] and [Open] when given an invalid envelope or field. Callers classify
// with errors.Is(err, ErrMalformed) and refine with the sentinels below.
var ErrMalformed = errors.New("envelope: malformed")

// malformedError is the type of the layout sentinels. Each one is its own
// identity for errors.Is and also matches ErrMalformed.
type malformedError struct{ msg string }

func (e *malformedError) Error() string { return e.msg }

// Is reports whether target is ErrMalformed, so that every layout error
// matches it.
func (e *malformedError) Is(target error) bool { return target == ErrMalformed }

// Layout errors; each also matches [ErrMalformed].
var (
	// ErrTruncated: the input ends before the fixed part or before the
	// field a length promised.
	ErrTruncated error = &malformedError{"envelope: truncated"}
	// ErrVersion: the version byte is not Version1.
	ErrVersion error = &malformedError{"envelope: unknown version"}
	// ErrAlg: the alg byte is not AlgAES256GCM.
	ErrAlg error = &malformedError{"envelope: unknown alg"}
	// ErrKIDLength: kid_len is zero or above MaxKIDLen.
	ErrKIDLength error = &malformedError{"envelope: kid length out of range"}
	// ErrKIDEncoding: kid is not valid UTF-8.
	ErrKIDEncoding error = &malformedError{"envelope: kid is not valid UTF-8"}
	// ErrWDEKLength: wdek_len is zero or above MaxWDEKLen.
	ErrWDEKLength error = &malformedError{"envelope: wdek length out of range"}
	// ErrNonceLength: an Envelope value whose Nonce is not NonceSize bytes
	// (only from Marshal, Rewrap, Open and Seal; Parse reports a short nonce
	// as ErrTruncated).
	ErrNonceLength error = &malformedError{"envelope: nonce length is not 12"}
	// ErrCiphertextShort: ct is shorter than the 16-byte tag.
	ErrCiphertextShort error = &malformedError{"envelope: ciphertext shorter than the tag"}
)

// Errors that are not about the layout; none of them matches ErrMalformed.
var (
	// ErrAuth: AES-GCM authentication failed. The key is wrong, or the
	// envelope was sealed for another namespace or row id, or nonce or ct
	// were altered. Nothing more is said, on purpose.
	ErrAuth = errors.New("envelope: authentication failed")
	// ErrKeySize: a data key that is not exactly KeySize (32) bytes.
	ErrKeySize = errors.New("envelope: data key must be 32 bytes")
	// ErrAADField: a namespace or row id longer than MaxAADFieldLen bytes.
	ErrAADField = errors.New("envelope: aad field longer than 65535 bytes")
	// ErrKIDAlias: an attempt to write an envelope whose kid is a KMS alias
	// ("alias/…" or an alias ARN). kid must be the resolved key ARN, because
	// aliases move during a rotation. Parse does not apply this rule.
	ErrKIDAlias = errors.New("envelope: kid is a KMS alias, want the resolved key ARN")
	// ErrKeyExhausted: a Sealer has reached its cap of encryptions.
	ErrKeyExhausted = errors.New("envelope: data key use limit reached")
	// ErrSealerClosed: a Sealer used after Destroy or Close.
	ErrSealerClosed = errors.New("envelope: sealer destroyed")
	// ErrMaxUses: a Sealer cap above MaxUsesCeiling.
	ErrMaxUses = errors.New("envelope: sealer max uses above ceiling")
)
