package kmsclient

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// DataKeySize is the size of an AES-256 data key.
const DataKeySize = 32

// Client performs the data-key operations of envelope v1: every call carries
// the encryption context {"namespace": ns}, and Decrypt pins KeyId.
type Client struct {
	api   KMS
	ns    string
	ec    map[string]string // {"namespace": ns}, shared by every call and never written
	cache *Cache
}

// NewClient returns a Client for namespace ns. cache may be nil (no caching).
func NewClient(api KMS, ns string, cache *Cache) *Client {
	return &Client{api: api, ns: ns, ec: map[string]string{"namespace": ns}, cache: cache}
}

// API is the underlying KMS interface.
func (c *Client) API() KMS { return c.api }

func (c *Client) encryptionContext() map[string]string { return c.ec }

// GenerateDataKey returns a fresh data key under keyARN, in plaintext and
// wrapped. The caller clears the plaintext.
func (c *Client) GenerateDataKey(ctx context.Context, keyARN string) (DataKey, []byte, error) {
	out, err := c.api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(keyARN),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: c.encryptionContext(),
	})
	if err != nil {
		return nil, nil, wrap("GenerateDataKey", keyARN, err)
	}
	dek := DataKey(out.Plaintext)
	if len(dek) != DataKeySize || len(out.CiphertextBlob) == 0 {
		dek.Zero()
		return nil, nil, &Error{Op: "GenerateDataKey", KeyARN: keyARN,
			Err: fmt.Errorf("answer has a %d-byte key and a %d-byte blob", len(dek), len(out.CiphertextBlob))}
	}
	return dek, out.CiphertextBlob, nil
}

// Decrypt unwraps wdek with keyARN (and only keyARN) for one row: the key
// is cached only if it was seen before (see Cache). The result is the
// caller's own copy: it clears it after use, whatever the cache does.
func (c *Client) Decrypt(ctx context.Context, keyARN string, wdek []byte) (DataKey, error) {
	return c.DecryptRows(ctx, keyARN, wdek, 1)
}

// DecryptRows is Decrypt for a key that rows rows need now (a page's group
// under one wrapped key); the cache keeps keys needed by several rows.
func (c *Client) DecryptRows(ctx context.Context, keyARN string, wdek []byte, rows int) (DataKey, error) {
	if dek, ok := c.cache.get(keyARN, wdek); ok {
		return dek, nil
	}
	out, err := c.api.Decrypt(ctx, &kms.DecryptInput{
		CiphertextBlob:      wdek,
		KeyId:               aws.String(keyARN),
		EncryptionContext:   c.encryptionContext(),
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
	})
	if err != nil {
		return nil, wrap("Decrypt", keyARN, err)
	}
	dek := DataKey(out.Plaintext)
	if len(dek) != DataKeySize {
		dek.Zero()
		return nil, &Error{Op: "Decrypt", KeyARN: keyARN, Code: "InvalidCiphertextException",
			Err: fmt.Errorf("wrapped key holds %d bytes, not a %d-byte data key", len(out.Plaintext), DataKeySize)}
	}
	if c.cache.admit(keyARN, wdek, rows) {
		c.cache.put(keyARN, wdek, dek)
	}
	return dek, nil
}

// ReEncrypt moves wdek from key from to key to inside KMS: the data key is
// never in this process's memory.
func (c *Client) ReEncrypt(ctx context.Context, wdek []byte, from, to string) ([]byte, error) {
	out, err := c.api.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob:                 wdek,
		SourceKeyId:                    aws.String(from),
		DestinationKeyId:               aws.String(to),
		SourceEncryptionContext:        c.encryptionContext(),
		DestinationEncryptionContext:   c.encryptionContext(),
		SourceEncryptionAlgorithm:      types.EncryptionAlgorithmSpecSymmetricDefault,
		DestinationEncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
	})
	if err != nil {
		return nil, wrap("ReEncrypt", from, err)
	}
	if len(out.CiphertextBlob) == 0 {
		return nil, &Error{Op: "ReEncrypt", KeyARN: from, Err: fmt.Errorf("answer has an empty blob")}
	}
	return out.CiphertextBlob, nil
}
