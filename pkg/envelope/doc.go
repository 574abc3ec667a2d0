// Package envelope implements version 1 of the token envelope: the single,
// self-describing byte string that holds one encrypted payment token in the
// database. The batch engine writes it; the live tokenization API, in any
// language, must be able to read it with nothing but this description, a KMS
// client and an AES-GCM library. The shared contract is
// shared/design/envelope-v1.md and the test vectors in testdata/vectors-v1.json
// were produced by an independent implementation of it.
//
// # Byte layout
//
// Integers are big-endian and unsigned. There is no padding and no trailer: the
// ciphertext runs to the end of the string.
//
//	offset            size      field     rule
//	0                 1         version   0x01 (Version1)
//	1                 1         alg       0x01 (AlgAES256GCM): 32-byte key, 12-byte nonce, 16-byte tag
//	2                 2         kid_len   1..2048
//	4                 kid_len   kid       UTF-8; the resolved ARN of the KMS key that wrapped the data key
//	4+K               2         wdek_len  1..4096
//	6+K               wdek_len  wdek      KMS CiphertextBlob of the 32-byte data key (DEK)
//	6+K+W             12        nonce     random, fresh for every encryption
//	18+K+W            rest      ct        AES-256-GCM ciphertext of the token, then the 16-byte tag; >= 16 bytes
//
// where K = kid_len and W = wdek_len. The smallest well-formed envelope is
// therefore MinSize (36) bytes: one byte of kid, one byte of wdek and an empty
// token. [Envelope.Ciphertext] holds ct and tag together, exactly as AES-GCM
// produces them.
//
// [Parse] refuses, with an error that matches [ErrMalformed] and never panics:
// an unknown version or alg, a kid_len or wdek_len that is zero or above its
// maximum, a length that runs past the end of the input, fewer than 16 bytes
// of ct, input shorter than the fixed part, and a kid that is not UTF-8.
// Each case also matches its own sentinel ([ErrVersion], [ErrAlg],
// [ErrKIDLength], [ErrWDEKLength], [ErrKIDEncoding], [ErrTruncated],
// [ErrCiphertextShort]).
//
// The version byte is checked first and nothing after it is read when it is
// unknown, so a later version is free to change everything else.
//
// # Associated data
//
// The AES-GCM associated data binds a ciphertext to its row:
//
//	AAD = version || alg || u16(len(ns)) || ns || u16(len(row_id)) || row_id
//
// ns is the namespace (by default "payment_methods", configurable per table)
// and row_id the row's primary key in canonical text: a UUID in lowercase
// 8-4-4-4-12 form, an integer in decimal. Both are length-prefixed, so no two
// different (ns, row_id) pairs give the same AAD. Moving an envelope to another
// row or another table makes [Open] fail with [ErrAuth]. This package does not
// canonicalise: "3F0E…" and "3f0e…" are two different rows, and the caller must
// pass the canonical text. Each field is limited to 65535 bytes by its u16
// prefix; [AAD] returns [ErrAADField] beyond that.
//
// # KMS encryption context
//
// This package never calls KMS, but every envelope's wdek is produced and
// consumed under the same rule, which callers must follow: every KMS call on a
// wdek (GenerateDataKey, Encrypt, Decrypt, ReEncrypt) passes the encryption
// context {"namespace": ns}, and Decrypt passes KeyId = kid so that a wdek is
// only ever unwrapped by the key the envelope names.
//
// # Rotation modes
//
// Rewrap (new KMS key, same data key): KMS ReEncrypt turns wdek under the old
// key into a wdek under the new one, and [Envelope.Rewrap] builds the new
// envelope, which keeps version, alg, nonce and ct and carries the new kid and
// wdek. Neither the data key nor the token is ever in this process's memory.
//
// Rekey (new KMS key and new data key): unwrap the old wdek, [Open] the token,
// and seal it again with a [Sealer] holding a data key generated under the new
// KMS key, with a fresh nonce. One data key may serve many rows (one per batch,
// say); each row still gets its own nonce and its own AAD. A caller that does
// this for many rows can build each row's AAD once ([AppendAAD]) and open,
// seal and check in buffers it reuses ([Opener.OpenAppend],
// [Sealer.SealToken], [Sealer.OpenToken]): the same bytes as Open, Seal and
// Marshal, with the new token as the only allocation per row.
//
// A row is under key K when its kid equals K's ARN, so a rotation from OLD to
// NEW touches only rows under OLD: rerunning it is a no-op for finished rows,
// and the rollback is the same rotation with OLD and NEW swapped.
//
// # Invariants
//
// kid and wdek are outside the AAD. That is what lets a rewrap replace them
// without the data key. It also means AES-GCM does not protect them: flipping
// a bit of kid or wdek leaves an envelope that still parses and still opens
// with the same data key. Their integrity comes from KMS instead: a wdek is an
// authenticated KMS ciphertext bound to the encryption context, and Decrypt
// with KeyId = kid fails for a wdek that key did not produce. The only way to
// get a data key is through KMS, so a tampered kid or wdek yields no key, or a
// different one under which ct does not authenticate.
//
// Nonces are 12 bytes from crypto/rand, drawn afresh for every encryption
// ([SealRandom], [Sealer.Seal]); they are never counters and never reused.
// [Seal] takes the nonce as an argument only so the test vectors can be
// reproduced; a caller that passes the same nonce twice under one data key
// loses both confidentiality and integrity of those tokens.
//
// A data key is used for a bounded number of encryptions. NIST SP 800-38D
// allows at most 2^32 encryptions under one key with random nonces; a [Sealer]
// refuses with [ErrKeyExhausted] after its cap, DefaultMaxUses (2^20) unless
// configured, and no cap may exceed MaxUsesCeiling (2^28). At 2^20 random
// nonces the chance of any repeat is about 2^-57.
//
// Only AES-256 is accepted: a key that is not exactly 32 bytes is refused with
// [ErrKeySize], even though crypto/aes would accept 16 or 24 bytes.
//
// # Memory and secrets
//
// [Parse] copies its input: the returned Envelope never aliases b, which the
// caller may reuse at once; [ParseShared] does not copy, for a caller that
// owns b and leaves it unchanged. [Envelope.Marshal], [Seal], [SealRandom],
// [Envelope.Rewrap], [Sealer.Seal] and [Sealer.SealToken] return fresh memory
// that aliases none of their arguments; a plaintext appended to a caller's
// buffer ([Opener.OpenAppend], [Sealer.OpenToken]) is the caller's to clear.
//
// Errors never contain key bytes, token bytes, wdek bytes or kid text; they
// give field names, lengths and offsets only. A [DataKey] and a [Sealer] print
// as "[redacted]" through fmt (every verb), slog and encoding/json. [Zero] and
// [Sealer.Destroy] overwrite key bytes this package owns; the expanded AES key
// schedule inside crypto/aes cannot be reached from here and is left to the
// garbage collector, so zeroing narrows, but does not close, the window in
// which a key lingers in memory.
package envelope
