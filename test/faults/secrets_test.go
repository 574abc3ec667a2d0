package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// secretScanner looks for secrets in any of the encodings a careless log
// line, error or metric label could give them: raw, hex (both cases),
// base64 (std and URL, padded or not), and Go's %v of a byte slice.
type secretScanner struct {
	byPrefix map[string][]pattern
	count    int
}

type pattern struct {
	what string
	b    []byte
}

const scanWindow = 16

func newSecretScanner() *secretScanner { return &secretScanner{byPrefix: map[string][]pattern{}} }

func (s *secretScanner) add(what string, secret []byte) {
	encs := map[string][]byte{
		"raw":           secret,
		"hex":           []byte(hex.EncodeToString(secret)),
		"HEX":           []byte(strings.ToUpper(hex.EncodeToString(secret))),
		"base64":        []byte(base64.StdEncoding.EncodeToString(secret)),
		"base64-raw":    []byte(base64.RawStdEncoding.EncodeToString(secret)),
		"base64url":     []byte(base64.URLEncoding.EncodeToString(secret)),
		"base64url-raw": []byte(base64.RawURLEncoding.EncodeToString(secret)),
		"%v":            []byte(fmt.Sprint(secret)),
	}
	for enc, b := range encs {
		// A base64 encoding that does not start on a 3-byte boundary of the
		// surrounding data differs in its first characters: also look for
		// the secret without its first one and two bytes.
		if len(b) < scanWindow {
			continue
		}
		p := pattern{what + " as " + enc, b}
		s.byPrefix[string(b[:scanWindow])] = append(s.byPrefix[string(b[:scanWindow])], p)
		s.count++
	}
	if len(secret) > scanWindow+2 && !strings.HasPrefix(what, "shifted") {
		s.add("shifted "+what, secret[1:])
		s.add("shifted "+what, secret[2:])
	}
}

// find returns what was found in b, at most a few entries.
func (s *secretScanner) find(b []byte) []string {
	var hits []string
	for i := 0; i+scanWindow <= len(b); i++ {
		ps, ok := s.byPrefix[string(b[i:i+scanWindow])]
		if !ok {
			continue
		}
		for _, p := range ps {
			if bytes.HasPrefix(b[i:], p.b) {
				hits = append(hits, p.what)
				if len(hits) >= 5 {
					return hits
				}
			}
		}
	}
	return hits
}

// recorder is a fake Pushgateway that keeps every body pushed to it.
type recorder struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.bodies = append(r.bodies, b)
	r.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// Scenario 9: a canary plaintext and the data keys never appear in what the
// binary writes (logs at debug level, error messages, a SIGQUIT goroutine
// dump), in /metrics or the Pushgateway push, or in the bookkeeping and
// audit tables.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	n := pick(1000, 5000) // enough rows that phase 2 is still running when OLD is denied
	scen := fmt.Sprintf("9 secrets (%d rows + canaries)", n)
	ctx := context.Background()
	w := newWorld(t, worldOpts{})
	ids := w.Seed(n, w.Old, 1)
	sc := newSecretScanner()
	plain := map[string][]byte{}
	for _, id := range ids {
		plain[id] = seed.Plaintext(id)
	}
	// Canary rows with a recognisable plaintext; one of them corrupt, so the
	// quarantine path logs about it.
	for i := range 5 {
		id := newUUID()
		var r [8]byte
		_, _ = rand.Read(r[:])
		canary := []byte(fmt.Sprintf("CANARY-PAN-4111111111111111-%x", r))
		tok, dek := w.sealRow(w.Old, id, canary)
		sc.add("old data key", dek)
		clear(dek)
		if i == 0 {
			tok[len(tok)-3] ^= 0x10
		}
		w.insert(id, tok)
		plain[id] = canary
	}
	for _, p := range plain {
		sc.add("plaintext", p)
	}
	// Every data key under OLD, unwrapped here to know what to look for.
	keys := map[string][]byte{}
	for _, r := range w.Rows() {
		_, _, _ = w.Open(r, keys) // the corrupt canary does not open; its key is unwrapped all the same
	}
	for _, k := range keys {
		sc.add("old data key", k)
	}

	push := &recorder{}
	pg := httptest.NewServer(push)
	t.Cleanup(pg.Close)
	var scraped [][]byte
	common := []string{"LOG_LEVEL=debug", "METRICS_ADDR=127.0.0.1:0", "PUSHGATEWAY_URL=" + pg.URL, "GOTRACEBACK=all"}

	// 1. A goroutine dump mid-page (SIGQUIT): the closest thing to a panic
	// the binary can be made to print.
	p1 := w.start("sigquit", append(common, "KMS_RATE_LIMIT=300")...)
	waitFor(t, "two pages", time.Minute, func() bool { return w.pages() >= 2 || p1.exited() })
	scraped = append(scraped, []byte(p1.scrape()))
	p1.kill(syscall.SIGQUIT)
	p1.wait(t, time.Minute)
	dumped := strings.Contains(p1.stderr.String(), "goroutine ")
	figure(t, scen, "SIGQUIT mid-page produced a goroutine dump to scan", "exit 2 with a dump", fmt.Sprintf("%s, dump %t", p1.status(), dumped),
		p1.code == 2 && dumped)

	// 2. KMS errors surfacing in page failures (one attempt per call, 5xx
	// and resets), then OLD access denied: error messages and warnings.
	p2 := w.start("kms-errors", append(common, "KMS_RATE_LIMIT=100", "KMS_MAX_ATTEMPTS=1")...)
	pages := w.pages()
	waitFor(t, "a page", time.Minute, func() bool { return w.pages() > pages || p2.exited() })
	w.proxy.Set(kmsfault.Faults{Error5xx: 0.3, Reset: 0.1})
	time.Sleep(1500 * time.Millisecond) // the point: the KMS errors last this window, then are lifted
	w.proxy.Set(kmsfault.Faults{})
	pages = w.pages()
	waitFor(t, "pages after the errors", time.Minute, func() bool { return w.pages() > pages || p2.exited() })
	scraped = append(scraped, []byte(p2.scrape()))
	w.proxy.Set(kmsfault.Faults{Deny: []string{w.Old.ARN}})
	p2.wait(t, 2*time.Minute)
	w.proxy.Set(kmsfault.Faults{})
	figure(t, scen, "run with KMS errors then OLD denied", "exit 77 after page failures",
		fmt.Sprintf("%s, %d page failures logged", p2.status(), p2.count("page failed")), p2.code == exitKeyUnusable)

	// 3. To the end, scraping /metrics meanwhile; the final push too.
	p3 := w.start("to-the-end", append(common, "KMS_RATE_LIMIT=600")...)
	for !p3.exited() {
		if b := p3.scrape(); b != "" {
			scraped = append(scraped, []byte(b))
		}
		time.Sleep(200 * time.Millisecond) // scrape interval while the run lasts (the scrapes are what is checked)
	}
	p3.wait(t, 2*time.Minute)
	figure(t, scen, "final run", "exit 65 (the corrupt canary quarantined)", p3.status(), p3.code == exitQuarantined)
	// The operator commands, where they exist, print rows and errors too.
	for _, cmd := range []string{"status", "verify"} {
		w.startArgs(cmd, []string{cmd}, common...).wait(t, 2*time.Minute)
	}

	// The data keys under NEW the binary generated, unwrapped here.
	newKeys := map[string][]byte{}
	for _, r := range w.Rows() {
		if env, err := envelope.Parse(r.Token); err == nil && env.KID == w.New.ARN {
			_, _, _ = w.Open(r, newKeys)
		}
	}
	for _, k := range newKeys {
		sc.add("new data key", k)
	}
	if len(newKeys) == 0 {
		t.Fatal("no data key under NEW found")
	}

	// The scanner finds what it looks for (or this test proves nothing).
	for _, k := range newKeys {
		probe := []byte(`{"msg":"x","k":"` + base64.StdEncoding.EncodeToString(append([]byte{7}, k...)) + `"}`)
		if len(sc.find(probe)) == 0 {
			t.Fatal("the scanner misses a data key embedded in base64")
		}
		break
	}

	var outHits, metricHits, dbHits []string
	var outBytes int
	for _, b := range w.outputs() {
		outBytes += len(b)
		outHits = append(outHits, sc.find(b)...)
	}
	push.mu.Lock()
	metricBodies := append(scraped, push.bodies...)
	pushes := len(push.bodies)
	push.mu.Unlock()
	var metricBytes int
	for _, b := range metricBodies {
		metricBytes += len(b)
		metricHits = append(metricHits, sc.find(b)...)
	}
	for _, q := range []string{
		`SELECT coalesce(string_agg(details::text || action || actor_type, ' '), '') FROM payment_method_audit`,
		`SELECT coalesce(string_agg(row_id || error_class, ' '), '') FROM reencrypt.quarantine`,
		`SELECT coalesce(string_agg(event || coalesce(owner, '') || coalesce(details::text, ''), ' '), '') FROM reencrypt.events`,
		`SELECT coalesce(string_agg(r::text, ' '), '') FROM reencrypt.runs r`,
		`SELECT coalesce(string_agg(r::text, ' '), '') FROM reencrypt.ranges r`,
	} {
		var s string
		if err := w.DB.QueryRow(ctx, q).Scan(&s); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		dbHits = append(dbHits, sc.find([]byte(s))...)
	}
	figure(t, scen, "secrets looked for", "data keys and plaintexts, 8 encodings each",
		fmt.Sprintf("%d old + %d new data keys, %d plaintexts: %d patterns", len(keys), len(newKeys), len(plain), sc.count), true)
	figure(t, scen, "found in stdout/stderr (debug logs, errors, SIGQUIT dump)", "0",
		fmt.Sprintf("%d in %d KiB %v", len(outHits), outBytes>>10, outHits), len(outHits) == 0)
	figure(t, scen, "found in /metrics and the Pushgateway push", "0",
		fmt.Sprintf("%d in %d scrapes + %d pushes, %d KiB %v", len(metricHits), len(scraped), pushes, metricBytes>>10, metricHits),
		len(metricHits) == 0 && metricBytes > 0)
	figure(t, scen, "found in the audit and bookkeeping tables", "0", fmt.Sprintf("%d %v", len(dbHits), dbHits), len(dbHits) == 0)
	for _, k := range keys {
		clear(k)
	}
	for _, k := range newKeys {
		clear(k)
	}
}

// recordingKMS keeps every plaintext data key KMS hands out, to check later
// that whoever received it cleared it.
type recordingKMS struct {
	kmsclient.KMS
	mu   sync.Mutex
	keys [][]byte
}

func (r *recordingKMS) keep(b []byte) {
	r.mu.Lock()
	r.keys = append(r.keys, b)
	r.mu.Unlock()
}

func (r *recordingKMS) Decrypt(ctx context.Context, in *kms.DecryptInput, o ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	out, err := r.KMS.Decrypt(ctx, in, o...)
	if err == nil {
		r.keep(out.Plaintext)
	}
	return out, err
}

func (r *recordingKMS) GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, o ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	out, err := r.KMS.GenerateDataKey(ctx, in, o...)
	if err == nil {
		r.keep(out.Plaintext)
	}
	return out, err
}

// Scenario 9, unit level: every plaintext data key the engine got from KMS
// (preflight round trip, sample, unwrapped OLD keys, the page keys under
// NEW) is all zeros once Run returned.
func TestDataKeysZeroedAfterUse(t *testing.T) {
	t.Parallel()
	n := pick(300, 3000)
	scen := fmt.Sprintf("9 secrets: data keys cleared after use (in process, %d rows)", n)
	ctx := context.Background()
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	// A row KMS refuses and a corrupt one: the error paths get keys too.
	bad := w.badRows()
	rec := &recordingKMS{KMS: w.API}
	cache := kmsclient.NewCache(1024, time.Minute)
	defer cache.Purge()
	kc := kmsclient.NewClient(rec, fixture.Namespace, cache)
	checked, err := batch.Preflight(ctx, w.DB, kc, batch.PreflightOptions{Spec: refSpec(), OldRef: w.Old.ARN, NewRef: w.New.ARN, Namespace: fixture.Namespace, Mode: batch.Rekey})
	if err != nil {
		t.Fatal(err)
	}
	store := checkpoint.New(w.DB, "reencrypt")
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	eng, err := batch.New(batch.Config{Table: checked.Table, Old: checked.Old, New: checked.New,
		BatchSize: 100, Ranges: 4, LeaseTTL: 2 * time.Second, StopGrace: time.Second, Workers: 8, Owner: "zero-test"},
		batch.Deps{DB: w.DB, Store: store, KMS: kc, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := eng.Run(ctx)
	if err != nil && !strings.Contains(err.Error(), "quarantined") {
		t.Fatalf("run: %v", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	left := 0
	for _, k := range rec.keys {
		if !bytes.Equal(k, make([]byte, len(k))) {
			left++
		}
	}
	figure(t, scen, "plaintext data keys from KMS not zeroed after Run", "0",
		fmt.Sprintf("%d of %d (rotated %d, quarantined %d of %d bad rows)", left, len(rec.keys), sum.Process.Rotated,
			sum.Process.Quarantined, len(bad)), left == 0 && len(rec.keys) > n/2)
}
