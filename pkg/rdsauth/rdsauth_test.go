package rdsauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testAccessKey = "AKIARDSAUTHTESTKEY01"
	testSecretKey = "rdsauth-test-secret-access-key"
	testRegion    = "eu-west-1"
)

// sessionCreds hands out the same key with a new session token on every
// Retrieve, as a refreshed IRSA session would: two tokens built from two
// retrievals differ, so a token reused across connections shows.
type sessionCreds struct{ n atomic.Int32 }

func (c *sessionCreds) Retrieve(context.Context) (aws.Credentials, error) {
	n := c.n.Add(1)
	return aws.Credentials{AccessKeyID: testAccessKey, SecretAccessKey: testSecretKey,
		SessionToken: fmt.Sprintf("session-%d", n), Source: "test"}, nil
}

func parseConfig(t *testing.T, connString string) *pgxpool.Config {
	t.Helper()
	pc, err := pgxpool.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// checkToken parses a token as the presigned URL it is and checks that it
// lets user connect to host:port in region, signed now with the test key.
// The signature is recomputed with SigV4 from the token's own date: a token
// signed with another secret, or for another host, user or region, fails.
func checkToken(t *testing.T, token, hostPort, user, region, sessionToken string) {
	t.Helper()
	u, err := url.Parse("https://" + token)
	if err != nil {
		t.Fatalf("token is not a presigned URL: %v", err)
	}
	q := u.Query()
	if u.Host != hostPort {
		t.Errorf("token host = %q, want %q", u.Host, hostPort)
	}
	date, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		t.Fatalf("X-Amz-Date %q: %v", q.Get("X-Amz-Date"), err)
	}
	if d := time.Since(date); d < -time.Minute || d > time.Minute {
		t.Errorf("token signed at %s, want now (a token is valid for 15 minutes from its signature)", date)
	}
	for k, want := range map[string]string{
		"Action":               "connect",
		"DBUser":               user,
		"X-Amz-Algorithm":      "AWS4-HMAC-SHA256",
		"X-Amz-Credential":     testAccessKey + "/" + date.Format("20060102") + "/" + region + "/rds-db/aws4_request",
		"X-Amz-Expires":        "900",
		"X-Amz-SignedHeaders":  "host",
		"X-Amz-Security-Token": sessionToken,
	} {
		if got := q.Get(k); got != want {
			t.Errorf("token %s = %q, want %q", k, got, want)
		}
	}
	sig := q.Get("X-Amz-Signature")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(sig) {
		t.Fatalf("X-Amz-Signature %q, want 64 hex digits", sig)
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+hostPort+"/?"+url.Values{
		"Action": {"connect"}, "DBUser": {user}, "X-Amz-Expires": {"900"}}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	signed, _, err := v4.NewSigner().PresignHTTP(context.Background(),
		aws.Credentials{AccessKeyID: testAccessKey, SecretAccessKey: testSecretKey, SessionToken: sessionToken},
		req, emptyPayloadHash, "rds-db", region, date)
	if err != nil {
		t.Fatal(err)
	}
	su, _ := url.Parse(signed)
	if want := su.Query().Get("X-Amz-Signature"); sig != want {
		t.Errorf("X-Amz-Signature = %s, want %s (SigV4 of the connect request with the test key)", sig, want)
	}
}

func TestBeforeConnectSetsAPresignedToken(t *testing.T) {
	for _, tc := range []struct{ name, conn, hostPort, user string }{
		{"url", "postgres://reencrypt_job@payments.cluster-abc.eu-west-1.rds.amazonaws.com:6543/payments?sslmode=verify-full", "payments.cluster-abc.eu-west-1.rds.amazonaws.com:6543", "reencrypt_job"},
		{"keyword/value, default port", "host=db.internal user=job dbname=p sslmode=require", "db.internal:5432", "job"},
		{"password in the URL is replaced", "postgres://job:stale@db.internal/p?sslmode=require", "db.internal:5432", "job"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := parseConfig(t, tc.conn)
			creds := &sessionCreds{}
			if err := Configure(pc, Options{Region: testRegion, Credentials: creds}); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(tc.conn, ":stale@") && pc.ConnConfig.Password != "stale" {
				t.Error("Configure changed the pool's own password; only the copy BeforeConnect gets should hold a token")
			}
			cc := pc.ConnConfig.Copy()
			if err := pc.BeforeConnect(context.Background(), cc); err != nil {
				t.Fatal(err)
			}
			checkToken(t, cc.Password, tc.hostPort, tc.user, testRegion, "session-1")
		})
	}
}

func TestConfigureRefuses(t *testing.T) {
	creds := &sessionCreds{}
	for _, tc := range []struct{ name, conn, want string }{
		{"sslmode=disable", "postgres://job@db.internal/p?sslmode=disable", "needs TLS"},
		{"sslmode=allow", "postgres://job@db.internal/p?sslmode=allow", "needs TLS"},
		{"sslmode=prefer", "postgres://job@db.internal/p?sslmode=prefer", "needs TLS"},
		{"sslmode not set (pgx: prefer)", "postgres://job@db.internal/p", "needs TLS"},
		{"unix socket", "host=/var/run/postgresql user=job sslmode=require", "Unix socket"},
		{"several hosts", "postgres://job@db-a.internal:5432,db-b.internal:5432/p?sslmode=require", "several"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := parseConfig(t, tc.conn)
			err := Configure(pc, Options{Region: testRegion, Credentials: creds})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Configure = %v, want an error containing %q", err, tc.want)
			}
			if pc.BeforeConnect != nil {
				t.Error("refused, but BeforeConnect was installed")
			}
		})
	}
	pc := parseConfig(t, "postgres://job@db.internal/p?sslmode=require")
	if err := Configure(pc, Options{Credentials: creds}); err == nil || !strings.Contains(err.Error(), "AWS_REGION") {
		t.Errorf("no region: Configure = %v, want an error naming AWS_REGION", err)
	}
	if n := creds.n.Load(); n != 0 {
		t.Errorf("credentials retrieved %d times by refused configurations, want 0", n)
	}
}

func TestTokenErrorsKeepTheirCause(t *testing.T) {
	pc := parseConfig(t, "postgres://job@db.internal/p?sslmode=require")
	boom := errors.New("web identity: AccessDenied")
	err := Configure(pc, Options{Region: testRegion, Credentials: &sessionCreds{},
		Token: func(context.Context, string, string, string, aws.CredentialsProvider) (string, error) {
			return "", boom
		}})
	if err != nil {
		t.Fatal(err)
	}
	cc := pc.ConnConfig.Copy()
	err = pc.BeforeConnect(context.Background(), cc)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `"job"`) || !strings.Contains(err.Error(), "db.internal:5432") {
		t.Errorf("BeforeConnect = %v, want the cause, the user and the endpoint", err)
	}
}

// TestEveryConnectionGetsItsOwnTokenOverTLS opens connections through a real
// pgxpool to a fake server that speaks the Postgres protocol over TLS, asks
// for a cleartext password as RDS does for IAM users, and records what it
// receives: each connection must bring a fresh token, over TLS. The server
// then refuses the last one, and the error must not show its token.
func TestEveryConnectionGetsItsOwnTokenOverTLS(t *testing.T) {
	srv := startPasswordServer(t)
	pc := parseConfig(t, fmt.Sprintf("postgres://reencrypt_job@127.0.0.1:%d/payments?sslmode=require&connect_timeout=5", srv.port))
	pc.MaxConns = 3
	creds := &sessionCreds{}
	if err := Configure(pc, Options{Region: testRegion, Credentials: creds}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	const conns = 3
	var held []*pgxpool.Conn
	for range conns {
		c, err := pool.Acquire(ctx) // all held: each Acquire opens a connection
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	for _, c := range held {
		c.Release()
	}
	got := srv.attempts()
	if len(got) != conns {
		t.Fatalf("server saw %d connections, want %d", len(got), conns)
	}
	hostPort := fmt.Sprintf("127.0.0.1:%d", srv.port)
	seen := map[string]bool{}
	for i, a := range got {
		if !a.tls {
			t.Errorf("connection %d sent its password without TLS", i+1)
		}
		if seen[a.password] {
			t.Errorf("connection %d reused a token", i+1)
		}
		seen[a.password] = true
		checkToken(t, a.password, hostPort, "reencrypt_job", testRegion, fmt.Sprintf("session-%d", i+1))
	}

	// Refused by the server: the error names the user, not the token.
	srv.refuse.Store(true)
	pool.Reset()
	err = pool.Ping(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("Ping after refusal = %v, want the server's 28P01", err)
	}
	all := srv.attempts()
	last := all[len(all)-1].password
	sig := last[strings.Index(last, "X-Amz-Signature=")+len("X-Amz-Signature="):]
	for _, secret := range []string{last, sig, "session-", testSecretKey} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q shows %q", err, secret)
		}
	}
}

type attempt struct {
	password string
	tls      bool
}

// passwordServer is a Postgres front door over TLS that asks every client
// for a cleartext password (as RDS does for an IAM user), records it, and
// accepts or refuses the login.
type passwordServer struct {
	port   int
	refuse atomic.Bool

	mu   sync.Mutex
	seen []attempt
}

func (s *passwordServer) attempts() []attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]attempt(nil), s.seen...)
}

func startPasswordServer(t *testing.T) *passwordServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert := selfSigned(t)
	s := &passwordServer{port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	var connsMu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s.serve(c, cert)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *passwordServer) serve(raw net.Conn, cert tls.Certificate) {
	var conn net.Conn = raw
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	isTLS := false
	if _, ok := msg.(*pgproto3.SSLRequest); ok {
		if _, err := conn.Write([]byte("S")); err != nil {
			return
		}
		tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			return
		}
		conn, isTLS = tc, true
		be = pgproto3.NewBackend(conn, conn)
		if msg, err = be.ReceiveStartupMessage(); err != nil {
			return
		}
	}
	if _, ok := msg.(*pgproto3.StartupMessage); !ok {
		return
	}
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return
	}
	fm, err := be.Receive()
	if err != nil {
		return
	}
	pw, ok := fm.(*pgproto3.PasswordMessage)
	if !ok {
		return
	}
	s.mu.Lock()
	s.seen = append(s.seen, attempt{password: pw.Password, tls: isTLS})
	s.mu.Unlock()
	if s.refuse.Load() {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: `password authentication failed for user "reencrypt_job"`})
		_ = be.Flush()
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "16.4"})
	be.Send(&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"})
	be.Send(&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return
	}
	for { // until Terminate or the client goes away
		fm, err := be.Receive()
		if err != nil {
			return
		}
		if _, ok := fm.(*pgproto3.Terminate); ok {
			return
		}
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
