//go:build unix

package kmsclient

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// peerClosed reports whether an idle connection can no longer carry a
// request: the server closed it (a read would return end of file), reset
// it, or sent something unasked (a TLS alert, say). It peeks at the socket
// without blocking and without consuming anything: one system call.
func peerClosed(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
			// nothing to read: still open
		default:
			closed = true // end of file (n == 0), data, or an error
		}
		return true // never wait for readability
	})
	return closed || err != nil
}
