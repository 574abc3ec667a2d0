// Command demo is the README's main job on a local default: it starts a
// throwaway Postgres and the local-kms emulator, seeds 100,000 demo tokens
// under an "old" key the way a legacy writer did (one data key per token),
// and then drives the real reencrypt binary through the rotation a platform
// engineer would run: plan, run, status, verify. Finally it checks every row
// itself — under the new key, opening to the token it held before, with one
// audit row — and prints a summary. Nothing is left behind.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

func main() {
	rows := flag.Int("rows", 100_000, "demo tokens to seed and rotate")
	mode := flag.String("mode", "rekey", "rekey or rewrap")
	keep := flag.Bool("keep", false, "keep the servers running at the end until Ctrl-C (to explore with psql)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := demo(ctx, *rows, *mode, *keep) // cleans up its servers and folder before it returns
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context, rows int, mode string, keep bool) error {
	work, err := os.MkdirTemp("", "reencrypt-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("starting a throwaway Postgres and the local-kms emulator")
	pg, err := testbed.StartPostgres(ctx, testbed.PostgresOptions{Local: true})
	if err != nil {
		return err
	}
	defer pg.Stop()
	kmsSrv, err := testbed.StartLocalKMS(ctx)
	if err != nil {
		return err
	}
	defer kmsSrv.Stop()
	dbURL, err := pg.CreateDatabase(ctx, "payments")
	if err != nil {
		return err
	}
	fmt.Printf("   postgres  %s\n   local-kms %s\n", dbURL, kmsSrv.Endpoint())

	suffix := time.Now().Format("150405")
	oldAlias, newAlias := "alias/payment-tokens-2026-q3-"+suffix, "alias/payment-tokens-2026-q4-"+suffix
	for _, a := range []string{oldAlias, newAlias} {
		if _, err := kmsSrv.CreateKey(ctx, strings.TrimPrefix(a, "alias/")); err != nil {
			return err
		}
	}
	fmt.Printf("   keys      OLD %s, NEW %s\n", oldAlias, newAlias)

	step("building bin/reencrypt")
	bin := filepath.Join(work, "reencrypt")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/reencrypt").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	logPath := filepath.Join(work, "reencrypt.log")
	env := append(os.Environ(), kmsSrv.Env()...)
	env = append(env, "DATABASE_URL="+dbURL, "OLD_KEY_ID="+oldAlias, "NEW_KEY_ID="+newAlias, "MODE="+mode,
		// The emulator has no quota; production sets KMS_RATE_LIMIT to its share.
		"KMS_RATE_LIMIT=0", "PROGRESS=off")
	reencrypt := func(args ...string) (int, error) {
		fmt.Printf("   $ reencrypt %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout = &out
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return 0, err
		}
		defer logf.Close()
		cmd.Stderr = logf
		err = cmd.Run()
		for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
			fmt.Println("     " + line)
		}
		code := cmd.ProcessState.ExitCode()
		if err != nil && code <= 0 {
			return code, err
		}
		return code, nil
	}

	step(fmt.Sprintf("seeding %d tokens under OLD, one data key per token (a legacy writer)", rows))
	if err := seedDemo(ctx, dbURL, kmsSrv, oldAlias, rows); err != nil {
		return fmt.Errorf("seed: %w", err)
	}

	for _, sub := range optional(bin, "plan") {
		step("plan: what the rotation will touch, and what it will cost (writes nothing)")
		if code, err := reencrypt(sub...); err != nil || code != 0 {
			return fmt.Errorf("plan exited %d: %v (log: %s)", code, err, tail(logPath))
		}
	}

	step("keys begin: OLD becomes rotating, NEW active, in the token_encryption_keys registry")
	if code, err := reencrypt("keys", "begin"); err != nil || code != 0 {
		return fmt.Errorf("keys begin exited %d: %v (log: %s)", code, err, tail(logPath))
	}

	step("run: rotate every token from OLD to NEW")
	start := time.Now()
	if code, err := reencrypt("run"); err != nil || code != 0 {
		return fmt.Errorf("run exited %d: %v (log: %s)", code, err, tail(logPath))
	}
	took := time.Since(start)

	step("run again: a rerun resumes, or after success changes nothing")
	if code, err := reencrypt("run"); err != nil || code != 0 {
		return fmt.Errorf("rerun exited %d: %v (log: %s)", code, err, tail(logPath))
	}
	for _, sub := range optional(bin, "status") {
		step("status")
		if _, err := reencrypt(sub...); err != nil {
			return err
		}
	}
	for _, sub := range optional(bin, "verify") {
		step("verify: every row under NEW opens with its own AAD; none left under OLD; audit complete")
		if code, err := reencrypt(sub...); err != nil || code != 0 {
			return fmt.Errorf("verify exited %d: %v (log: %s)", code, err, tail(logPath))
		}
	}

	step("keys retire: refused while any row is under OLD; none is, so OLD is retired")
	if code, err := reencrypt("keys", "retire", "--key", oldAlias); err != nil || code != 0 {
		return fmt.Errorf("keys retire exited %d: %v (log: %s)", code, err, tail(logPath))
	}

	step("independent check by the demo itself")
	checked, err := check(ctx, dbURL, kmsSrv, newAlias)
	if err != nil {
		return err
	}
	fmt.Printf("\nDemo passed: %d tokens rotated from %s to %s (%s mode) in %s, %d checked row by row.\n",
		rows, oldAlias, newAlias, mode, took.Round(time.Millisecond), checked)
	fmt.Printf("Engine logs (JSON): %s\n", logPath)
	if keep {
		fmt.Printf("\nServers kept running; press Ctrl-C to stop.\n  DATABASE_URL=%s\n  %s\n", dbURL, strings.Join(kmsSrv.Env(), " "))
		<-ctx.Done()
	}
	return nil
}

// optional returns the invocation of a sub-command if this build has it.
func optional(bin, name string) [][]string {
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	if strings.Contains(string(out), "  "+name+" ") {
		return [][]string{{name}}
	}
	return nil
}

// check opens every row and compares it with the token seeded for it.
func check(ctx context.Context, dbURL string, kmsSrv *testbed.KMSServer, newAlias string) (int, error) {
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	api, err := kmsSrv.Client(ctx)
	if err != nil {
		return 0, err
	}
	newKey, err := kmsclient.Resolve(ctx, api, newAlias)
	if err != nil {
		return 0, err
	}
	cache := kmsclient.NewCache(4096, time.Hour)
	defer cache.Purge()
	kc := kmsclient.NewClient(api, "payment_methods", cache)
	rs, err := db.Query(ctx, `SELECT id::text, encrypted_token FROM payment_methods ORDER BY id`)
	if err != nil {
		return 0, err
	}
	defer rs.Close()
	n := 0
	for rs.Next() {
		var id string
		var tok []byte
		if err := rs.Scan(&id, &tok); err != nil {
			return n, err
		}
		env, err := envelope.Parse(tok)
		if err != nil {
			return n, fmt.Errorf("row %s: %w", id, err)
		}
		if env.KID != newKey.ARN {
			return n, fmt.Errorf("row %s is under %s, not the new key", id, env.KID)
		}
		dek, err := kc.Decrypt(ctx, env.KID, env.WDEK)
		if err != nil {
			return n, fmt.Errorf("row %s: %w", id, err)
		}
		plain, err := envelope.Open(env, dek, "payment_methods", id)
		dek.Zero()
		if err != nil || !bytes.Equal(plain, seed.Plaintext(id)) {
			return n, fmt.Errorf("row %s does not open to the token it held before", id)
		}
		n++
	}
	if err := rs.Err(); err != nil {
		return n, err
	}
	var audited, dup int
	err = db.QueryRow(ctx, `SELECT count(*), count(*) - count(DISTINCT payment_method_id)
		FROM payment_method_audit WHERE action = 'token_reencrypted'`).Scan(&audited, &dup)
	if err != nil {
		return n, err
	}
	if audited != n || dup != 0 {
		return n, fmt.Errorf("%d audit rows (%d duplicated) for %d rows", audited, dup, n)
	}
	fmt.Printf("   %d rows under NEW, each opens to its original token; %d audit rows, none duplicated\n", n, audited)
	return n, nil
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// seedDemo creates the reference schema and seals rows demo tokens under
// the key keyRef, one data key per token (a legacy writer). Seeding is the
// demo's own work (package internal/seed): the reencrypt binary cannot seed.
func seedDemo(ctx context.Context, dbURL string, kmsSrv *testbed.KMSServer, keyRef string, rows int) error {
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	api, err := kmsSrv.Client(ctx)
	if err != nil {
		return err
	}
	key, err := kmsclient.Resolve(ctx, api, keyRef)
	if err != nil {
		return err
	}
	if err := seed.Schema(ctx, db, "public", "uuid"); err != nil {
		return err
	}
	start := time.Now()
	if _, err := seed.Seed(ctx, db, kmsclient.NewClient(api, "payment_methods", nil),
		seed.Options{Rows: rows, KeyARN: key.ARN, Namespace: "payment_methods", RowsPerKey: 1}); err != nil {
		return err
	}
	fmt.Printf("     seeded %d tokens under %s in %s\n", rows, key.ARN, time.Since(start).Round(time.Millisecond))
	return nil
}
