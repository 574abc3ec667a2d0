package kmsclient

import "github.com/reencrypt/reencrypt/pkg/envelope"

// DataKey is a plaintext data key; it redacts itself when printed and its
// owner clears it with Zero as soon as it is no longer needed.
type DataKey = envelope.DataKey
