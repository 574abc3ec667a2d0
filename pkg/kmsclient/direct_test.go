package kmsclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// sigChecker is a reverse proxy in front of an emulator that checks every
// request's SigV4 signature the way KMS does: it signs the request it
// received again, with the secret it knows, the signed headers the client
// named and the client's X-Amz-Date, and compares. The emulators do not check
// signatures, so without it a wrongly signed request would pass every test
// here and fail on AWS.
type sigChecker struct {
	secret string
	next   http.Handler

	mu       sync.Mutex
	ok       map[string]int // X-Amz-Target -> requests with a good signature
	rejected []string
}

func (s *sigChecker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	target := r.Header.Get("X-Amz-Target")
	if why := s.check(r, body); why != "" {
		s.mu.Lock()
		s.rejected = append(s.rejected, target+": "+why)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"__type":"InvalidSignatureException","message":%q}`, why)
		return
	}
	s.mu.Lock()
	s.ok[target]++
	s.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.next.ServeHTTP(w, r)
}

// check returns why r's signature is wrong, or "".
func (s *sigChecker) check(r *http.Request, body []byte) string {
	auth := r.Header.Get("Authorization")
	scheme, rest, _ := strings.Cut(auth, " ")
	if scheme != "AWS4-HMAC-SHA256" {
		return "no SigV4 Authorization header"
	}
	fields := map[string]string{}
	for _, f := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	cred := strings.Split(fields["Credential"], "/") // AKID/date/region/service/aws4_request
	if len(cred) != 5 || cred[3] != "kms" || cred[4] != "aws4_request" {
		return "credential scope " + fields["Credential"]
	}
	signedAt, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return "X-Amz-Date: " + err.Error()
	}
	again, err := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	for _, h := range strings.Split(fields["SignedHeaders"], ";") {
		if h != "host" && h != "content-length" {
			again.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	creds := aws.Credentials{AccessKeyID: cred[0], SecretAccessKey: s.secret, SessionToken: r.Header.Get("X-Amz-Security-Token")}
	hash := sha256Hex(body)
	if got := r.Header.Get("X-Amz-Content-Sha256"); got != "" && got != hash {
		return "payload hash header does not match the body"
	}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, again, hash, cred[3], cred[2], signedAt); err != nil {
		return err.Error()
	}
	if want := again.Header.Get("Authorization"); want != auth {
		return fmt.Sprintf("signature mismatch:\n got  %s\n want %s", auth, want)
	}
	return ""
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// The direct path signs like the SDK: every per-row operation, with and
// without a session token, passes a SigV4 check that also accepts the
// SDK's own requests (the control) and rejects a wrong secret (so the check
// can fail).
func TestDirectPathSignsLikeTheSDK(t *testing.T) {
	k := testbed.LocalKMS(t)
	upstream, err := url.Parse(k.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range k.Env() {
		name, val, _ := strings.Cut(kv, "=")
		env[name] = val
	}
	checker := &sigChecker{secret: env["AWS_SECRET_ACCESS_KEY"], next: httputil.NewSingleHostReverseProxy(upstream), ok: map[string]int{}}
	if checker.secret == "" {
		t.Fatal("the emulator's environment has no AWS_SECRET_ACCESS_KEY")
	}
	srv := httptest.NewServer(checker)
	defer srv.Close()
	ctx := context.Background()

	for _, token := range []string{"", "session-token-123"} {
		t.Run(fmt.Sprintf("session token %q", token), func(t *testing.T) {
			t.Setenv("AWS_SESSION_TOKEN", token)
			api := newSDKClient(t, k, srv.URL, kmsclient.Options{MaxAttempts: 1})
			key := newKey(t, k, api, "sig") // DescribeKey: the SDK's stack, the control
			c := kmsclient.NewClient(api, "payment_methods", nil)
			dek, wdek, err := c.GenerateDataKey(ctx, key.ARN)
			if err != nil {
				t.Fatalf("GenerateDataKey: %v", err)
			}
			got, err := c.Decrypt(ctx, key.ARN, wdek)
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if !bytes.Equal(got, dek) {
				t.Fatal("Decrypt returned another key than GenerateDataKey")
			}
			if _, err := c.ReEncrypt(ctx, wdek, key.ARN, key.ARN); err != nil {
				t.Fatalf("ReEncrypt: %v", err)
			}
		})
	}
	checker.mu.Lock()
	t.Logf("good signatures by operation: %v", checker.ok)
	for _, op := range []string{"DescribeKey", "GenerateDataKey", "Decrypt", "ReEncrypt"} {
		if checker.ok["TrentService."+op] < 2 {
			t.Errorf("%s: %d requests with a good signature, want one per session-token case", op, checker.ok["TrentService."+op])
		}
	}
	if len(checker.rejected) > 0 {
		t.Errorf("rejected signatures:\n%s", strings.Join(checker.rejected, "\n"))
	}
	checker.rejected = nil
	checker.mu.Unlock()

	// The check can fail: a client that signs with another secret is refused.
	t.Setenv("AWS_SESSION_TOKEN", "")
	for name, val := range env {
		t.Setenv(name, val)
	}
	t.Setenv("AWS_ENDPOINT_URL_KMS", srv.URL)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
	wrong, err := kmsclient.New(ctx, kmsclient.Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wrong.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: []byte("x"), KeyId: aws.String("k")})
	if err == nil || !strings.Contains(err.Error(), "InvalidSignatureException") {
		t.Fatalf("a request signed with a wrong secret: got %v, want InvalidSignatureException", err)
	}
}

// Errors of the direct path are those of the SDK path: the same AWS code,
// the same kmsclient class, and the same retry decisions, for a disabled
// key, a wrong encryption context, a corrupt blob, a KMS that stays
// throttled or fails, a dropped connection, an answer that never comes, and
// a cancelled call.
func TestDirectPathErrorsMatchTheSDK(t *testing.T) {
	k := testbed.LocalKMS(t)
	proxy, err := kmsfault.Start(k.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	ctx := context.Background()
	opts := kmsclient.Options{MaxAttempts: 2, MaxBackoff: 5 * time.Millisecond, Timeout: 300 * time.Millisecond}
	direct := newSDKClient(t, k, proxy.Endpoint(), opts)
	opts.SDKOnly = true
	sdk := newSDKClient(t, k, proxy.Endpoint(), opts)

	key := newKey(t, k, sdk, "parity")
	disabled := newKey(t, k, sdk, "parity-disabled")
	good := kmsclient.NewClient(sdk, "payment_methods", nil)
	dek, wdek, err := good.GenerateDataKey(ctx, key.ARN)
	if err != nil {
		t.Fatal(err)
	}
	dek.Zero()
	corrupt := bytes.Clone(wdek)
	corrupt[len(corrupt)-1] ^= 1 // the ciphertext's tag
	_, wdekDisabled, err := good.GenerateDataKey(ctx, disabled.ARN)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := k.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(disabled.ARN)}); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	type outcome struct {
		code                           string
		unusable, badBlob, unavailable bool
		canceled                       bool
	}
	cases := []struct {
		name   string
		faults kmsfault.Faults
		ns     string
		call   func(c *kmsclient.Client) error
		want   outcome
	}{
		{"disabled key", kmsfault.Faults{}, "payment_methods",
			func(c *kmsclient.Client) error { _, err := c.Decrypt(ctx, disabled.ARN, wdekDisabled); return err },
			outcome{code: "DisabledException", unusable: true}},
		{"other encryption context", kmsfault.Faults{}, "other_namespace",
			func(c *kmsclient.Client) error { _, err := c.Decrypt(ctx, key.ARN, wdek); return err },
			outcome{code: "InvalidCiphertextException", badBlob: true}},
		{"corrupt blob", kmsfault.Faults{}, "payment_methods",
			func(c *kmsclient.Client) error {
				_, err := c.ReEncrypt(ctx, corrupt, key.ARN, key.ARN)
				return err
			},
			outcome{code: "InvalidCiphertextException", badBlob: true}},
		{"always throttled", kmsfault.Faults{Throttle: 1}, "payment_methods",
			func(c *kmsclient.Client) error { _, _, err := c.GenerateDataKey(ctx, key.ARN); return err },
			outcome{code: "ThrottlingException", unavailable: true}},
		{"always 5xx", kmsfault.Faults{Error5xx: 1}, "payment_methods",
			func(c *kmsclient.Client) error { _, err := c.Decrypt(ctx, key.ARN, wdek); return err },
			outcome{code: "KMSInternalException", unavailable: true}},
		{"connection dropped", kmsfault.Faults{Reset: 1}, "payment_methods",
			func(c *kmsclient.Client) error { _, err := c.Decrypt(ctx, key.ARN, wdek); return err },
			outcome{unavailable: true}},
		{"answer never comes (attempt timeout)", kmsfault.Faults{Hang: 1}, "payment_methods",
			func(c *kmsclient.Client) error { _, err := c.Decrypt(ctx, key.ARN, wdek); return err },
			outcome{unavailable: true}},
		{"cancelled", kmsfault.Faults{}, "payment_methods",
			func(c *kmsclient.Client) error { _, err := c.Decrypt(cancelled, key.ARN, wdek); return err },
			outcome{canceled: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			proxy.Set(tc.faults)
			defer proxy.Set(kmsfault.Faults{})
			got := map[string]outcome{}
			for name, api := range map[string]kmsclient.KMS{"direct": direct, "sdk": sdk} {
				err := tc.call(kmsclient.NewClient(api, tc.ns, nil))
				if err == nil {
					t.Fatalf("%s: no error", name)
				}
				var kerr *kmsclient.Error
				o := outcome{unusable: errors.Is(err, kmsclient.ErrKeyUnusable), badBlob: errors.Is(err, kmsclient.ErrBadCiphertext),
					unavailable: errors.Is(err, kmsclient.ErrUnavailable), canceled: errors.Is(err, context.Canceled)}
				if errors.As(err, &kerr) {
					o.code = kerr.Code
				}
				got[name] = o
				if o != tc.want {
					t.Errorf("%s: %+v from %v, want %+v", name, o, err, tc.want)
				}
			}
			if got["direct"] != got["sdk"] {
				t.Errorf("direct %+v, sdk %+v: the paths differ", got["direct"], got["sdk"])
			}
		})
	}
}

// KMS_DIRECT=false (Options.SDKOnly) is the SDK's client itself.
func TestSDKOnlyIsTheSDKClient(t *testing.T) {
	k := testbed.LocalKMS(t)
	if _, ok := newSDKClient(t, k, "", kmsclient.Options{SDKOnly: true}).(*kms.Client); !ok {
		t.Error("SDKOnly: want the SDK's *kms.Client")
	}
	if _, ok := newSDKClient(t, k, "", kmsclient.Options{}).(*kms.Client); ok {
		t.Error("default: got the SDK's *kms.Client, want the direct path")
	}
}

// countingFront is a reverse proxy in front of the emulator, not started
// yet, that counts the connections clients open to it.
func countingFront(t *testing.T, k *testbed.KMSServer) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	upstream, err := url.Parse(k.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	opened := new(atomic.Int64)
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(upstream))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	return srv, opened
}

// The direct path keeps its connections alive, and a connection the server
// closed while it was idle costs no retry: it is found closed before a
// request goes on it, as http.Transport finds it (the server here closes
// idle connections after 30 ms; a request sent on the closed connection
// would fail and show as a second attempt). Both ways the direct path
// sends: its own connections, and http.Transport when a proxy applies.
func TestDirectPathConnections(t *testing.T) {
	k := testbed.LocalKMS(t)
	srv, opened := countingFront(t, k)
	srv.Config.IdleTimeout = 30 * time.Millisecond
	srv.Start()
	defer srv.Close()
	ctx := context.Background()

	for _, through := range []string{"own connections", "http.Transport"} {
		t.Run(through, func(t *testing.T) {
			var attempts atomic.Int64
			api := newSDKClient(t, k, srv.URL, kmsclient.Options{MaxAttempts: 3, Observe: func(op, result string, _ time.Duration) {
				if op == "Decrypt" {
					attempts.Add(1)
				}
			}})
			if through == "http.Transport" && !kmsclient.ThroughTransport(api) {
				t.Fatal("not the direct path")
			}
			key := newKey(t, k, api, "conns")
			c := kmsclient.NewClient(api, "payment_methods", nil)
			dek, wdek, err := c.GenerateDataKey(ctx, key.ARN)
			if err != nil {
				t.Fatal(err)
			}
			dek.Zero()
			decrypt := func() {
				t.Helper()
				d, err := c.Decrypt(ctx, key.ARN, wdek)
				if err != nil {
					t.Fatalf("Decrypt: %v", err)
				}
				d.Zero()
			}

			decrypt() // the connection the rest reuse
			before := opened.Load()
			const quick = 20
			for range quick {
				decrypt()
			}
			if n := opened.Load() - before; n != 0 {
				t.Errorf("%d calls in a row opened %d connections, want 0 (kept alive)", quick, n)
			}

			attempts.Store(0)
			before = opened.Load()
			const afterIdle = 5
			for range afterIdle {
				time.Sleep(150 * time.Millisecond) // the server closes the idle connection
				decrypt()
			}
			if n := opened.Load() - before; n < afterIdle {
				t.Fatalf("%d calls after idle pauses opened %d connections: the server did not close idle ones, the test shows nothing", afterIdle, n)
			}
			if n := attempts.Load(); n != afterIdle {
				t.Errorf("%d calls after idle pauses made %d attempts, want %d: a stale connection cost a retry", afterIdle, n, afterIdle)
			}
		})
	}
}

// Every request the direct path sends is an attempt the budget let through:
// when the server drops a kept-alive connection with the request on it, the
// request goes again only as the retry loop's next attempt, never as a free
// resend (which would put more requests on a KMS quota shared with the live
// API than KMS_RATE_LIMIT allows).
func TestDirectPathSendsOnlyBudgetedAttempts(t *testing.T) {
	k := testbed.LocalKMS(t)
	proxy, err := kmsfault.Start(k.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	ctx := context.Background()
	var attempts atomic.Int64
	api := newSDKClient(t, k, proxy.Endpoint(), kmsclient.Options{MaxAttempts: 3, MaxBackoff: 5 * time.Millisecond,
		Observe: func(op, _ string, _ time.Duration) {
			if op == "Decrypt" {
				attempts.Add(1)
			}
		}})
	key := newKey(t, k, api, "budgeted")
	c := kmsclient.NewClient(api, "payment_methods", nil)
	dek, wdek, err := c.GenerateDataKey(ctx, key.ARN)
	if err != nil {
		t.Fatal(err)
	}
	dek.Zero()
	for range 3 { // connections kept alive for the dropped ones below
		d, err := c.Decrypt(ctx, key.ARN, wdek)
		if err != nil {
			t.Fatal(err)
		}
		d.Zero()
	}
	attempts.Store(0)
	proxy.ResetCounts()
	proxy.Set(kmsfault.Faults{Reset: 1})
	if _, err := c.Decrypt(ctx, key.ARN, wdek); !errors.Is(err, kmsclient.ErrUnavailable) {
		t.Fatalf("every connection dropped: got %v, want ErrUnavailable", err)
	}
	if got, sent := attempts.Load(), proxy.Total(); sent != got || got != 3 {
		t.Errorf("the proxy saw %d requests for %d attempts (MaxAttempts 3): want one request per attempt", sent, got)
	}
}

// Over HTTPS (every real KMS endpoint) the direct path's own connections
// use the SDK's TLS settings: a server whose certificate the SDK was told to
// trust (AWS_CA_BUNDLE) is reached and kept alive, and without that bundle
// the same server is refused, so certificates are checked.
func TestDirectPathOverTLS(t *testing.T) {
	k := testbed.LocalKMS(t)
	srv, opened := countingFront(t, k)
	srv.StartTLS()
	defer srv.Close()
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Setenv("AWS_CA_BUNDLE", bundle)
	api := newSDKClient(t, k, srv.URL, kmsclient.Options{MaxAttempts: 1})
	key := newKey(t, k, api, "tls")
	c := kmsclient.NewClient(api, "payment_methods", nil)
	dek, wdek, err := c.GenerateDataKey(ctx, key.ARN)
	if err != nil {
		t.Fatalf("GenerateDataKey over TLS: %v", err)
	}
	before := opened.Load()
	for range 10 {
		got, err := c.Decrypt(ctx, key.ARN, wdek)
		if err != nil {
			t.Fatalf("Decrypt over TLS: %v", err)
		}
		if !bytes.Equal(got, dek) {
			t.Fatal("Decrypt over TLS returned another key")
		}
		got.Zero()
	}
	dek.Zero()
	if n := opened.Load() - before; n != 0 {
		t.Errorf("10 Decrypts over TLS opened %d connections, want 0 (kept alive)", n)
	}

	t.Setenv("AWS_CA_BUNDLE", "")
	untrusting := newSDKClient(t, k, srv.URL, kmsclient.Options{MaxAttempts: 1})
	_, err = untrusting.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: wdek, KeyId: aws.String(key.ARN)})
	var unknownCA x509.UnknownAuthorityError
	if !errors.As(err, &unknownCA) {
		t.Fatalf("a server the SDK was not told to trust: got %v, want a certificate error", err)
	}
}
