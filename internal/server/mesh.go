package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/mesh"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/secrets"
)

// meshParts are the service mesh's pieces, made before the control plane.
type meshParts struct {
	ca                *identity.Authority
	metrics           *metrics.Registry
	mesh              *mesh.Mesh // nil without isolated machines
	subnet            netip.Prefix
	inbound, outbound net.Listener
}

// policyFunc adapts the control plane's Allowed, which exists only after
// the mesh is made.
type policyFunc func(src, dst string) bool

func (f policyFunc) Allowed(src, dst string) bool { return f(src, dst) }

// newMesh opens the mesh CA (sealed under the data dir) and the metrics
// registry; with isolated machines (gateway valid) it also makes the data
// plane and its listeners: inbound on loopback, outbound on the machines'
// gateway at the mesh port (the one a previous server handed over, after a
// graceful restart). allowed is asked on every call.
func newMesh(ctx context.Context, c Config, keys *secrets.Keyring, reg prometheus.Registerer, gateway netip.Addr, allowed func(src, dst string) bool, in inherited, log *slog.Logger) (*meshParts, error) {
	ca, err := identity.Open(ctx, &identity.FileStore{Path: filepath.Join(c.DataDir, "mesh", "ca.sealed"), Sealer: keys},
		identity.Options{TrustDomain: c.TrustDomain, LeafTTL: c.MeshCertTTL, Log: log.With("component", "mesh-ca")})
	if err != nil {
		return nil, fmt.Errorf("mesh CA: %w", err)
	}
	p := &meshParts{ca: ca, metrics: metrics.New(reg, metrics.Options{})}
	if !gateway.IsValid() {
		return p, nil
	}
	if p.subnet, err = netip.ParsePrefix(c.ServiceSubnet); err != nil {
		return nil, fmt.Errorf("--service-subnet %q: %w", c.ServiceSubnet, err)
	}
	p.subnet = p.subnet.Masked()
	if p.inbound, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("mesh inbound listener: %w", err)
	}
	out := net.JoinHostPort(gateway.String(), strconv.Itoa(c.MeshPort))
	if p.outbound, err = in.listen("mesh", out); err != nil {
		p.inbound.Close()
		return nil, fmt.Errorf("mesh outbound listener %s: %w (is another pier server using this bridge? see --mesh-port)", out, err)
	}
	p.mesh = mesh.New(mesh.Config{Identities: ca, Policy: policyFunc(allowed), Metrics: p.metrics, Log: log.With("component", "mesh")})
	return p, nil
}

// run serves the data plane and keeps the CA rotated until ctx is done.
func (p *meshParts) run(ctx context.Context, log *slog.Logger) {
	if p.mesh != nil {
		go p.mesh.Serve(ctx, p.inbound, p.outbound)
	}
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.ca.Maintain(ctx); err != nil {
				log.Error("mesh CA maintenance", "err", err)
			}
		}
	}
}

// routers sends the machine manager's routing changes to the edge proxy
// and to the mesh, outermost first: {edge, mesh}. The edge hands each
// request to the mesh naming the machine it picked, so a machine enters
// the inner routers before the outer ones, and leaves the outer ones (with
// their requests in flight done) before the inner ones: no request is
// sent to a machine the mesh does not know yet, or no longer.
type routers []machines.Router

func (rs routers) Add(app, id, addr string) {
	for i := len(rs) - 1; i >= 0; i-- {
		rs[i].Add(app, id, addr)
	}
}

func (rs routers) Remove(app, id string) {
	for _, r := range rs {
		r.Remove(app, id)
	}
}

func (rs routers) Drain(ctx context.Context, app, id string) error {
	var first error
	for _, r := range rs {
		if err := r.Drain(ctx, app, id); err != nil && first == nil {
			first = err
		}
	}
	return first
}
