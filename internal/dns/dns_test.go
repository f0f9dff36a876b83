package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// fakeNames is live state the tests change while the server runs.
type fakeNames struct {
	mu       sync.Mutex
	apps     map[string]netip.Addr
	machines map[[2]string]netip.Addr // app, id
}

func newFakeNames() *fakeNames {
	return &fakeNames{apps: map[string]netip.Addr{}, machines: map[[2]string]netip.Addr{}}
}

func (f *fakeNames) App(name string) (netip.Addr, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.apps[name]
	return a, ok
}

func (f *fakeNames) Machine(app, id string) (netip.Addr, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.machines[[2]string{app, id}]
	return a, ok
}

func (f *fakeNames) addApp(name, addr string) {
	f.mu.Lock()
	f.apps[name] = netip.MustParseAddr(addr)
	f.mu.Unlock()
}

// The tests' sources: 127.0.0.1 is a machine allowed outbound traffic,
// 127.0.0.2 one with outbound denied, any other address no machine.
var (
	openSrc   = netip.MustParseAddr("127.0.0.1")
	closedSrc = netip.MustParseAddr("127.0.0.2")
	otherSrc  = netip.MustParseAddr("127.0.0.3")
)

func testAllow(src netip.Addr) (query, forward bool) {
	switch src {
	case openSrc:
		return true, true
	case closedSrc:
		return true, false
	}
	return false, false
}

// listen starts a server on a free loopback port, stopped at the end of
// the test (and checked to stop cleanly).
func listen(t *testing.T, c Config) *Server {
	t.Helper()
	if c.Allow == nil {
		c.Allow = testAllow
	}
	if c.Upstreams == nil {
		c.Upstreams = []string{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Listen(ctx, "127.0.0.1:0", c)
	if err != nil {
		cancel()
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		done := make(chan error, 1)
		go func() { done <- s.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Wait: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("server did not stop within 10s of its context being done")
		}
	})
	return s
}

// upstream is a resolver on loopback the server forwards to. It answers
// example.test. (A 192.0.2.10), big.test. (more TXT records than fit in
// 512 bytes, truncated over UDP as a real server does) and NXDOMAIN for
// the rest, and counts the queries it got per transport.
type upstream struct {
	addr     string
	udp, tcp atomic.Int32
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	pc, l, err := listenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	h := miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) {
		_, tcp := source(w.RemoteAddr())
		if tcp {
			u.tcp.Add(1)
		} else {
			u.udp.Add(1)
		}
		m := new(miekg.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch strings.ToLower(q.Name) {
		case "example.test.":
			m.Answer = append(m.Answer, &miekg.A{Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 60},
				A: net.ParseIP("192.0.2.10")})
		case "big.test.":
			for i := range 40 {
				m.Answer = append(m.Answer, &miekg.TXT{Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeTXT, Class: miekg.ClassINET, Ttl: 60},
					Txt: []string{fmt.Sprintf("record %02d %s", i, strings.Repeat("x", 40))}})
			}
		default:
			m.Rcode = miekg.RcodeNameError
		}
		if !tcp {
			m.Truncate(udpSize(r))
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*miekg.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		up := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(up) }
		go srv.ActivateAndServe()
		<-up
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

// silentUpstream takes queries over UDP and TCP and never answers.
func silentUpstream(t *testing.T) string {
	t.Helper()
	pc, l, err := listenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return pc.LocalAddr().String()
}

// ask sends one query from src over the given transport.
func ask(t *testing.T, network string, src netip.Addr, server, name string, qtype uint16) *miekg.Msg {
	t.Helper()
	r, err := exchange(network, src, server, name, qtype)
	if err != nil {
		t.Fatalf("%s query %s %s from %s: %v", network, name, miekg.TypeToString[qtype], src, err)
	}
	return r
}

func exchange(network string, src netip.Addr, server, name string, qtype uint16) (*miekg.Msg, error) {
	var local net.Addr = &net.UDPAddr{IP: src.AsSlice()}
	if network == "tcp" {
		local = &net.TCPAddr{IP: src.AsSlice()}
	}
	c := &miekg.Client{Net: network, Timeout: 10 * time.Second, Dialer: &net.Dialer{LocalAddr: local}}
	q := new(miekg.Msg).SetQuestion(name, qtype)
	r, _, err := c.Exchange(q, server)
	if err == nil && r.Id != q.Id {
		err = fmt.Errorf("reply id %d, query id %d", r.Id, q.Id)
	}
	if err == nil && (len(r.Question) != 1 || r.Question[0].Name != name) {
		err = fmt.Errorf("reply question %v, want %s", r.Question, name)
	}
	return r, err
}

// summary renders a reply as "RCODE aa answers... | authority types...".
func summary(m *miekg.Msg) string {
	var b strings.Builder
	b.WriteString(miekg.RcodeToString[m.Rcode])
	if m.Authoritative {
		b.WriteString(" aa")
	}
	if m.Truncated {
		b.WriteString(" tc")
	}
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *miekg.A:
			fmt.Fprintf(&b, " %s/%d", rr.A, rr.Hdr.Ttl)
		case *miekg.AAAA:
			fmt.Fprintf(&b, " %s/%d", rr.AAAA, rr.Hdr.Ttl)
		default:
			b.WriteString(" " + miekg.TypeToString[rr.Header().Rrtype])
		}
	}
	if len(m.Ns) > 0 {
		b.WriteString(" |")
		for _, rr := range m.Ns {
			b.WriteString(" " + miekg.TypeToString[rr.Header().Rrtype])
		}
	}
	return b.String()
}

func TestAnswers(t *testing.T) {
	names := newFakeNames()
	names.addApp("web", "100.64.0.5")
	names.addApp("db-2", "100.64.0.6")
	names.machines[[2]string{"web", "0123456789abcd"}] = netip.MustParseAddr("100.96.0.20")
	up := startUpstream(t)
	s := listen(t, Config{Names: names, Upstreams: []string{up.addr}})

	for _, tc := range []struct {
		name  string
		src   netip.Addr
		q     string
		qtype uint16
		want  string
	}{
		{"app", openSrc, "web.internal.", miekg.TypeA, "NOERROR aa 100.64.0.5/1"},
		{"app with a dash", openSrc, "db-2.internal.", miekg.TypeA, "NOERROR aa 100.64.0.6/1"},
		{"names are case-insensitive", openSrc, "WEB.Internal.", miekg.TypeA, "NOERROR aa 100.64.0.5/1"},
		{"machine", openSrc, "0123456789abcd.vm.web.internal.", miekg.TypeA, "NOERROR aa 100.96.0.20/1"},
		{"AAAA of an app has no data", openSrc, "web.internal.", miekg.TypeAAAA, "NOERROR aa | SOA"},
		{"AAAA of a machine has no data", openSrc, "0123456789abcd.vm.web.internal.", miekg.TypeAAAA, "NOERROR aa | SOA"},
		{"MX of an app has no data", openSrc, "web.internal.", miekg.TypeMX, "NOERROR aa | SOA"},
		{"the vm parent exists", openSrc, "vm.web.internal.", miekg.TypeA, "NOERROR aa | SOA"},
		{"the zone's SOA", openSrc, "internal.", miekg.TypeSOA, "NOERROR aa SOA"},
		{"unknown app", openSrc, "nope.internal.", miekg.TypeA, "NXDOMAIN aa | SOA"},
		{"unknown machine", openSrc, "ffffffffffffff.vm.web.internal.", miekg.TypeA, "NXDOMAIN aa | SOA"},
		{"machine of another app", openSrc, "0123456789abcd.vm.db-2.internal.", miekg.TypeA, "NXDOMAIN aa | SOA"},
		{"vm parent of an unknown app", openSrc, "vm.nope.internal.", miekg.TypeA, "NXDOMAIN aa | SOA"},
		{"too deep", openSrc, "a.0123456789abcd.vm.web.internal.", miekg.TypeA, "NXDOMAIN aa | SOA"},
		{"forwarded", openSrc, "example.test.", miekg.TypeA, "NOERROR 192.0.2.10/60"},
		{"forwarded, case kept", openSrc, "Example.TEST.", miekg.TypeA, "NOERROR 192.0.2.10/60"},
		{"upstream's NXDOMAIN passed on", openSrc, "nope.test.", miekg.TypeA, "NXDOMAIN"},
		{"outbound denied: internal names answered", closedSrc, "web.internal.", miekg.TypeA, "NOERROR aa 100.64.0.5/1"},
		{"outbound denied: unknown internal names too", closedSrc, "nope.internal.", miekg.TypeA, "NXDOMAIN aa | SOA"},
		{"outbound denied: nothing forwarded", closedSrc, "example.test.", miekg.TypeA, "REFUSED"},
		{"not a machine: internal refused", otherSrc, "web.internal.", miekg.TypeA, "REFUSED"},
		{"not a machine: external refused", otherSrc, "example.test.", miekg.TypeA, "REFUSED"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				if got := summary(ask(t, network, tc.src, s.Addr(), tc.q, tc.qtype)); got != tc.want {
					t.Errorf("%s %s from %s: %q, want %q", tc.q, miekg.TypeToString[tc.qtype], tc.src, got, tc.want)
				}
			})
		}
	}
	// Refused queries never reached the upstream: only the forwarded
	// cases did, once per transport.
	if u, c := up.udp.Load(), up.tcp.Load(); u != 3 || c != 3 {
		t.Errorf("upstream got %d UDP and %d TCP queries, want 3 and 3", u, c)
	}
}

func TestNewNamesResolveAtOnce(t *testing.T) {
	names := newFakeNames()
	s := listen(t, Config{Names: names})
	if got := summary(ask(t, "udp", openSrc, s.Addr(), "api.internal.", miekg.TypeA)); got != "NXDOMAIN aa | SOA" {
		t.Fatalf("before the app exists: %q", got)
	}
	names.addApp("api", "100.64.0.9")
	if got := summary(ask(t, "udp", openSrc, s.Addr(), "api.internal.", miekg.TypeA)); got != "NOERROR aa 100.64.0.9/1" {
		t.Errorf("right after the app was added: %q", got)
	}
	names.mu.Lock()
	names.machines[[2]string{"api", "00000000000001"}] = netip.MustParseAddr("100.96.0.30")
	names.apps["api"] = netip.MustParseAddr("100.64.0.10")
	names.mu.Unlock()
	if got := summary(ask(t, "tcp", openSrc, s.Addr(), "00000000000001.vm.api.internal.", miekg.TypeA)); got != "NOERROR aa 100.96.0.30/1" {
		t.Errorf("machine right after it was added: %q", got)
	}
	if got := summary(ask(t, "udp", openSrc, s.Addr(), "api.internal.", miekg.TypeA)); got != "NOERROR aa 100.64.0.10/1" {
		t.Errorf("after the app's address changed: %q", got)
	}
}

func TestTruncatedAnswerPassesTC(t *testing.T) {
	up := startUpstream(t)
	s := listen(t, Config{Names: newFakeNames(), Upstreams: []string{up.addr}})
	r := ask(t, "udp", openSrc, s.Addr(), "big.test.", miekg.TypeTXT)
	if !r.Truncated || r.Rcode != miekg.RcodeSuccess || len(r.Answer) >= 40 {
		t.Errorf("over UDP: tc=%v rcode=%s %d answers, want a truncated answer", r.Truncated, miekg.RcodeToString[r.Rcode], len(r.Answer))
	}
	r = ask(t, "tcp", openSrc, s.Addr(), "big.test.", miekg.TypeTXT)
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("over TCP: tc=%v %d answers, want all 40", r.Truncated, len(r.Answer))
	}
	if u, c := up.udp.Load(), up.tcp.Load(); u != 1 || c != 1 {
		t.Errorf("upstream got %d UDP and %d TCP queries, want the client's transport each time", u, c)
	}
}

func TestUpstreamFailures(t *testing.T) {
	good := startUpstream(t)
	const timeout = 200 * time.Millisecond
	for _, tc := range []struct {
		name      string
		upstreams func() []string
		want      string
	}{
		{"none answers", func() []string { return []string{silentUpstream(t), silentUpstream(t)} }, "SERVFAIL"},
		{"none listens", func() []string { return []string{closedPort(t)} }, "SERVFAIL"},
		{"no upstreams", func() []string { return []string{} }, "SERVFAIL"},
		{"the second answers", func() []string { return []string{silentUpstream(t), good.addr} }, "NOERROR 192.0.2.10/60"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				s := listen(t, Config{Names: newFakeNames(), Upstreams: tc.upstreams(), Timeout: timeout})
				began := time.Now()
				got := summary(ask(t, network, openSrc, s.Addr(), "example.test.", miekg.TypeA))
				if got != tc.want {
					t.Errorf("%q, want %q", got, tc.want)
				}
				// Each upstream gets one Timeout; allow slack for a slow host.
				if took, bound := time.Since(began), MaxAttempts*timeout+time.Second; took > bound {
					t.Errorf("answer took %v, want at most %v", took, bound)
				}
			})
		}
	}
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, l, err := listenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	l.Close()
	return addr
}

func TestAttemptsAreCapped(t *testing.T) {
	var ups []string
	for range MaxAttempts + 2 {
		ups = append(ups, silentUpstream(t))
	}
	const timeout = 150 * time.Millisecond
	s := listen(t, Config{Names: newFakeNames(), Upstreams: ups, Timeout: timeout})
	began := time.Now()
	if got := summary(ask(t, "udp", openSrc, s.Addr(), "example.test.", miekg.TypeA)); got != "SERVFAIL" {
		t.Errorf("%q, want SERVFAIL", got)
	}
	if took := time.Since(began); took > MaxAttempts*timeout+time.Second {
		t.Errorf("took %v with %d silent upstreams: more than %d attempts?", took, len(ups), MaxAttempts)
	}
}

func TestForwardsInFlightAreCapped(t *testing.T) {
	s := listen(t, Config{Names: newFakeNames(), Upstreams: []string{silentUpstream(t)}, Timeout: 1500 * time.Millisecond, MaxForwards: 1})
	held := make(chan error, 1)
	go func() {
		_, err := exchange("udp", openSrc, s.Addr(), "example.test.", miekg.TypeA)
		held <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.fwd.sem) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first query never took the forwarding slot")
		}
		time.Sleep(time.Millisecond)
	}
	// While the first query holds the only slot, a second one is turned
	// away at once rather than queued; internal names still answer.
	began := time.Now()
	if got := summary(ask(t, "udp", openSrc, s.Addr(), "other.test.", miekg.TypeA)); got != "SERVFAIL" {
		t.Errorf("second forwarded query: %q, want SERVFAIL", got)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("second forwarded query took %v, want it turned away at once", took)
	}
	if got := summary(ask(t, "udp", openSrc, s.Addr(), "nope.internal.", miekg.TypeA)); got != "NXDOMAIN aa | SOA" {
		t.Errorf("internal name while forwarding is full: %q", got)
	}
	if err := <-held; err != nil {
		t.Errorf("first query: %v", err)
	}
}

func TestListen(t *testing.T) {
	s := listen(t, Config{Names: newFakeNames()})
	if _, err := Listen(context.Background(), s.Addr(), Config{Names: newFakeNames(), Allow: testAllow}); err == nil {
		t.Error("Listen on an address in use: no error")
	}
	if _, err := Listen(context.Background(), "127.0.0.1:0", Config{Allow: testAllow}); err == nil {
		t.Error("Listen without Names: no error")
	}
	if _, err := Listen(context.Background(), "127.0.0.1:0", Config{Names: newFakeNames()}); err == nil {
		t.Error("Listen without Allow: no error")
	}

	// Stopping: Wait returns, and the address answers no more.
	ctx, cancel := context.WithCancel(context.Background())
	s2, err := Listen(ctx, "127.0.0.1:0", Config{Names: newFakeNames(), Allow: testAllow, Upstreams: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(ask(t, "tcp", openSrc, s2.Addr(), "x.internal.", miekg.TypeA)); got != "NXDOMAIN aa | SOA" {
		t.Fatalf("before stopping: %q", got)
	}
	cancel()
	if err := s2.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
	if c, err := net.Dial("tcp", s2.Addr()); err == nil {
		c.Close()
		t.Error("TCP still accepted after the server stopped")
	}
	// The port is free again for a new server.
	ctx3, cancel3 := context.WithCancel(context.Background())
	defer cancel3()
	if _, err := Listen(ctx3, s2.Addr(), Config{Names: newFakeNames(), Allow: testAllow, Upstreams: []string{}}); err != nil {
		t.Fatalf("Listen again on %s: %v", s2.Addr(), err)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	write := func(data string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# comment\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nnameserver ::1\nsearch example.org\noptions edns0\n")
	f := newForwarder(Config{ResolvConf: path, MaxForwards: 1}, "10.1.2.3:53")
	if got, want := f.upstreams(), []string{"127.0.0.53:53", "[::1]:53"}; !slices.Equal(got, want) {
		t.Errorf("upstreams = %q, want %q (loopback kept, the server itself left out)", got, want)
	}
	write("nameserver 192.0.2.1\n")
	f.mu.Lock()
	f.checked = time.Now().Add(-recheck)
	f.mu.Unlock()
	if got, want := f.upstreams(), []string{"192.0.2.1:53"}; !slices.Equal(got, want) {
		t.Errorf("after the file changed: %q, want %q", got, want)
	}
	os.Remove(path)
	f.checked = time.Time{}
	if got := f.upstreams(); len(got) != 0 {
		t.Errorf("without the file: %q, want none", got)
	}
}
