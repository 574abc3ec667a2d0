package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/config"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/registry"
)

func init() {
	registerWithFlags("keys", "the token_encryption_keys registry: list | begin | retire --key K | schedule-deletion --key K --pending-days N", func(fs *flag.FlagSet) runFunc {
		asJSON := fs.Bool("json", false, "print the result as JSON")
		fs.Usage = func() {
			fmt.Fprint(fs.Output(), keysUsage+"\nflags (also accepted after the sub-command):\n")
			fs.PrintDefaults()
		}
		return func(ctx context.Context, a *app, args []string) error { return cmdKeys(ctx, a, args, *asJSON) }
	})
}

const keysUsage = `usage: reencrypt keys [list | begin | retire | schedule-deletion] [flags]

  list                                      the registry (default)
  begin                                     OLD_KEY_ID → rotating, NEW_KEY_ID → active, in one transaction;
                                            records TABLE under both keys
  retire --key K                            mark K retired; refused (exit 78) while any row is still under K
                                            in TABLE or in any table recorded for K
  schedule-deletion --key K --pending-days N
                                            have KMS delete retired key K after N days (7..30, required);
                                            prints the counts first; refused (exit 78) unless K is
                                            retired and no row is under K

The registry is the table token_encryption_keys in TABLE_SCHEMA, created on
the first write (an existing one is used as it is, never altered). K is a key
id, key ARN, alias name or alias ARN. Rows are under K when their kid names K
by ARN, key id, alias or alias ARN (resolved with DescribeKey), or when a run
from K quarantined them and their token does not name another key.
`

// cmdKeys dispatches the registry's sub-commands. Their flags, and every
// configuration flag, may follow the sub-command's name.
func cmdKeys(ctx context.Context, a *app, args []string, jsonOut bool) error {
	action := "list"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("reencrypt keys "+action, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() {
		fmt.Fprint(a.stderr, keysUsage+"\nflags:\n")
		fs.PrintDefaults()
	}
	config.Flags(fs, a.cfg)
	asJSON := fs.Bool("json", jsonOut, "print the result as JSON")
	var key *string
	var days *int
	switch action {
	case "list", "begin":
	case "retire", "schedule-deletion":
		key = fs.String("key", "", "the key: key id, key ARN, alias name or alias ARN (required)")
		if action == "schedule-deletion" {
			days = fs.Int("pending-days", 0, "days KMS waits before deleting the key, 7..30 (required); the deletion can be cancelled until then")
		}
	default:
		fs.Usage()
		return configError("keys: unknown sub-command %q", action)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return configError("keys %s: %v", action, err)
	}
	if fs.NArg() > 0 {
		return configError("keys %s: unexpected arguments %q", action, fs.Args())
	}
	if err := a.cfg.Validate(); err != nil {
		return configError("keys %s: configuration refused:\n%v", action, err)
	}
	if key != nil && *key == "" {
		return configError("keys %s needs --key (a key id, key ARN or alias)", action)
	}
	if days != nil && *days == 0 {
		return configError("keys schedule-deletion needs --pending-days N (%d..%d): the days KMS waits before deleting the key; no default, the window is the operator's choice",
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
		if err := keysRetire(ctx, a, reg, *key); err != nil {
			return err
		}
	case "schedule-deletion":
		if err := keysScheduleDeletion(ctx, a, reg, *key, *days); err != nil {
			return err
		}
	}
	keys, exists, err := reg.List(ctx)
	if err != nil {
		return tempErr(err)
	}
	if *asJSON {
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
		a.log.Info("rotation begun in the key registry", "old_key_arn", old.ARN, "new_key_arn", nk.ARN, "registry", reg.Qualified())
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
	a.log.Info("key retired in the key registry", "key_arn", arn, "registry", reg.Qualified())
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
	a.log.Info("KMS key deletion scheduled", "key_arn", arn, "pending_days", days, "deletion_date", when)
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
