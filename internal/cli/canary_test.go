package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// keyRecorder is a KMS reverse proxy that keeps a copy of every plaintext
// data key KMS hands out (GenerateDataKey and Decrypt answers): the secrets
// the canary test then looks for in everything the commands emitted.
type keyRecorder struct {
	mu   sync.Mutex
	keys [][]byte
}

func startKeyRecorder(t *testing.T, upstream string) (*keyRecorder, string) {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rec := &keyRecorder{}
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = tr
	rp.ModifyResponse = func(resp *http.Response) error {
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		var answer struct{ Plaintext []byte } // base64 in the JSON protocol
		if json.Unmarshal(body, &answer) == nil && len(answer.Plaintext) > 0 {
			rec.add(answer.Plaintext)
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return rec, srv.URL
}

func (r *keyRecorder) add(k []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append(r.keys, bytes.Clone(k))
}

func (r *keyRecorder) all() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.keys...)
}

// forms returns the ways a secret could show up in text: raw, hex (both
// cases), Go's %v of a byte slice, and base64 (standard and URL alphabets)
// at each of the three alignments it can have inside a longer encoded blob
// (only the characters that depend on the secret alone are kept).
func forms(secret []byte) []string {
	out := []string{string(secret), hex.EncodeToString(secret), strings.ToUpper(hex.EncodeToString(secret)),
		strings.Trim(fmt.Sprint(secret), "[]")}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for shift := range 3 {
			b := append(make([]byte, shift), secret...)
			s := enc.EncodeToString(b)
			from, to := 4*((shift+2)/3), 4*(len(b)/3)
			if to-from >= 8 {
				out = append(out, s[from:to])
			}
		}
	}
	return out
}

// leaks returns the forms of any secret found in the haystack.
func leaks(haystack []byte, secrets map[string][]byte) []string {
	var found []string
	for name, s := range secrets {
		for _, f := range forms(s) {
			if bytes.Contains(haystack, []byte(f)) {
				found = append(found, fmt.Sprintf("%s as %q", name, f))
			}
		}
	}
	return found
}

// TestCanaryNeverLeaks seeds tokens holding a canary string, records every
// data key KMS returns to the commands, and drives plan, run (with a
// quarantined row, the progress bar, debug logs, /metrics and a Pushgateway
// push), status, verify (failing on a tampered row), and keys (a refused
// retire) through their outputs and error paths. Neither the canary nor any
// data key may appear in anything they printed, served or pushed, in raw,
// hex or base64 form.
func TestCanaryNeverLeaks(t *testing.T) {
	o := newOpEnv(t, "uuid")
	rec, recURL := startKeyRecorder(t, o.KMS.Endpoint())
	t.Setenv("AWS_ENDPOINT_URL_KMS", recURL)

	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	canary := "CANARY-" + hex.EncodeToString(nonce)
	var ids []string
	seal := func(key kmsclient.Key, aadID string, plaintext []byte) []byte {
		dek, wdek, err := o.Client.GenerateDataKey(context.Background(), key.ARN)
		if err != nil {
			t.Fatal(err)
		}
		rec.add(dek) // the writer's data key is a secret too
		defer dek.Zero()
		env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: key.ARN, WDEK: wdek, Namespace: fixture.Namespace, RowID: aadID}, plaintext)
		if err != nil {
			t.Fatal(err)
		}
		b, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for i := range 150 {
		id := fmt.Sprintf("%08x-0000-4000-8000-%012d", i*0x01000000+i, i)
		ids = append(ids, id)
		o.insertRow(id, seal(o.Old, id, []byte(fmt.Sprintf("tok_%s_%04d", canary, i))))
	}
	// Quarantined by the run: a token sealed for another row.
	o.setToken(ids[7], seal(o.Old, ids[8], []byte("tok_"+canary+"_moved")))

	var haystack bytes.Buffer
	keep := func(r opResult) opResult {
		haystack.WriteString(r.stdout)
		haystack.WriteString(r.stderr)
		return r
	}
	debug := "LOG_LEVEL=debug"

	o.mustCode(keep(o.cmd([]string{"plan"}, debug)), exitOK)
	o.mustCode(keep(o.cmd([]string{"plan", "--json"}, debug, "MODE=rewrap")), exitOK)
	o.mustCode(keep(o.cmd([]string{"plan"}, debug, "NEW_KEY_ID="+o.Old.ARN)), exitConfig)
	o.mustCode(keep(o.cmd([]string{"keys", "begin"}, debug)), exitOK)

	// The run, scraped while it lasts, pushing at its end.
	gw, gwURL := newPushgateway(t)
	stderr := &testbed.SyncBuffer{}
	done := make(chan opResult, 1)
	go func() {
		done <- o.cmdCtx(context.Background(), []string{"run"}, stderr, debug, "PROGRESS=on", "METRICS_ADDR=127.0.0.1:0",
			"PUSHGATEWAY_URL="+gwURL, "BATCH_SIZE=10", "KMS_RATE_LIMIT=100")
	}()
	addr := waitLog(t, stderr, "serving metrics", done)["addr"].(string)
	var res opResult
	scrapes := 0
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-time.After(100 * time.Millisecond):
			if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				haystack.Write(b)
				scrapes++
			}
		}
	}
	o.mustCode(keep(res), exitQuarantined)
	if scrapes == 0 {
		t.Error("the run was never scraped")
	}
	pushes := gw.requests()
	if len(pushes) == 0 {
		t.Error("the run pushed nothing")
	}
	for _, p := range pushes {
		haystack.Write(p.body)
	}

	// Damage one rotated row, then look at everything from every side.
	tok := o.token(ids[20])
	tok[len(tok)-2] ^= 0x40
	o.setToken(ids[20], tok)
	o.mustCode(keep(o.cmd([]string{"status"}, debug)), exitOK)
	o.mustCode(keep(o.cmd([]string{"status", "--json", "--all-ranges"}, debug)), exitOK)
	r := keep(o.cmd([]string{"verify"}, debug))
	o.mustCode(r, exitQuarantined)
	if !strings.Contains(r.stdout, ids[20]+"  auth_failed") || !strings.Contains(r.stdout, ids[7]+"  under_old (quarantined: auth_failed)") {
		t.Errorf("verify does not name the damaged rows:\n%s", r.stdout)
	}
	o.mustCode(keep(o.cmd([]string{"verify", "--json"}, debug)), exitQuarantined)
	o.mustCode(keep(o.cmd([]string{"verify", "--sample", "10"}, debug)), exitQuarantined)
	o.mustCode(keep(o.cmd([]string{"keys", "retire", "--key", o.Old.Ref}, debug)), exitConfig)
	o.mustCode(keep(o.cmd([]string{"keys", "--json"}, debug)), exitOK)

	secrets := map[string][]byte{"canary": []byte(canary)}
	keys := rec.all()
	for i, k := range keys {
		secrets[fmt.Sprintf("data key %d", i)] = k
	}
	// The run's Decrypts alone return the 150+1 writers' keys again, and it
	// generated a key per page: the recorder saw them all.
	if len(keys) < 2*150 {
		t.Fatalf("recorded %d data keys, want at least 300: the recorder is not in the path", len(keys))
	}
	if haystack.Len() < 10_000 {
		t.Fatalf("only %d bytes of output collected", haystack.Len())
	}
	// The search itself works: a planted key is found in each of its forms.
	for _, f := range forms(keys[0]) {
		if got := leaks([]byte("xx"+f+"yy"), map[string][]byte{"planted": keys[0]}); len(got) == 0 {
			t.Fatalf("the search misses a planted key in form %q", f)
		}
	}
	if found := leaks(haystack.Bytes(), secrets); len(found) > 0 {
		t.Errorf("secrets leaked into output, metrics or pushes (%d bytes searched):\n  %s", haystack.Len(), strings.Join(found, "\n  "))
	}
	t.Logf("searched %d bytes of output from %d scrapes, %d pushes and 12 commands for the canary and %d data keys",
		haystack.Len(), scrapes, len(pushes), len(keys))
}

// TestPasswordsNeverShown: flag defaults come from the environment, so help,
// usage errors and the start log line would show DATABASE_URL and
// PUSHGATEWAY_URL as given. Passwords in userinfo and in the password and
// sslpassword query parameters (and keyword/value strings) must never
// appear in what any of these paths print.
func TestPasswordsNeverShown(t *testing.T) {
	o := newOpEnv(t, "uuid")
	o.Seed(20, o.Old, 1)
	_, gwURL := newPushgateway(t)
	u, err := url.Parse(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	pw := func(what string) string { return "PW-" + what + "-" + hex.EncodeToString(nonce) }
	withUserinfo := *u
	withUserinfo.User = url.UserPassword(u.User.Username(), pw("userinfo"))
	q := u.Query()
	q.Set("password", pw("query"))
	q.Set("sslpassword", pw("sslquery"))
	withQuery := *u
	withQuery.RawQuery = q.Encode()
	gw, _ := url.Parse(gwURL)
	gw.User = url.UserPassword("push", pw("pushgateway"))
	kv := fmt.Sprintf("host=%s port=%s dbname=%s user=postgres password='%s' sslmode=disable",
		u.Hostname(), u.Port(), strings.TrimPrefix(u.Path, "/"), pw("keyword"))
	replica := *u
	replica.User = url.UserPassword(u.User.Username(), pw("replica"))
	replicas := replica.String() + "," + withQuery.String()
	secrets := []string{pw("userinfo"), pw("query"), pw("sslquery"), pw("pushgateway"), pw("keyword"), pw("replica")}

	var out bytes.Buffer
	try := func(want int, args []string, extra ...string) {
		t.Helper()
		r := o.cmd(args, extra...)
		out.WriteString(r.stdout + r.stderr)
		if r.code != want {
			t.Errorf("reencrypt %s: exit %d, want %d\n%s", strings.Join(args, " "), r.code, want, r)
		}
	}
	for _, db := range []string{withUserinfo.String(), withQuery.String(), kv} {
		env := []string{"DATABASE_URL=" + db, "PUSHGATEWAY_URL=" + gw.String(), "REPLICA_URLS=" + replicas}
		try(exitOK, []string{"run", "--help"}, env...)
		try(exitUsage, []string{"run", "--no-such-flag"}, env...)
		try(exitUsage, []string{"status", "--batch-size=x"}, env...) // not a flag of status
		try(exitConfig, []string{"run", "--batch-size=x"}, env...)
		try(exitConfig, []string{"run"}, append(env, "BATCH_SIZE=0")...)
		try(exitConfig, []string{"run"}, "DATABASE_URL="+db, "PUSHGATEWAY_URL=not a url "+pw("pushgateway"))
		try(exitOK, []string{"run"}, env...) // the start line logs the configuration
	}
	if !strings.Contains(out.String(), "-database-url") || !strings.Contains(out.String(), "reencrypt run starting") {
		t.Fatalf("the help or the start line is missing from the output:\n%s", tail(out.String()))
	}
	for _, s := range secrets {
		if i := strings.Index(out.String(), s); i >= 0 {
			t.Errorf("password %s shown: …%s…", s, out.String()[max(0, i-120):i+len(s)])
		}
	}
}
