package testbed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// StartReplica makes a streaming replica of p: pg_basebackup over loopback
// (with -R, so it follows p through primary_conninfo), then a server of its
// own on a free port, as the postgres OS user when p runs as it. It needs a
// local p. The replica is read-only; stop it with Stop.
func (p *Postgres) StartReplica(ctx context.Context) (*Postgres, error) {
	if p.external != nil {
		return nil, fmt.Errorf("testbed: StartReplica needs a local primary, not %s", EnvDatabaseURL)
	}
	r := &Postgres{opts: p.opts, binDir: p.binDir, cred: p.cred}
	var err error
	if r.dir, err = makeTempDir("pg-replica"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(r.dir)
		}
	}()
	r.dataDir = filepath.Join(r.dir, "data")
	r.sockDir = filepath.Join(r.dir, "sock")
	r.logPath = filepath.Join(r.dir, "postgres.log")
	if err := os.Mkdir(r.sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	if r.cred != nil {
		for _, d := range []string{r.dir, r.sockDir} {
			if err := os.Chown(d, int(r.cred.Uid), int(r.cred.Gid)); err != nil {
				return nil, fmt.Errorf("testbed: %w", err)
			}
		}
	}
	// initdb's default pg_hba.conf trusts replication connections from
	// 127.0.0.1, and wal_level=replica with 10 WAL senders is the default.
	cmd := exec.CommandContext(ctx, filepath.Join(r.binDir, "pg_basebackup"),
		"-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", "postgres",
		"-D", r.dataDir, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
	cmd.Dir = r.dir
	cmd.SysProcAttr = r.sysProcAttr()
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testbed: pg_basebackup from 127.0.0.1:%d: %w\n%s", p.port, err, tailString(string(out), 4096))
	}
	for attempt := 1; ; attempt++ {
		if r.port, err = freePort(); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
		err = r.start(ctx)
		if err == nil {
			break
		}
		if attempt >= 3 || !strings.Contains(err.Error(), "already in use") {
			return nil, err
		}
	}
	ok = true
	return r, nil
}

// Replica starts a streaming replica of p for the test and stops it at its
// end; it waits until the replica has replayed what p had written.
func Replica(t testing.TB, p *Postgres) *Postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := p.StartReplica(ctx)
	if err != nil {
		t.Fatalf("replica: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return r
}
