package checkpoint

import "hash/fnv"

// KeyLockID is the Postgres advisory lock id for a KMS key ARN. The engine's
// page transactions take it shared for the key they write under; keys retire
// and keys schedule-deletion take it exclusive for the key they act on, so
// that no page writing under that key commits between their count and their
// status change. Both sides must derive it here.
func KeyLockID(keyARN string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("reencrypt.key\x00" + keyARN))
	return int64(h.Sum64())
}
