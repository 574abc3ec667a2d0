package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

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
  begin                                     OLD_KEY_ID → rotating, NEW_KEY_ID → active, in one transaction
  retire --key K                            mark K retired; refused while any row is still under K
  schedule-deletion --key K --pending-days N
                                            have KMS delete retired key K after N days (7..30);
                                            refused unless K is retired and no row is under K

The registry is the table token_encryption_keys in TABLE_SCHEMA, created on
the first write. K is a key id, key ARN, alias name or alias ARN; the
registry records keys by ARN.
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
			days = fs.Int("pending-days", 30, "days KMS waits before deleting the key (7..30); the deletion can be cancelled until then")
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
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	reg := registry.New(db, a.cfg.TableSchema)

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
	k, already, err := reg.Retire(ctx, arn, t)
	var inUse *registry.InUseError
	if errors.As(err, &inUse) {
		return fmt.Errorf("keys retire refused: %w; rotate them first (`reencrypt run`, then `reencrypt verify`)", err)
	}
	if err != nil {
		return fmt.Errorf("keys retire: %w", err)
	}
	if already {
		fmt.Fprintf(a.stdout, "%s was already retired (at %s)\n\n", arn, shortTime(k.RetiredAt))
		return nil
	}
	a.log.Info("key retired in the key registry", "key_arn", arn, "registry", reg.Qualified())
	fmt.Fprintf(a.stdout, "retired %s: no row of %s is under it\n\n", arn, t.Qualified())
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
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.KeyVersion, k.Status, k.KeyID, dash(k.Alias),
			dash(k.Algorithm), dash(k.Provider), shortTime(k.CreatedAt), shortTime(k.RetiredAt), del)
	}
	tw.Flush()
}
