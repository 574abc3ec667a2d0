package tokentable

import "encoding/json"

// The audit contract: the rows the engine writes into the audit table (in
// the page's transaction, so exactly once per rotated row) and that verify
// reads back. Every row has actor_type ActorSystem, the token table's id in
// the audit id column, an action and AuditDetails as its details.
const (
	// ActionReencrypted is written once per rotated row.
	ActionReencrypted = "token_reencrypted"
	// ActionReencryptFailed is written once per row a run quarantines (the
	// first time it does), with DetailErrorClass added to the details.
	ActionReencryptFailed = "token_reencrypt_failed"
	// ActorSystem is the actor_type of every row the engine writes.
	ActorSystem = "system"
)

// The keys of the details (jsonb), as AuditDetails marshals them.
const (
	DetailRunID      = "run_id"
	DetailPass       = "pass"
	DetailMode       = "mode"
	DetailOldKeyARN  = "old_key_arn"
	DetailNewKeyARN  = "new_key_arn"
	DetailErrorClass = "error_class" // ActionReencryptFailed only: the row's Class
)

// AuditDetails are the details of every audit row of one run and pass.
type AuditDetails struct {
	RunID     string `json:"run_id"`
	Pass      int    `json:"pass"`
	Mode      string `json:"mode"` // rekey or rewrap
	OldKeyARN string `json:"old_key_arn"`
	NewKeyARN string `json:"new_key_arn"`
}

// JSON is d as the engine passes it to the audit statements.
func (d AuditDetails) JSON() []byte {
	b, err := json.Marshal(d)
	if err != nil { // strings and an int: cannot fail
		panic(err)
	}
	return b
}
