package mesh

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// protocol is what a caller speaks on a new connection.
type protocol int

const (
	opaque protocol = iota
	http1
	http2 // prior knowledge (h2c), as gRPC clients speak it
)

// sniffTimeout bounds how long a new connection waits for the caller's
// first bytes. A protocol where the server speaks first (SMTP, MySQL) sends
// nothing, and is tunnelled as opaque TCP once this passes.
const sniffTimeout = 300 * time.Millisecond

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

var methods = [][]byte{[]byte("GET "), []byte("POST "), []byte("PUT "), []byte("DELETE "), []byte("HEAD "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE ")}

// sniff reads the first bytes of c (keeping them) and says what they are.
func sniff(c net.Conn) (*peekedConn, protocol) {
	// A small buffer: it only holds the sniffed bytes; larger reads bypass it.
	pc := &peekedConn{Conn: c, r: bufio.NewReaderSize(c, 64)}
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	defer c.SetReadDeadline(time.Time{})
	// Peek returns what it has when the deadline passes.
	head, _ := pc.r.Peek(len(h2Preface))
	return pc, classify(head)
}

func classify(head []byte) protocol {
	if len(head) == 0 {
		return opaque
	}
	if bytes.HasPrefix(h2Preface, head) && len(head) >= 4 || bytes.HasPrefix(head, h2Preface) {
		return http2
	}
	for _, m := range methods {
		n := min(len(head), len(m))
		if n >= 3 && bytes.Equal(head[:n], m[:n]) {
			return http1
		}
	}
	return opaque
}

// peekedConn is a connection whose first bytes were read ahead.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// originalDst is where a connection redirected by the firewall (DNAT) was
// addressed before it was redirected.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a TCP connection")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		mreq *unix.IPv6Mreq
		serr error
	)
	// SO_ORIGINAL_DST answers a sockaddr_in; IPv6Mreq is the getsockopt
	// wrapper of a fitting size (its first 16 bytes are the sockaddr).
	err = raw.Control(func(fd uintptr) {
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.IPPROTO_IP, unix.SO_ORIGINAL_DST)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockopt SO_ORIGINAL_DST", err)
	}
	b := mreq.Multiaddr
	port := uint16(b[2])<<8 | uint16(b[3])
	addr := netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]})
	return netip.AddrPortFrom(addr, port), nil
}

// remoteAddr is c's peer address.
func remoteAddr(c net.Conn) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}, errors.New("peer address: " + err.Error())
	}
	return ap.Addr().Unmap(), nil
}

// chanListener hands connections accepted elsewhere to an http.Server.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// CloseWrite half-closes the connection when the underlying one can.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
