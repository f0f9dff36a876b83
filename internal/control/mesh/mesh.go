// Package mesh is the control plane's side of the service mesh (the data
// plane is internal/mesh): the call policy that says which app may call
// which, the apps' service addresses, their identities and the mesh's
// certificate authority, the golden metrics the mesh records, and the
// dependency graph of apps, resources and connections joined to the
// traffic it observed.
package mesh

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/store"
)

// Store is the state the mesh reads: apps, their service numbers, and (for
// the policy and the graph) resources and connections.
type Store interface {
	App(ctx context.Context, name string) (pier.App, error)
	Apps(ctx context.Context) ([]pier.App, error)
	EnsureServiceNumber(ctx context.Context, app string) (int, error)
	Resources(ctx context.Context) ([]store.ResourceRow, error)
	Connections(ctx context.Context, app, target string) ([]store.ConnectionRow, error)
	AddEvent(ctx context.Context, app, typ, msg string) error
}

// DataPlane is the part of the mesh's data plane the control plane
// steers: apps' service addresses, and cutting the open calls of a call
// connection that goes.
type DataPlane interface {
	SetService(app string, vip netip.Addr)
	RemoveService(app string)
	Revoke(src, dst string)
}

// Authority is the mesh's certificate authority: the identities it issues
// and the rotation of its issuer and trust anchor (identity.Authority).
type Authority interface {
	AppID(app string) spiffeid.ID
	Certificate(id spiffeid.ID) (*tls.Certificate, error)
	Issued(id spiffeid.ID) (identity.CertInfo, bool)
	TrustDomain() spiffeid.TrustDomain
	Status() identity.Status
	RotateIssuer(ctx context.Context) error
	RotateAnchor(ctx context.Context) error
}

// Metrics are the golden metrics the mesh and the edge proxy record
// (metrics.Registry).
type Metrics interface {
	Apps(window time.Duration) []metrics.Stat
	Edges(window time.Duration) []metrics.Stat
	Machines(app string, window time.Duration) []metrics.Stat
	Paths(app string, window time.Duration, limit int) []metrics.Stat
	History(app, src string, window, step time.Duration) []metrics.Point
	Observed() []metrics.Stat
}

// Fleet is what the mesh shows of apps' machines.
type Fleet interface {
	// Machines lists an app's machines, oldest first.
	Machines(app string) []pier.Machine
	// Serving counts those in (or coming into) traffic.
	Serving(app string) int
}

// Service is the control side of the mesh.
type Service struct {
	Store Store
	// Data, when set, carries app-to-app calls; apps get service addresses
	// from Subnet. Nil on a server whose apps run as host processes: then
	// no call connection is made.
	Data   DataPlane
	Subnet netip.Prefix
	// Policy is the call policy; it outlives the Service (the mesh asks it
	// on every request).
	Policy *Policy
	CA     Authority
	// Metrics, nil without a mesh, join observed traffic to the graph.
	Metrics Metrics
	Fleet   Fleet
	Log     *slog.Logger
}

// Policy is the set of call connections, read on every mesh request. The
// zero value allows nothing; it is safe for concurrent use.
type Policy struct {
	mu    sync.RWMutex
	calls map[[2]string]bool
}

func (p *Policy) set(src, dst string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.calls == nil {
		p.calls = map[[2]string]bool{}
	}
	if ok {
		p.calls[[2]string{src, dst}] = true
	} else {
		delete(p.calls, [2]string{src, dst})
	}
}

// Allowed says whether src may call dst: a `call` connection src -> dst
// exists and is not being removed.
func (p *Policy) Allowed(src, dst string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.calls[[2]string{src, dst}]
}

// Enabled says whether a mesh carries app-to-app calls on this server.
func (s *Service) Enabled() bool { return s.Data != nil }

// Allow lets src call dst from now on.
func (s *Service) Allow(src, dst string) { s.Policy.set(src, dst, true) }

// Deny stops src calling dst: new calls are refused, and the open ones
// (WebSockets, tunnels, answers still streaming) are cut now, whatever then
// becomes of src's machines (a roll that fails leaves them running). The
// policy first: the mesh's cut relies on it (see mesh.Mesh.Revoke).
func (s *Service) Deny(src, dst string) {
	s.Policy.set(src, dst, false)
	if s.Data != nil {
		s.Data.Revoke(src, dst)
	}
}

// Start gives every app its service address and loads the policy from the
// active call connections.
func (s *Service) Start(ctx context.Context) error {
	if s.Data == nil {
		return nil
	}
	apps, err := s.Store.Apps(ctx)
	if err != nil {
		return err
	}
	for _, a := range apps {
		if err := s.AddService(ctx, a.Name); err != nil {
			return err
		}
	}
	conns, err := s.Store.Connections(ctx, "", "")
	if err != nil {
		return err
	}
	for _, c := range conns {
		if c.Kind == "app" && c.Status == store.ConnActive {
			s.Policy.set(c.App, c.Target, true)
		}
	}
	return nil
}

// AddService gives app its service address (keeping the one it has).
func (s *Service) AddService(ctx context.Context, app string) error {
	if s.Data == nil {
		return nil
	}
	n, err := s.Store.EnsureServiceNumber(ctx, app)
	if err != nil {
		return err
	}
	vip, err := nthAddr(s.Subnet, n)
	if err != nil {
		return err
	}
	s.Data.SetService(app, vip)
	return nil
}

// RemoveService takes away the service address of app, which is gone.
func (s *Service) RemoveService(app string) {
	if s.Data != nil {
		s.Data.RemoveService(app)
	}
}

// nthAddr is the n-th address of prefix (n from 1).
func nthAddr(prefix netip.Prefix, n int) (netip.Addr, error) {
	size := uint64(1) << (32 - prefix.Bits())
	if n < 1 || uint64(n) >= size-1 {
		return netip.Addr{}, pier.Errorf(pier.Conflict, "the service subnet %s is full (%d apps): restart the server with a larger --service-subnet", prefix, n-1)
	}
	b := prefix.Masked().Addr().As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(n))
	return netip.AddrFrom4(b), nil
}

func (s *Service) event(ctx context.Context, subject, typ, format string, args ...any) {
	if err := s.Store.AddEvent(ctx, subject, typ, fmt.Sprintf(format, args...)); err != nil {
		s.Log.Error("record event", "app", subject, "err", err)
	}
}
