// Package testbed gives tests, the demo program and the benchmark a real,
// throwaway PostgreSQL server and real AWS KMS emulators (local-kms, and
// optionally moto_server), all reached over loopback. Nothing here uses
// Docker or the network.
//
// Child processes (postgres, local-kms, moto_server) are started in their
// own process group with Pdeathsig=SIGKILL, so they die with the process that
// started them, and Stop kills the whole group. (Pdeathsig is tied to the OS
// thread that forked the child; the Go runtime only retires a thread when a
// goroutine that called runtime.LockOSThread exits while still locked, which
// nothing in this package does.)
//
// The file testing.go holds the helpers for tests (Main, Database, LocalKMS,
// Moto, ...). Everything else in the package is usable from ordinary
// programs and does not import package testing.
package testbed

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a started child process in its own process group.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been reaped
	err  error         // Wait's result; valid once done is closed
}

// startProc starts cmd in a new process group, with SIGKILL as its parent
// death signal, and reaps it in the background.
func startProc(cmd *exec.Cmd) (*proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// Stdout/Stderr may be pipes copied by goroutines: don't let an
	// orphan that keeps the pipe open hold Wait forever.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the group leader and waits up to grace for it to exit;
// after that (or if sig is SIGKILL) the whole process group is SIGKILLed.
// Stragglers left in the group are always SIGKILLed at the end.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	pid := p.cmd.Process.Pid
	if !p.exited() {
		if sig == syscall.SIGKILL {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		} else {
			_ = syscall.Kill(pid, sig)
		}
		t := time.NewTimer(grace)
		select {
		case <-p.done:
			t.Stop()
		case <-t.C:
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Anything still in the group (e.g. a backend that outlived its
	// postmaster) goes too. ESRCH when the group is empty is expected.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// ringBuffer is a concurrency-safe io.Writer that keeps only the first
// headMax bytes and the last tailMax bytes written to it. local-kms and moto
// log every request, so their output must never go to an unbounded sink.
type ringBuffer struct {
	mu      sync.Mutex
	headMax int
	tailMax int
	head    []byte
	tail    []byte // holds up to 2*tailMax bytes; only the last tailMax count
	total   int64
}

func newRingBuffer(headMax, tailMax int) *ringBuffer {
	return &ringBuffer{headMax: headMax, tailMax: tailMax}
}

func (r *ringBuffer) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	r.total += int64(n)
	if room := r.headMax - len(r.head); room > 0 {
		take := min(room, len(p))
		r.head = append(r.head, p[:take]...)
		p = p[take:]
	}
	if len(p) == 0 {
		return n, nil
	}
	if len(p) >= r.tailMax {
		r.tail = append(r.tail[:0], p[len(p)-r.tailMax:]...)
		return n, nil
	}
	if len(r.tail)+len(p) > 2*r.tailMax {
		keep := r.tail[len(r.tail)-(r.tailMax-len(p)):]
		m := copy(r.tail, keep)
		r.tail = r.tail[:m]
	}
	r.tail = append(r.tail, p...)
	return n, nil
}

// String returns the head, and the last tailMax bytes after it (with a
// marker when bytes in between were dropped).
func (r *ringBuffer) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	tail := r.tail
	if len(tail) > r.tailMax {
		tail = tail[len(tail)-r.tailMax:]
	}
	dropped := r.total - int64(len(r.head)) - int64(len(tail))
	if dropped > 0 {
		return fmt.Sprintf("%s\n[... %d bytes dropped ...]\n%s", r.head, dropped, tail)
	}
	return string(r.head) + string(tail)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// toolsModule walks up from the working directory to the repository root
// (a go.mod with tools/go.mod beside it) and returns the tools module's
// directory.
func toolsModule() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		tools := filepath.Join(dir, "tools")
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(tools, "go.mod")); err == nil {
				return tools, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testbed: no tools/go.mod beside a go.mod in the working directory or any parent (run from inside the reencrypt repository)")
		}
		dir = parent
	}
}

// tailString returns the last n bytes of s.
func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

const tempPrefix = "reencrypt-testbed-"

var sweepOnce sync.Once

// makeTempDir creates os.TempDir()/reencrypt-testbed-<kind>-* and records
// the owning process in it. The first call in a process removes such dirs
// whose owner has died (a test binary that was SIGKILLed or timed out
// cannot clean up after itself; its servers die with it via Pdeathsig).
func makeTempDir(kind string) (string, error) {
	sweepOnce.Do(sweepStaleDirs)
	dir, err := os.MkdirTemp("", tempPrefix+kind+"-")
	if err != nil {
		return "", fmt.Errorf("testbed: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("testbed: %w", err)
	}
	return dir, nil
}

func sweepStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue // not (yet) marked: leave it alone
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}
