package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/registry"
)

func init() {
	keysVars := vars(varsDB, varsTable, varsKMS)
	// keys alone lists the registry; its actions are sub-commands with
	// their own flags, and every flag may come before or after the action.
	keys := func(path []string, summary string, setup func(fs *pflag.FlagSet, o *keysOptions)) {
		registerCommand(command{path: path, summary: summary, long: keysUsage, vars: keysVars,
			setup: func(fs *pflag.FlagSet) runFunc {
				o := &keysOptions{action: path[len(path)-1]}
				fs.BoolVar(&o.json, "json", false, "print the result as JSON")
				if setup != nil {
					setup(fs, o)
				}
				return func(ctx context.Context, a *app, _ []string) error { return cmdKeys(ctx, a, *o) }
			}})
	}
	keyFlag := func(fs *pflag.FlagSet, o *keysOptions) {
		fs.StringVar(&o.key, "key", "", "the key: key id, key ARN, alias name or alias ARN (required)")
	}
	keys([]string{"keys"}, "the token_encryption_keys registry: list | begin | retire --key K | schedule-deletion --key K --pending-days N", nil)
	keys([]string{"keys", "list"}, "list the registry (the default)", nil)
	keys([]string{"keys", "begin"}, "OLD_KEY_ID → rotating, NEW_KEY_ID → active, in one transaction; records TABLE under both keys", nil)
	keys([]string{"keys", "retire"}, "mark --key retired; refused (exit 78) while any row is still under it", keyFlag)
	keys([]string{"keys", "schedule-deletion"}, "have KMS delete retired --key after --pending-days N (7..30)", func(fs *pflag.FlagSet, o *keysOptions) {
		keyFlag(fs, o)
		fs.IntVar(&o.days, "pending-days", 0, "days KMS waits before deleting the key, 7..30 (required); the deletion can be cancelled until then")
	})
}

// keysOptions are a keys command's action and flags.
type keysOptions struct {
	action string // keys (= list), list, begin, retire, schedule-deletion
	json   bool
	key    string
	days   int
}

const keysUsage = `The key registry and the key's life after a rotation:

  keys [list]                                the registry (list is the default)
  keys begin                                 OLD_KEY_ID → rotating, NEW_KEY_ID → active, in one transaction;
                                             records TABLE under both keys
  keys retire --key K                        mark K retired; refused (exit 78) while any row is still under K
                                             in TABLE or in any table recorded for K
  keys schedule-deletion --key K --pending-days N
                                             have KMS delete retired key K after N days (7..30, required);
                                             prints the counts first; refused (exit 78) unless K is
                                             retired and no row is under K

The registry is the table token_encryption_keys in TABLE_SCHEMA, created on
the first write (an existing one is used as it is, never altered). K is a key
id, key ARN, alias name or alias ARN. Rows are under K when their kid names K
by ARN, key id, alias or alias ARN (resolved with DescribeKey), or when a run
from K quarantined them and their token does not name another key.`

// cmdKeys runs one of the registry's actions, then lists the registry.
func cmdKeys(ctx context.Context, a *app, o keysOptions) error {
	action := o.action
	if action == "keys" {
		action = "list"
	}
	if (action == "retire" || action == "schedule-deletion") && o.key == "" {
		return usageErrorf("needs --key K (a key id, key ARN or alias)")
	}
	if action == "schedule-deletion" && o.days == 0 {
		return usageErrorf("needs --pending-days N (%d..%d): the days KMS waits before deleting the key; no default, the window is the operator's choice",
			registry.MinPendingDays, registry.MaxPendingDays)
	}
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	api, err := a.kms(ctx) // no call yet: DescribeKey only for key_ids and kids that are not ARNs
	if err != nil {
		return err
	}
	reg := registry.New(db, a.cfg.TableSchema).WithGuard(registry.Guard{
		KMS: api, State: checkpoint.New(db, a.cfg.StateSchema), Namespace: a.cfg.Namespace,
	})

	switch action {
	case "begin":
		if err := keysBegin(ctx, a, reg); err != nil {
			return err
		}
	case "retire":
		if err := keysRetire(ctx, a, reg, o.key); err != nil {
			return err
		}
	case "schedule-deletion":
		if err := keysScheduleDeletion(ctx, a, reg, o.key, o.days); err != nil {
			return err
		}
	}
	keys, exists, err := reg.List(ctx)
	if err != nil {
		return tempErr(err)
	}
	if o.json {
		if keys == nil {
			keys = []registry.Key{}
		}
		return writeJSON(a.stdout, map[string]any{"registry": reg.Qualified(), "exists": exists, "keys": keys})
	}
	printKeys(a.stdout, reg.Qualified(), exists, keys)
	return nil
}

func keysBegin(ctx context.Context, a *app, reg *registry.Registry) error {
	old, err := a.resolveKey(ctx, "OLD_KEY_ID", a.cfg.OldKeyID)
	if err != nil {
		return err
	}
	nk, err := a.resolveKey(ctx, "NEW_KEY_ID", a.cfg.NewKeyID)
	if err != nil {
		return err
	}
	if err := nk.Usable(); err != nil {
		return fmt.Errorf("NEW_KEY_ID: %w", err) // an unusable key must not become the active one
	}
	if old.ARN == nk.ARN {
		return configError("OLD_KEY_ID %q and NEW_KEY_ID %q are the same KMS key %s", old.Ref, nk.Ref, old.ARN)
	}
	// A table that does not exist would be recorded, and then block retiring
	// both keys: refuse it first (exit 78).
	if _, err := a.inspectTable(ctx); err != nil {
		return err
	}
	if err := a.recordKeyTable(ctx, old.ARN, nk.ARN); err != nil {
		return err
	}
	changed, err := reg.Begin(ctx, registry.Ref{ARN: old.ARN, Alias: old.Alias()}, registry.Ref{ARN: nk.ARN, Alias: nk.Alias()})
	if err != nil {
		return err
	}
	if changed {
		a.log.InfoContext(ctx, "rotation begun in the key registry", "old_key_arn", old.ARN, "new_key_arn", nk.ARN, "registry", reg.Qualified())
		fmt.Fprintf(a.stdout, "rotation begun: %s is rotating, %s is active\n\n", old.ARN, nk.ARN)
	} else {
		fmt.Fprintf(a.stdout, "already begun: %s is rotating, %s is active (nothing changed)\n\n", old.ARN, nk.ARN)
	}
	return nil
}

// keyARN resolves --key: an ARN is taken as is when the registry knows it
// (no KMS call, so retiring works without KMS access); anything else is
// resolved with DescribeKey.
func keyARN(ctx context.Context, a *app, reg *registry.Registry, ref string) (string, error) {
	if strings.HasPrefix(ref, "arn:") && strings.Contains(ref, ":key/") {
		if _, ok, err := reg.Get(ctx, ref); err == nil && ok {
			return ref, nil
		}
	}
	k, err := a.resolveKey(ctx, "--key", ref)
	return k.ARN, err
}

func keysRetire(ctx context.Context, a *app, reg *registry.Registry, ref string) error {
	arn, err := keyARN(ctx, a, reg, ref)
	if err != nil {
		return err
	}
	t, err := a.inspectTable(ctx)
	if err != nil {
		return err
	}
	reg.WithReport(func(u registry.Usage) { printUsage(a.stdout, u) })
	k, already, err := reg.Retire(ctx, arn, t)
	var inUse *registry.InUseError
	if errors.As(err, &inUse) {
		return fmt.Errorf("keys retire refused: %w; rotate them first (`reencrypt run` on each table named, then `reencrypt verify`)", err)
	}
	if err != nil {
		return fmt.Errorf("keys retire: %w", err)
	}
	if already {
		fmt.Fprintf(a.stdout, "%s was already retired (at %s)\n\n", arn, shortTime(k.RetiredAt))
		return nil
	}
	a.log.InfoContext(ctx, "key retired in the key registry", "key_arn", arn, "registry", reg.Qualified())
	fmt.Fprintf(a.stdout, "retired %s: no row of the tables above is under it\n\n", arn)
	return nil
}

func keysScheduleDeletion(ctx context.Context, a *app, reg *registry.Registry, ref string, days int) error {
	if days < registry.MinPendingDays || days > registry.MaxPendingDays {
		return configError("--pending-days %d: KMS accepts %d to %d", days, registry.MinPendingDays, registry.MaxPendingDays)
	}
	arn, err := keyARN(ctx, a, reg, ref)
	if err != nil {
		return err
	}
	t, err := a.inspectTable(ctx)
	if err != nil {
		return err
	}
	api, err := a.kms(ctx)
	if err != nil {
		return err
	}
	aliases, pointing := keyAliases(ctx, api, reg, arn)
	reg.WithReport(func(u registry.Usage) {
		fmt.Fprintf(a.stdout, "schedule-deletion of %s, pending %d days\naliases: %s\n", arn, days, aliases)
		if pointing {
			fmt.Fprintf(a.stdout, "WARNING: an alias still points at this key: clients configured with it write under it, "+
				"and fail once the deletion is pending; move it first (runbook step 7)\n")
		}
		printUsage(a.stdout, u)
	})
	k, already, err := reg.ScheduleDeletion(ctx, api, arn, days, t)
	var inUse *registry.InUseError
	switch {
	case errors.As(err, &inUse):
		return fmt.Errorf("keys schedule-deletion refused: %w", err)
	case errors.Is(err, kmsclient.ErrKeyUnusable):
		return fmt.Errorf("keys schedule-deletion: %w", err)
	case errors.Is(err, registry.ErrRefused):
		return fmt.Errorf("keys schedule-deletion: %w", err)
	case err != nil:
		return tempErr(fmt.Errorf("keys schedule-deletion: %w", err))
	}
	when := shortTime(k.DeletionDate)
	if already {
		fmt.Fprintf(a.stdout, "%s was already pending deletion in KMS (deletes %s); recorded\n\n", arn, when)
		return nil
	}
	a.log.InfoContext(ctx, "KMS key deletion scheduled", "key_arn", arn, "pending_days", days, "deletion_date", when)
	fmt.Fprintf(a.stdout, "KMS deletes %s on %s (in %d days).\nUntil then it can be undone: aws kms cancel-key-deletion --key-id %s\n\n", arn, when, days, arn)
	return nil
}

// recordKeyTable records the configured table under both keys in the state
// schema (migrating it first), so that retire and schedule-deletion count it
// whatever TABLE says then.
func (a *app) recordKeyTable(ctx context.Context, arns ...string) error {
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	store := checkpoint.New(db, a.cfg.StateSchema)
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	return store.RecordKeyTable(ctx, a.keyTable(), arns...)
}

func (a *app) keyTable() checkpoint.KeyTable {
	c := a.cfg
	return checkpoint.KeyTable{Schema: c.TableSchema, Table: c.Table, TokenColumn: c.TokenColumn, IDColumn: c.IDColumn, Namespace: c.Namespace}
}

// keyAliases names the aliases that point at arn now (ListAliases), and the
// one the registry recorded; a failed lookup is said, not fatal. pointing is
// true when KMS named at least one.
func keyAliases(ctx context.Context, api kmsclient.KMS, reg *registry.Registry, arn string) (desc string, pointing bool) {
	var names []string
	out, err := api.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String(arn)})
	if err == nil {
		for _, al := range out.Aliases {
			names = append(names, aws.ToString(al.AliasName))
		}
	}
	desc = strings.Join(names, ", ")
	switch {
	case err != nil:
		desc = "unknown (ListAliases: " + err.Error() + ")"
	case desc == "":
		desc = "none now"
	}
	if k, ok, gerr := reg.Get(ctx, arn); gerr == nil && ok {
		if k.Alias != "" {
			desc += "; recorded in the registry as " + k.Alias
		} else if k.KeyID != arn {
			desc += "; recorded in the registry as " + k.KeyID
		}
	}
	return desc, len(names) > 0
}

// printUsage prints what the guard counted, table by table.
func printUsage(w io.Writer, u registry.Usage) {
	fmt.Fprintf(w, "rows under %s, by table (%d counted):\n", u.KeyARN, len(u.Tables))
	for _, t := range u.Tables {
		var how []string
		if t.Configured {
			how = append(how, "configured")
		}
		if t.Recorded {
			how = append(how, "recorded for the key")
		}
		switch {
		case t.Missing:
			fmt.Fprintf(w, "  %s.%s: MISSING (recorded, but the table or column is gone; cannot be proved empty)\n", t.Table, t.TokenColumn)
		case t.Unlisted:
			fmt.Fprintf(w, "  %s: %d quarantined rows from this key, UNREADABLE (no record of the table's columns)\n", t.Table, t.Quarantined)
		default:
			fmt.Fprintf(w, "  %s.%s (%s): %d rows under the key (%d quarantined); %d rows with a kid KMS does not know (unresolvable, not counted); %d rows read\n",
				t.Table, t.TokenColumn, strings.Join(how, ", "), t.Rows, t.Quarantined, t.Unresolvable, t.Scanned)
		}
	}
}

func printKeys(w io.Writer, name string, exists bool, keys []registry.Key) {
	if !exists {
		fmt.Fprintf(w, "%s does not exist yet: `reencrypt keys begin` creates it\n", name)
		return
	}
	fmt.Fprintf(w, "%s: %d keys\n", name, len(keys))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "VERSION\tSTATUS\tKEY_ID\tALIAS\tALGORITHM\tPROVIDER\tCREATED_AT\tRETIRED_AT\tDELETION\n")
	for _, k := range keys {
		del := "-"
		if k.DeletionDate != nil || k.DeletionScheduledAt != nil {
			del = "on " + shortTime(k.DeletionDate) + " (scheduled " + shortTime(k.DeletionScheduledAt) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.KeyVersion, k.Status, k.KeyID, dash(k.Alias),
			dash(k.Algorithm), dash(k.Provider), shortTime(k.CreatedAt), shortTime(k.RetiredAt), del)
	}
	tw.Flush()
}
