package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// PrependHBA puts line first in the server's pg_hba.conf (first match wins)
// and reloads the configuration, e.g. to make one role authenticate by
// password on a server that otherwise trusts local connections. It needs a
// server of this package's own (PrivatePostgres).
func (p *Postgres) PrependHBA(ctx context.Context, line string) error {
	if p.external != nil {
		return errors.New("testbed: PrependHBA needs a local server (PrivatePostgres)")
	}
	path := filepath.Join(p.dataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	// WriteFile keeps the file's owner (the postgres OS user).
	if err := os.WriteFile(path, append([]byte(line+"\n"), old...), 0o600); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	return p.admin(ctx, "SELECT pg_reload_conf()")
}
