package cli

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

func init() {
	registerCommand(command{path: []string{"migrate"}, summary: "create or upgrade the state schema (STATE_SCHEMA) to this release, and nothing else",
		vars: varsDB, setup: func(*pflag.FlagSet) runFunc { return cmdMigrate }})
}

// cmdMigrate is the state schema's owner bringing it to this release, so
// that roles without DDL rights (the operator's `keys begin`, a Job that
// does not own the schema) find it ready (docs/privileges.md). `run` and
// `keys begin` migrate too, when their role may.
func cmdMigrate(ctx context.Context, a *app, _ []string) error {
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	if err := checkpoint.New(db, a.cfg.StateSchema).Migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "state schema %s is at version %d\n", a.cfg.StateSchema, checkpoint.SchemaVersion())
	return nil
}
