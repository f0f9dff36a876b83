package runc

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/pier-dev/pier/internal/dns"
	"github.com/pier-dev/pier/internal/runtime"
)

// liveNames is the state the name server answers from, changed while
// machines run.
type liveNames struct {
	mu       sync.Mutex
	apps     map[string]netip.Addr
	machines map[string]netip.Addr // "app/id"
}

func (n *liveNames) App(name string) (netip.Addr, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.apps[name]
	return a, ok
}

func (n *liveNames) Machine(app, id string) (netip.Addr, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.machines[app+"/"+id]
	return a, ok
}

// loopbackResolver is the upstream the name server forwards to: a server
// on the host's loopback (UDP and TCP) that knows example.test. and
// counts its queries.
func loopbackResolver(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	var queries atomic.Int32
	h := miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) {
		queries.Add(1)
		m := new(miekg.Msg).SetReply(r)
		if q := r.Question[0]; strings.EqualFold(q.Name, "example.test.") && q.Qtype == miekg.TypeA {
			m.Answer = append(m.Answer, &miekg.A{Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 60},
				A: net.ParseIP("192.0.2.10")})
		} else if q.Qtype != miekg.TypeAAAA {
			m.Rcode = miekg.RcodeNameError
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
	return pc.LocalAddr().String(), &queries
}

// serveDNS runs a name server on d's gateway, port 53, until the test ends.
func serveDNS(t *testing.T, d *Driver, names dns.Names, upstream string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := dns.Listen(ctx, net.JoinHostPort(d.Gateway().String(), "53"), dns.Config{Names: names, Allow: d.Source, Upstreams: []string{upstream}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := s.Wait(); err != nil {
			t.Errorf("dns server: %v", err)
		}
	})
}

func machineIP(m *machineT) netip.Addr {
	h, _, _ := net.SplitHostPort(m.Addr())
	return netip.MustParseAddr(h)
}

// With Config.DNS, machines resolve names through the server on their
// gateway: apps and machines that appear after they started, NXDOMAIN for
// what does not exist, the rest forwarded only for machines allowed
// outbound traffic.
func TestDNS(t *testing.T) {
	need(t)
	subnet := freeSubnet(testBridge, drv.fw.subnet)
	if subnet == "" {
		t.Fatal("no free /24 for a driver with DNS")
	}
	state := filepath.Join(filepath.Dir(stateDir), "state-dns")
	d, err := New(Config{StateDir: state, Subnet: subnet, Bridge: fmt.Sprintf("pd%d", os.Getpid()%100000), DNS: true})
	if err != nil {
		t.Fatalf("driver with DNS: %v", err)
	}
	t.Cleanup(func() { // after the machines' own cleanups, registered later
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.Uninstall(ctx); err != nil {
			t.Errorf("uninstall driver with DNS: %v", err)
		}
		os.RemoveAll(state)
	})
	names := &liveNames{apps: map[string]netip.Addr{"test": netip.MustParseAddr("100.64.0.1")}, machines: map[string]netip.Addr{}}
	upstream, upstreamQueries := loopbackResolver(t)
	serveDNS(t, d, names, upstream)

	open := startOn(t, d, nil)
	closed := startOn(t, d, func(s *runtime.Spec) { s.DenyOutbound = true })
	gw := d.Gateway()
	if _, conf := get(t, open, "/read", url.Values{"path": {"/etc/resolv.conf"}}); !strings.Contains(conf, "\nnameserver "+gw.String()+"\n") ||
		strings.Count(conf, "nameserver") != 1 {
		t.Errorf("/etc/resolv.conf = %q, want the gateway as the only name server", conf)
	}
	for _, c := range []struct {
		addr              netip.Addr
		machine, outbound bool
	}{
		{machineIP(open), true, true},
		{machineIP(closed), true, false},
		{gw, false, false},
		{netip.MustParseAddr("127.0.0.1"), false, false},
	} {
		if machine, outbound := d.Source(c.addr); machine != c.machine || outbound != c.outbound {
			t.Errorf("Source(%s) = %v, %v; want %v, %v", c.addr, machine, outbound, c.machine, c.outbound)
		}
	}

	// Names that appear after the machines started.
	names.mu.Lock()
	names.apps["late"] = netip.MustParseAddr("100.64.0.7")
	names.machines["test/"+open.id] = machineIP(open)
	names.mu.Unlock()
	for _, c := range []struct {
		m            *machineT
		path, name   string
		network      string
		want         string
		wantUpstream bool
	}{
		{open, "/resolve", "late.internal", "", "100.64.0.7", false},
		{open, "/resolve", "LATE.internal.", "", "100.64.0.7", false},
		{open, "/resolve", open.id + ".vm.test.internal", "", machineIP(open).String(), false},
		{open, "/resolve", "nope.internal", "", "not found", false},
		{open, "/dns", "late.internal", "tcp", "NOERROR 100.64.0.7", false},
		{open, "/dns", "nope.internal", "udp", "NXDOMAIN", false},
		{open, "/resolve", "example.test", "", "192.0.2.10", true},
		{open, "/dns", "example.test", "tcp", "NOERROR 192.0.2.10", true},
		{closed, "/resolve", "late.internal", "", "100.64.0.7", false},
		{closed, "/dns", "nope.internal", "tcp", "NXDOMAIN", false},
		{closed, "/dns", "example.test", "udp", "REFUSED", false},
		{closed, "/dns", "example.test", "tcp", "REFUSED", false},
	} {
		before := upstreamQueries.Load()
		_, got := get(t, c.m, c.path, url.Values{"name": {c.name}, "net": {c.network}})
		who := "open"
		if c.m == closed {
			who = "closed"
		}
		if got != c.want {
			t.Errorf("%s machine, %s %s %s: %q, want %q", who, c.path, c.network, c.name, got, c.want)
		}
		if asked := upstreamQueries.Load() > before; asked != c.wantUpstream {
			t.Errorf("%s machine, %s %s %s: upstream asked = %v, want %v", who, c.path, c.network, c.name, asked, c.wantUpstream)
		}
	}

	// Port 53 is all the firewall opened on the gateway.
	var accepted atomic.Int32
	other := hostListener(t, net.JoinHostPort(gw.String(), "0"), &accepted)
	if _, body := get(t, open, "/dial", url.Values{"addr": {other.String()}}); !strings.HasPrefix(body, "error:") {
		t.Errorf("machine reached %s on the gateway: %q", other, body)
	}
	if _, body := get(t, closed, "/dial", url.Values{"addr": {net.JoinHostPort(gw.String(), "53")}}); body != "connected" {
		t.Errorf("machine with DenyOutbound cannot reach the name server over TCP: %q", body)
	}
}

// Without Config.DNS nothing changes: machines keep the host's name
// servers and cannot reach one on the gateway.
func TestDNSOff(t *testing.T) {
	need(t)
	serveDNS(t, drv, &liveNames{apps: map[string]netip.Addr{"test": netip.MustParseAddr("100.64.0.1")}}, "127.0.0.1:1")
	m := start(t, nil)
	gw := drv.Gateway().String()
	if _, conf := get(t, m, "/read", url.Values{"path": {"/etc/resolv.conf"}}); strings.Contains(conf, gw) {
		t.Errorf("/etc/resolv.conf names the gateway without Config.DNS: %q", conf)
	}
	for _, network := range []string{"udp", "tcp"} {
		if _, got := get(t, m, "/dns", url.Values{"name": {"test.internal"}, "net": {network}, "server": {net.JoinHostPort(gw, "53")}}); !strings.HasPrefix(got, "error:") {
			t.Errorf("machine got an answer over %s from the gateway without Config.DNS: %q", network, got)
		}
	}
}
