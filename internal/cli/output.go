package cli

// Helpers shared by the operator commands (plan, status, verify, keys):
// number and duration formatting for people, JSON for machines, and the
// few lookups every one of them starts with.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/reencrypt/reencrypt/internal/textfmt"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// writeJSON prints v indented, for `--json`.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// num formats an integer with thousands separators: 1234567 → "1,234,567".
func num(n int64) string { return textfmt.Num(n) }

// human formats a duration for an operator: "45s", "12m30s", "3h05m", "2d04h".
// A negative, infinite or NaN duration is "-".
func human(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	d = d.Round(time.Hour)
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// seconds turns a float number of seconds into a duration; "-" (negative)
// for infinity or NaN.
func seconds(s float64) time.Duration {
	if math.IsNaN(s) || math.IsInf(s, 0) || s > float64(math.MaxInt64/int64(time.Second)) {
		return -1
	}
	return time.Duration(s * float64(time.Second))
}

// round2 keeps JSON numbers readable.
func round2(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return math.Round(f*100) / 100
}

// inspectTable opens the database and checks the configured token table.
func (a *app) inspectTable(ctx context.Context) (*tokentable.Table, error) {
	db, err := a.db(ctx)
	if err != nil {
		return nil, err
	}
	if err := db.Ping(ctx); err != nil {
		return nil, tempErr(fmt.Errorf("cannot reach the database (check DATABASE_URL): %w", err))
	}
	return tokentable.Inspect(ctx, db, a.tableSpec())
}

// resolveKey resolves a configured key reference to its ARN with one
// DescribeKey, whatever the key's state (verify and the registry read the
// state themselves). A reference that already is a key ARN is resolved too:
// the check that the key exists is worth the call.
func (a *app) resolveKey(ctx context.Context, name, ref string) (kmsclient.Key, error) {
	if ref == "" {
		return kmsclient.Key{}, configError("%s is required", name)
	}
	api, err := a.kms(ctx)
	if err != nil {
		return kmsclient.Key{}, err
	}
	k, err := kmsclient.ResolveKey(ctx, api, ref) // classifies: key (77) or transient (75)
	if err != nil {
		return k, fmt.Errorf("%s %q: %w", name, ref, err)
	}
	return k, nil
}

// tempErr marks an environment failure worth a retry (batch.Transient,
// exit 75).
func tempErr(err error) error { return batch.Transient(err) }

// shortTime prints a database timestamp in UTC, to the second.
func shortTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// dash prints "-" for an empty string.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesHuman writes a byte count in binary units: 1.2 GiB.
func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
