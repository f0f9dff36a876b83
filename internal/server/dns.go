package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/pier-dev/pier/internal/dns"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/mesh"
	"github.com/pier-dev/pier/internal/runtime/runc"
)

// names answers the machines' name server from live state: an app's name
// is its mesh service address, a machine's its private address.
type names struct {
	mesh *mesh.Mesh // nil: no app names
	mach *machines.Manager
}

func (n names) App(app string) (netip.Addr, bool) {
	if n.mesh == nil {
		return netip.Addr{}, false
	}
	return n.mesh.ServiceAddr(app)
}

func (n names) Machine(app, id string) (netip.Addr, bool) {
	m, err := n.mach.Get(app, id)
	if err != nil || m.PrivateIP == "" {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(m.PrivateIP)
	return a, err == nil
}

// machineDNS serves <app>.internal and <id>.vm.<app>.internal to the
// machines on the driver's gateway, port 53, and forwards other names to
// the host's resolvers for machines allowed outbound. It runs until ctx
// ends.
// Its sockets are the ones a previous server handed over (a graceful
// restart), else new ones; they are returned for the next hand-over.
func machineDNS(ctx context.Context, d *runc.Driver, n names, in inherited, log *slog.Logger) (map[string]filer, error) {
	addr := net.JoinHostPort(d.Gateway().String(), "53")
	fail := func(err error) error {
		return fmt.Errorf("machines' name server on %s: %w (another DNS server may listen on all addresses, e.g. dnsmasq: bind it to loopback only)", addr, err)
	}
	pc, err := in.listenPacket("dns-udp", addr)
	if err != nil {
		return nil, fail(err)
	}
	l, err := in.listen("dns-tcp", addr)
	if err != nil {
		pc.Close()
		return nil, fail(err)
	}
	if _, err := dns.Listen(ctx, addr, dns.Config{Names: n, Allow: d.Source, Log: log, PacketConn: pc, Listener: l}); err != nil {
		return nil, fail(err)
	}
	socks := map[string]filer{}
	if u, ok := pc.(*net.UDPConn); ok {
		socks["dns-udp"] = u
	}
	if t, ok := l.(*net.TCPListener); ok {
		socks["dns-tcp"] = t
	}
	return socks, nil
}
