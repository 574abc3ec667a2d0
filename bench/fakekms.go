package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// fakeKMS is an instant in-process KMS for the Postgres-ceiling scenario:
// the engine runs its own path, AES and self-check included, with KMS calls
// that cost a few microseconds, so what is left is what Postgres can take.
// It wraps data keys with AES-GCM under a master key of this process, bound
// to the key id and encryption context as KMS binds them; a blob from
// another KMS, key or context is refused with InvalidCiphertextException.
// It accepts any key id (a key ARN of the real emulator is used as is).
type fakeKMS struct{ aead cipher.AEAD }

var _ kmsclient.KMS = (*fakeKMS)(nil)

func newFakeKMS() *fakeKMS {
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	block, _ := aes.NewCipher(master)
	aead, _ := cipher.NewGCM(block)
	return &fakeKMS{aead: aead}
}

// aad binds a blob to its key and encryption context.
func aad(keyID string, ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(keyID)
	for _, k := range keys {
		b.WriteString("\x00" + k + "=" + ec[k])
	}
	return []byte(b.String())
}

func (f *fakeKMS) wrap(keyID string, ec map[string]string, plain []byte) []byte {
	nonce := make([]byte, f.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return f.aead.Seal(nonce, nonce, plain, aad(keyID, ec))
}

func (f *fakeKMS) unwrap(keyID string, ec map[string]string, blob []byte) ([]byte, error) {
	n := f.aead.NonceSize()
	if len(blob) < n {
		return nil, invalidCiphertext
	}
	plain, err := f.aead.Open(nil, blob[:n], blob[n:], aad(keyID, ec))
	if err != nil {
		return nil, invalidCiphertext
	}
	return plain, nil
}

var invalidCiphertext = &smithy.GenericAPIError{Code: "InvalidCiphertextException", Message: "fake kms: blob does not open"}

func (f *fakeKMS) DescribeKey(_ context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	id := aws.ToString(in.KeyId)
	return &kms.DescribeKeyOutput{KeyMetadata: &types.KeyMetadata{
		KeyId: aws.String(id), Arn: aws.String(id), KeyState: types.KeyStateEnabled, Enabled: true,
		KeySpec: types.KeySpecSymmetricDefault, KeyUsage: types.KeyUsageTypeEncryptDecrypt,
	}}, nil
}

func (f *fakeKMS) GenerateDataKey(_ context.Context, in *kms.GenerateDataKeyInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	dek := make([]byte, kmsclient.DataKeySize)
	_, _ = rand.Read(dek)
	id := aws.ToString(in.KeyId)
	return &kms.GenerateDataKeyOutput{KeyId: aws.String(id), Plaintext: dek,
		CiphertextBlob: f.wrap(id, in.EncryptionContext, dek)}, nil
}

func (f *fakeKMS) Decrypt(_ context.Context, in *kms.DecryptInput, _ ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	id := aws.ToString(in.KeyId)
	dek, err := f.unwrap(id, in.EncryptionContext, in.CiphertextBlob)
	if err != nil {
		return nil, err
	}
	return &kms.DecryptOutput{KeyId: aws.String(id), Plaintext: dek}, nil
}

func (f *fakeKMS) ReEncrypt(_ context.Context, in *kms.ReEncryptInput, _ ...func(*kms.Options)) (*kms.ReEncryptOutput, error) {
	from, to := aws.ToString(in.SourceKeyId), aws.ToString(in.DestinationKeyId)
	dek, err := f.unwrap(from, in.SourceEncryptionContext, in.CiphertextBlob)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	return &kms.ReEncryptOutput{KeyId: aws.String(to), SourceKeyId: aws.String(from),
		CiphertextBlob: f.wrap(to, in.DestinationEncryptionContext, dek)}, nil
}

// The key-administration calls are never made by the engine.
var errUnsupported = errors.New("fake kms: key administration is not supported")

func (f *fakeKMS) ScheduleKeyDeletion(context.Context, *kms.ScheduleKeyDeletionInput, ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error) {
	return nil, errUnsupported
}

func (f *fakeKMS) CancelKeyDeletion(context.Context, *kms.CancelKeyDeletionInput, ...func(*kms.Options)) (*kms.CancelKeyDeletionOutput, error) {
	return nil, errUnsupported
}

func (f *fakeKMS) EnableKey(context.Context, *kms.EnableKeyInput, ...func(*kms.Options)) (*kms.EnableKeyOutput, error) {
	return nil, errUnsupported
}

func (f *fakeKMS) ListAliases(context.Context, *kms.ListAliasesInput, ...func(*kms.Options)) (*kms.ListAliasesOutput, error) {
	return nil, errUnsupported
}
