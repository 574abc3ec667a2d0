package kmsclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// conns sends the direct path's requests over kept-alive HTTP/1.1
// connections, writing the request and reading its answer on the caller's
// goroutine, one request per connection at a time.
//
// Why not http.Transport: it hands every request to a connection's write
// goroutine and the answer back from its read goroutine, and waits for the
// body to be read on a third hand-off. On legacy data, with one KMS call per
// row, those hand-offs and their wake-ups were about a sixth of the call's
// client CPU (BenchmarkDecryptCPU, direct against direct-transport). A
// request that fails is never sent again here: the retry loop's next
// attempt goes through the budget. The request is still written by net/http
// (Request.Write) and the answer parsed by it (http.ReadResponse); what this
// replaces is only the connection pool. It is used only for the endpoint it
// was made for, and only when no proxy applies to it (see newConns); TLS
// uses the SDK transport's TLS settings (custom CA bundles included), and
// offers only HTTP/1.1.
type conns struct {
	addr        string      // host:port to dial
	tls         *tls.Config // nil for http
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle []*conn // most recently used last
}

// conn is one connection, with its buffers.
type conn struct {
	net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

// newConns returns a pool for endpoint, or nil when the direct path should
// use t itself: a proxy applies to the endpoint, or its scheme is neither
// http nor https.
func newConns(endpoint string, t *http.Transport, maxIdle int) (*conns, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	if t.Proxy != nil {
		p, err := t.Proxy(&http.Request{URL: u})
		if err != nil {
			return nil, fmt.Errorf("proxy for %s: %w", u.Host, err)
		}
		if p != nil {
			return nil, nil
		}
	}
	port := u.Port()
	c := &conns{
		dialer:      net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     maxIdle,
		idleTimeout: t.IdleConnTimeout,
	}
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
		cfg := &tls.Config{}
		if t.TLSClientConfig != nil {
			cfg = t.TLSClientConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		cfg.NextProtos = []string{"http/1.1"}
		c.tls = cfg
	default:
		return nil, nil
	}
	if c.idleTimeout <= 0 {
		c.idleTimeout = 90 * time.Second
	}
	c.addr = net.JoinHostPort(u.Hostname(), port)
	return c, nil
}

// do sends req and reads the whole answer into body (at most limit bytes)
// on this goroutine. The returned response's Body is already drained and
// closed. ctx bounds the whole exchange, dial included. A failure is not
// sent again here: the caller's retry loop decides, through the budget.
func (p *conns) do(ctx context.Context, req *http.Request, body io.Writer, limit int64) (*http.Response, error) {
	c, err := p.get(ctx)
	if err != nil {
		return nil, err
	}
	return p.exchange(ctx, c, req, body, limit)
}

func (p *conns) exchange(ctx context.Context, c *conn, req *http.Request, body io.Writer, limit int64) (*http.Response, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	// Cancelling ctx unblocks the read or write in progress.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = c.Close()
		return nil, err
	}
	if err := req.Write(c.bw); err != nil {
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(c.br, req)
	if err != nil {
		return fail(err)
	}
	n, err := io.Copy(body, io.LimitReader(resp.Body, limit))
	_ = resp.Body.Close()
	if err != nil {
		stop()
		_ = c.Close()
		return nil, fmt.Errorf("read answer: %w", err)
	}
	// Kept unless cancelled meanwhile, the server asked to close, or an
	// answer was left unread.
	keep := stop() && !resp.Close && n < limit && c.br.Buffered() == 0
	// The answer may hold a plaintext data key: the read buffer does not
	// keep it (the caller clears body).
	c.scrub()
	if !keep {
		_ = c.Close()
		return resp, nil
	}
	_ = c.SetDeadline(time.Time{})
	p.put(c)
	return resp, nil
}

// scrub overwrites the read buffer with zeros, dropping anything unread,
// then reads from the connection again.
func (c *conn) scrub() {
	c.br.Reset(zeroes{})
	_, _ = c.br.Peek(c.br.Size())
	c.br.Reset(c.Conn)
}

// zeroes reads as an endless run of zero bytes.
type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// get returns an idle connection the server has not closed, or dials a new
// one. (http.Transport learns that a server closed an idle connection from
// the read it keeps pending on it; here the check is made when the
// connection is taken: see peerClosed.)
func (p *conns) get(ctx context.Context) (*conn, error) {
	now := time.Now()
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if now.Sub(c.idleSince) < p.idleTimeout && !peerClosed(c.Conn) {
			return c, nil
		}
		_ = c.Close()
	}
	nc, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	if p.tls != nil {
		tc := tls.Client(nc, p.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, err
		}
		nc = tc
	}
	c := &conn{Conn: nc}
	c.br = bufio.NewReaderSize(nc, 4096)
	c.bw = bufio.NewWriterSize(nc, 4096)
	return c, nil
}

func (p *conns) put(c *conn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= p.maxIdle {
		_ = c.Close()
		return
	}
	p.idle = append(p.idle, c)
}

// closeIdle closes the idle connections.
func (p *conns) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
}
