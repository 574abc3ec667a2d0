package faults

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// CutMode says what PGProxy does to the COMMIT of a transaction.
type CutMode int

const (
	// CutNone forwards everything.
	CutNone CutMode = iota
	// CutBeforeCommit drops the connection instead of forwarding the COMMIT:
	// the server never sees it and rolls the transaction back, while the
	// client only knows that its COMMIT failed.
	CutBeforeCommit
	// CutAfterCommit forwards the COMMIT and drops the connection before the
	// server's answer comes back: the server commits, the client cannot know
	// it did (the "unknown outcome" of a commit).
	CutAfterCommit
)

func (m CutMode) String() string {
	switch m {
	case CutBeforeCommit:
		return "before_commit"
	case CutAfterCommit:
		return "after_commit"
	}
	return "none"
}

// PGProxy is a TCP proxy in front of a Postgres server that reads the
// frontend protocol from the client and, when armed, cuts the connection
// around the COMMIT of a transaction that ran statements (BEGIN, at least two
// statements, COMMIT — the shape of reencrypt's page transaction; pgx sends
// BEGIN and COMMIT as simple queries). Everything else passes untouched.
type PGProxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	mode  CutMode
	armed int // cuts left to make
	cuts  int // cuts made

	match     string // CutOn: drop the connection at a statement holding this
	matchLeft int
	onMatch   string // OnStatement: call onFn before this statement runs
	onFn      func()
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

// StartPGProxy listens on a free loopback port and forwards to upstream
// ("127.0.0.1:5432").
func StartPGProxy(upstream string) (*PGProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &PGProxy{ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *PGProxy) Addr() string { return p.ln.Addr().String() }

// Arm makes the next n qualifying COMMITs be cut in the given mode.
func (p *PGProxy) Arm(mode CutMode, n int) {
	p.mu.Lock()
	p.mode, p.armed = mode, n
	p.mu.Unlock()
}

// CutOn makes the next n statements (simple Query or extended Parse) whose
// text contains substr drop their connection instead of reaching the server.
func (p *PGProxy) CutOn(substr string, n int) {
	p.mu.Lock()
	p.match, p.matchLeft = substr, n
	p.mu.Unlock()
}

func (p *PGProxy) takeMatch(stmt []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.matchLeft <= 0 || p.match == "" || !strings.Contains(string(stmt), p.match) {
		return false
	}
	p.matchLeft--
	p.cuts++
	return true
}

// Cuts is how many connections were cut so far.
func (p *PGProxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// Close stops listening, drops every connection and waits for the copiers.
func (p *PGProxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *PGProxy) take() CutMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armed <= 0 || p.mode == CutNone {
		return CutNone
	}
	p.armed--
	p.cuts++
	return p.mode
}

func (p *PGProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *PGProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *PGProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.track(client)
		p.track(server)
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(client, server)
			_ = client.Close()
			_ = server.Close()
		}()
		go func() {
			defer p.wg.Done()
			_ = p.frontend(client, server)
			_ = client.Close()
			_ = server.Close()
			p.untrack(client)
			p.untrack(server)
		}()
	}
}

const (
	sslRequestCode = 80877103
	gssRequestCode = 80877104
	maxMessage     = 64 << 20
)

// frontend copies the client's messages to the server one by one, watching
// for BEGIN … COMMIT.
func (p *PGProxy) frontend(client, server net.Conn) error {
	r := bufio.NewReaderSize(client, 64<<10)
	// Startup: untyped messages (length, code, body); SSL and GSS requests
	// are answered by one byte from the server and followed by another.
	for {
		hdr := make([]byte, 8)
		if _, err := io.ReadFull(r, hdr); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n < 8 || n > maxMessage {
			return fmt.Errorf("startup message of %d bytes", n)
		}
		msg := make([]byte, n)
		copy(msg, hdr)
		if _, err := io.ReadFull(r, msg[8:]); err != nil {
			return err
		}
		if _, err := server.Write(msg); err != nil {
			return err
		}
		if code := binary.BigEndian.Uint32(hdr[4:]); code != sslRequestCode && code != gssRequestCode {
			break
		}
	}
	inTx, statements := false, 0
	prepared := map[string]string{} // statement name → text, for OnStatement
	for {
		hdr := make([]byte, 5)
		if _, err := io.ReadFull(r, hdr); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > maxMessage {
			return fmt.Errorf("message %q of %d bytes", hdr[0], n)
		}
		msg := make([]byte, 1+n)
		copy(msg, hdr)
		if _, err := io.ReadFull(r, msg[5:]); err != nil {
			return err
		}
		if (hdr[0] == 'Q' || hdr[0] == 'P') && p.takeMatch(msg[5:]) {
			return errors.New("cut")
		}
		p.watch(hdr[0], msg[5:], prepared)
		switch hdr[0] {
		case 'Q':
			q := strings.ToLower(strings.TrimSpace(strings.TrimRight(string(msg[5:]), "\x00")))
			switch {
			case strings.HasPrefix(q, "begin"):
				inTx, statements = true, 0
			case q == "commit":
				if inTx && statements >= 2 {
					if mode := p.take(); mode != CutNone {
						if mode == CutAfterCommit {
							_, _ = server.Write(msg)
						}
						return errors.New("cut")
					}
				}
				inTx = false
			case q == "rollback":
				inTx = false
			default:
				statements++
			}
		case 'E': // Execute of the extended protocol: one statement
			statements++
		}
		if _, err := server.Write(msg); err != nil {
			return err
		}
	}
}

// OnStatement calls fn once, in the proxy, just before the first statement
// whose text contains substr is forwarded to the server: the client has sent
// it and waits for its answer, so fn can freeze the client (SIGSTOP) at a
// known point of its transaction. Prepared statements are recognised when
// they are bound, however long ago they were parsed.
func (p *PGProxy) OnStatement(substr string, fn func()) {
	p.mu.Lock()
	p.onMatch, p.onFn = substr, fn
	p.mu.Unlock()
}

// watch runs the OnStatement hook for a simple query, or a Bind of a
// statement whose Parse it has seen on this connection.
func (p *PGProxy) watch(typ byte, body []byte, prepared map[string]string) {
	var text string
	switch typ {
	case 'Q':
		text = string(body)
	case 'P': // Parse: name, text, ...
		name, rest, _ := strings.Cut(string(body), "\x00")
		q, _, _ := strings.Cut(rest, "\x00")
		prepared[name] = q
		return
	case 'B': // Bind: portal, statement name, ...
		_, rest, _ := strings.Cut(string(body), "\x00")
		name, _, _ := strings.Cut(rest, "\x00")
		text = prepared[name]
	default:
		return
	}
	p.mu.Lock()
	fn := p.onFn
	if fn == nil || !strings.Contains(text, p.onMatch) {
		p.mu.Unlock()
		return
	}
	p.onFn = nil
	p.mu.Unlock()
	fn()
}
