package kmsclient

import (
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
)

// Error classes. Callers match them with errors.Is.
var (
	// ErrKeyUnusable: the key is disabled, pending deletion, not found, or
	// this identity may not use it. Retrying will not help; a human must act.
	ErrKeyUnusable = errors.New("kms key unusable")
	// ErrBadCiphertext: KMS refused this one wrapped key (corrupt, wrapped under
	// another key, or another encryption context). It is a property of the
	// row, not of the environment.
	ErrBadCiphertext = errors.New("kms rejected the wrapped data key")
	// ErrUnavailable: KMS could not answer this time (throttling, an
	// internal error, a timeout, a 5xx or a dropped connection) after the
	// SDK's own retries. A later try may succeed.
	ErrUnavailable = errors.New("kms unavailable")
)

// Error is a failed KMS call. It names the operation and key ARN and carries
// the AWS error code; it never holds key material.
type Error struct {
	Op     string // "Decrypt", "GenerateDataKey", ...
	KeyARN string // the key the call was about
	Code   string // AWS error code, or "" for transport errors
	Err    error
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("kms %s with key %s: %s: %v", e.Op, e.KeyARN, e.Code, e.Err)
	}
	return fmt.Sprintf("kms %s with key %s: %v", e.Op, e.KeyARN, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrKeyUnusable), errors.Is(err, ErrBadCiphertext)
// and errors.Is(err, ErrUnavailable) classify by AWS error code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrKeyUnusable:
		return isKeyUnusable(e.Code)
	case ErrBadCiphertext:
		return isBadCiphertext(e.Code)
	case ErrUnavailable:
		return isUnavailable(e)
	}
	return false
}

func wrap(op, keyARN string, err error) error {
	if err == nil {
		return nil
	}
	e := &Error{Op: op, KeyARN: keyARN, Err: err}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		e.Code = ae.ErrorCode()
	}
	return e
}

func isKeyUnusable(code string) bool {
	switch code {
	case "DisabledException", "KMSInvalidStateException", "NotFoundException",
		"AccessDeniedException", "InvalidKeyUsageException",
		"UnrecognizedClientException", "InvalidArnException":
		return true
	}
	return false
}

// isUnavailable recognises the failures a later try may get past: KMS's
// own transient codes, and what the SDK's standard retryer retries (5xx
// answers, throttling codes, connection errors) — opt-in, like pgconn's
// SafeToRetry: an error it does not know is not transient. A cancelled
// call is not (the SDK says so first).
func isUnavailable(e *Error) bool {
	if isKeyUnusable(e.Code) || isBadCiphertext(e.Code) {
		return false
	}
	switch e.Code {
	case "ThrottlingException", "KMSInternalException", "DependencyTimeoutException", "KeyUnavailableException":
		return true
	}
	return retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(e.Err) == aws.TrueTernary
}

func isBadCiphertext(code string) bool {
	return code == "InvalidCiphertextException" || code == "IncorrectKeyException"
}
