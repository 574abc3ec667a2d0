package kmsclient

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// Key is a KMS key reference resolved once at start. Envelopes always record
// ARN: an alias moves during a rotation, an ARN does not.
type Key struct {
	Ref   string         // what the operator configured: id, ARN, alias name or alias ARN
	ARN   string         // the resolved key ARN
	ID    string         // the key id (the last part of the ARN)
	State types.KeyState // Enabled, Disabled, PendingDeletion, ...
	Spec  types.KeySpec
	Usage types.KeyUsageType
}

// Alias returns the alias the key was configured by, or "".
func (k Key) Alias() string {
	if i := strings.Index(k.Ref, "alias/"); i >= 0 {
		return k.Ref[i:]
	}
	return ""
}

// Resolve turns a key id, key ARN, alias name or alias ARN into the key's ARN
// and state with one DescribeKey call.
func Resolve(ctx context.Context, api KMS, ref string) (Key, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return Key{}, fmt.Errorf("empty key reference")
	}
	out, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref)})
	if err != nil {
		return Key{}, wrap("DescribeKey", ref, err)
	}
	md := out.KeyMetadata
	if md == nil || aws.ToString(md.Arn) == "" {
		return Key{}, fmt.Errorf("kms DescribeKey %s: answer has no key ARN", ref)
	}
	return Key{
		Ref:   ref,
		ARN:   aws.ToString(md.Arn),
		ID:    aws.ToString(md.KeyId),
		State: md.KeyState,
		Spec:  md.KeySpec,
		Usage: md.KeyUsage,
	}, nil
}

// ResolveKey is Resolve with its failure classified, the one resolver of
// the engine and the commands: a key KMS refuses (ErrKeyUnusable: not
// found, denied, disabled) stays as it is, anything else is marked
// ErrUnavailable (worth a retry), as both did before — DescribeKey names no
// row, so an odd answer is the environment's, not a bug to stop on. It does
// not check the key's state: verify and the registry read it themselves,
// the engine calls Usable.
func ResolveKey(ctx context.Context, api KMS, ref string) (Key, error) {
	k, err := Resolve(ctx, api, ref)
	if err != nil && !errors.Is(err, ErrKeyUnusable) {
		return k, &unavailableError{err}
	}
	return k, err
}

// unavailableError marks a failure ErrUnavailable whatever its code.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string        { return e.err.Error() }
func (e *unavailableError) Unwrap() error        { return e.err }
func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }

// Usable reports why a resolved key cannot protect data keys, or nil.
func (k Key) Usable() error {
	if k.State != types.KeyStateEnabled {
		return &Error{Op: "DescribeKey", KeyARN: k.ARN, Code: "KMSInvalidStateException",
			Err: fmt.Errorf("key %s (%s) is %s, not Enabled", k.Ref, k.ARN, k.State)}
	}
	if k.Spec != "" && k.Spec != types.KeySpecSymmetricDefault {
		return &Error{Op: "DescribeKey", KeyARN: k.ARN, Code: "InvalidKeyUsageException",
			Err: fmt.Errorf("key %s is %s, not a symmetric encryption key", k.Ref, k.Spec)}
	}
	if k.Usage != "" && k.Usage != types.KeyUsageTypeEncryptDecrypt {
		return &Error{Op: "DescribeKey", KeyARN: k.ARN, Code: "InvalidKeyUsageException",
			Err: fmt.Errorf("key %s has usage %s, not ENCRYPT_DECRYPT", k.Ref, k.Usage)}
	}
	return nil
}
