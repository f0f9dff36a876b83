// Package dns is the name server machines use. It runs on the host, on the
// machines' gateway, and answers <app>.internal and <machine-id>.vm.<app>.internal
// from live state on every query, so an app created after a machine started
// resolves in it at once. Other names are forwarded to the host's own
// resolvers, but only for sources allowed to reach the internet: a machine
// whose outbound traffic is denied must not get a channel out through DNS.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	miekg "github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// Names is the live state the server answers from. It is asked on every
// query (nothing is cached), so it must be cheap and safe for concurrent
// use.
type Names interface {
	// App is the address of <name>.internal: the app's service address.
	App(name string) (netip.Addr, bool)
	// Machine is the address of <id>.vm.<app>.internal.
	Machine(app, id string) (netip.Addr, bool)
}

// Config configures a Server. Zero fields get the documented defaults.
type Config struct {
	// Names answers the internal zone; required.
	Names Names
	// Allow says what the source of a query may do: query at all (if not,
	// every query gets REFUSED) and have names outside the internal zone
	// forwarded (if not, those get REFUSED while internal names are still
	// answered). Required: the server answers no one without it.
	Allow func(src netip.Addr) (query, forward bool)
	// Upstreams are the resolvers other names are forwarded to, as
	// host:port, tried one after another. Default: the name servers of
	// ResolvConf, read again when it changes. Loopback servers are fine:
	// the forwarding happens on the host.
	Upstreams []string
	// ResolvConf is where the default upstreams come from (default
	// /etc/resolv.conf).
	ResolvConf string
	// Timeout bounds one attempt at one upstream (default 2s); at most
	// MaxAttempts upstreams are tried for a query, so a forwarded query
	// gets an answer or SERVFAIL within MaxAttempts*Timeout.
	Timeout time.Duration
	// MaxForwards caps forwarded queries in flight (default 256); past
	// it, queries get SERVFAIL at once instead of piling up.
	MaxForwards int
	// MaxConns caps open TCP connections (default 64); more wait in the
	// listen backlog.
	MaxConns int
	// TTL of answers and of negative answers (default 1s): the state
	// behind them is live, clients should come back soon.
	TTL time.Duration
	// Log receives the server's messages (default: discarded).
	Log *slog.Logger
	// PacketConn and Listener, when both set, are the UDP and TCP sockets
	// to serve on instead of binding addr (a graceful restart hands them
	// from one server to the next, so queries wait instead of failing).
	PacketConn net.PacketConn
	Listener   net.Listener
}

// MaxAttempts is how many upstreams a forwarded query tries at most.
const MaxAttempts = 3

// Zone is the name machines find each other under.
const Zone = "internal."

// Server is a running name server; Listen makes one.
type Server struct {
	cfg  Config
	addr string
	ttl  uint32
	fwd  *forwarder

	udp, tcp *miekg.Server
	done     chan struct{}
	err      error // why it stopped, when not because ctx was done; read after done
}

// Listen binds addr (host:port) on UDP and on TCP and answers queries there
// until ctx is done. It returns once both listen; with port 0 both get the
// same free port (see Addr).
func Listen(ctx context.Context, addr string, c Config) (*Server, error) {
	if c.Names == nil || c.Allow == nil {
		return nil, errors.New("dns: Config.Names and Config.Allow are required")
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.MaxForwards <= 0 {
		c.MaxForwards = 256
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 64
	}
	if c.TTL <= 0 {
		c.TTL = time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	pc, l := c.PacketConn, c.Listener
	if pc == nil || l == nil {
		var err error
		if pc, l, err = listenBoth(addr); err != nil {
			return nil, fmt.Errorf("dns: listen on %s: %w", addr, err)
		}
	}
	s := &Server{cfg: c, addr: pc.LocalAddr().String(), ttl: uint32(c.TTL.Round(time.Second) / time.Second), done: make(chan struct{})}
	s.fwd = newForwarder(c, s.addr)
	if ups := s.fwd.upstreams(); len(ups) == 0 {
		c.Log.Warn("no upstream name servers: names outside .internal get SERVFAIL", "resolv_conf", c.ResolvConf)
	}
	// The server's own context: cancelled when ctx is, it also cuts short
	// upstream exchanges still under way at shutdown.
	sctx, cancel := context.WithCancel(ctx)
	h := miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) { s.serve(sctx, w, r) })
	udpUp, tcpUp := make(chan struct{}), make(chan struct{})
	s.udp = &miekg.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(udpUp) }}
	s.tcp = &miekg.Server{Listener: netutil.LimitListener(l, c.MaxConns), Handler: h, NotifyStartedFunc: func() { close(tcpUp) },
		ReadTimeout: c.Timeout, WriteTimeout: c.Timeout}
	errc := make(chan error, 2)
	go func() { errc <- s.udp.ActivateAndServe() }()
	go func() { errc <- s.tcp.ActivateAndServe() }()
	// Shutdown only stops a server that has started: wait for both.
	for up := 0; up < 2; {
		select {
		case <-udpUp:
			udpUp, up = nil, up+1
		case <-tcpUp:
			tcpUp, up = nil, up+1
		case err := <-errc:
			// Closed sockets end the other serve loop, started or not.
			cancel()
			pc.Close()
			l.Close()
			<-errc
			return nil, fmt.Errorf("dns: serve on %s: %w", s.addr, err)
		}
	}
	go func() {
		defer close(s.done)
		running := 2
		select {
		case <-sctx.Done():
		case s.err = <-errc: // a listener failed: stop the other one too
			running--
			c.Log.Error("dns server stopped", "addr", s.addr, "err", s.err)
		}
		cancel()
		// Each waits for its queries in flight, which the cancelled
		// context and the timeouts bound.
		s.udp.Shutdown()
		s.tcp.Shutdown()
		for ; running > 0; running-- {
			<-errc
		}
	}()
	return s, nil
}

// listenBoth binds UDP and TCP on addr. With port 0 the kernel picks the
// UDP port; the TCP one must then be the same, and another process may
// hold it: a few tries, each with a new port.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for range 8 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		bound := net.JoinHostPort(host, fmt.Sprint(pc.LocalAddr().(*net.UDPAddr).Port))
		l, err := net.Listen("tcp", bound)
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if port != "0" {
			return nil, nil, err
		}
		lastErr = err
	}
	return nil, nil, lastErr
}

// Addr is the address the server listens on, UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Wait blocks until the server has stopped and its queries in flight are
// answered or given up. It returns the error that stopped a listener (the
// server has logged it, and stopped the other listener too), nil when the
// server stopped because Listen's context was done.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

func (s *Server) serve(ctx context.Context, w miekg.ResponseWriter, r *miekg.Msg) {
	src, tcp := source(w.RemoteAddr())
	m := s.reply(ctx, r, src, tcp)
	if err := w.WriteMsg(m); err != nil {
		s.cfg.Log.Debug("write dns reply", "to", w.RemoteAddr(), "err", err)
	}
}

func source(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), false
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

func (s *Server) reply(ctx context.Context, r *miekg.Msg, src netip.Addr, tcp bool) *miekg.Msg {
	m := new(miekg.Msg)
	if r.Opcode != miekg.OpcodeQuery {
		return m.SetRcode(r, miekg.RcodeNotImplemented)
	}
	if len(r.Question) != 1 {
		return m.SetRcode(r, miekg.RcodeFormatError)
	}
	query, forward := false, false
	if src.IsValid() {
		query, forward = s.cfg.Allow(src)
	}
	if !query {
		return m.SetRcode(r, miekg.RcodeRefused)
	}
	name := strings.ToLower(r.Question[0].Name)
	if name == Zone || strings.HasSuffix(name, "."+Zone) {
		m = s.local(r, strings.TrimSuffix(strings.TrimSuffix(name, Zone), "."))
		m.RecursionAvailable = forward
	} else if !forward {
		return m.SetRcode(r, miekg.RcodeRefused)
	} else {
		m = s.fwd.forward(ctx, r, tcp)
	}
	if !tcp {
		m.Truncate(udpSize(r))
	}
	return m
}

// udpSize is the largest UDP reply the client of r takes.
func udpSize(r *miekg.Msg) int {
	if opt := r.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), miekg.MinMsgSize)
	}
	return miekg.MinMsgSize
}

// local answers a name of the internal zone; rel is the name without
// ".internal." ("" for the zone itself). The server is authoritative here:
// a name Names does not know does not exist (NXDOMAIN); a known name
// without a record of the asked type has no data (NOERROR, no answer).
// Either way the zone's SOA goes in the authority section, which sets how
// long the negative answer may be cached.
func (s *Server) local(r *miekg.Msg, rel string) *miekg.Msg {
	m := new(miekg.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(1232, false)
	}
	q := r.Question[0]
	if q.Qclass != miekg.ClassINET && q.Qclass != miekg.ClassANY {
		return m.SetRcode(r, miekg.RcodeRefused)
	}
	var labels []string
	if rel != "" {
		labels = strings.Split(rel, ".")
	}
	var addr netip.Addr
	exists := false
	switch {
	case len(labels) == 0:
		exists = true
		if q.Qtype == miekg.TypeSOA || q.Qtype == miekg.TypeANY {
			m.Answer = append(m.Answer, s.soa())
		}
	case len(labels) == 1:
		addr, exists = s.cfg.Names.App(labels[0])
	case len(labels) == 2 && labels[0] == "vm":
		// vm.<app>.internal: only a parent of machines' names, with no
		// records of its own.
		_, exists = s.cfg.Names.App(labels[1])
	case len(labels) == 3 && labels[1] == "vm":
		addr, exists = s.cfg.Names.Machine(labels[2], labels[0])
	}
	if !exists {
		m.Rcode = miekg.RcodeNameError
		m.Ns = []miekg.RR{s.soa()}
		return m
	}
	hdr := miekg.RR_Header{Name: q.Name, Class: miekg.ClassINET, Ttl: s.ttl}
	switch {
	case !addr.IsValid():
	case addr.Is4() && (q.Qtype == miekg.TypeA || q.Qtype == miekg.TypeANY):
		hdr.Rrtype = miekg.TypeA
		m.Answer = append(m.Answer, &miekg.A{Hdr: hdr, A: addr.AsSlice()})
	case addr.Is6() && (q.Qtype == miekg.TypeAAAA || q.Qtype == miekg.TypeANY):
		hdr.Rrtype = miekg.TypeAAAA
		m.Answer = append(m.Answer, &miekg.AAAA{Hdr: hdr, AAAA: addr.AsSlice()})
	}
	if len(m.Answer) == 0 {
		m.Ns = []miekg.RR{s.soa()}
	}
	return m
}

func (s *Server) soa() miekg.RR {
	return &miekg.SOA{
		Hdr: miekg.RR_Header{Name: Zone, Rrtype: miekg.TypeSOA, Class: miekg.ClassINET, Ttl: s.ttl},
		Ns:  "ns." + Zone, Mbox: "hostmaster." + Zone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.ttl,
	}
}
