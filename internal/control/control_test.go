package control

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/secrets"
)

// fakeMesh is the mesh's data plane and the edge proxy, recording calls.
type fakeMesh struct {
	mu    sync.Mutex
	calls []string
}

func (m *fakeMesh) add(s string) { m.mu.Lock(); m.calls = append(m.calls, s); m.mu.Unlock() }

func (m *fakeMesh) SetService(app string, vip netip.Addr) {
	m.add("service " + app + " " + vip.String())
}
func (m *fakeMesh) RemoveService(app string)                  { m.add("unserve " + app) }
func (m *fakeMesh) Revoke(src, dst string)                    { m.add("revoke " + src + "->" + dst) }
func (m *fakeMesh) SetRoutes(app string, routes []pier.Route) { m.add("routes " + app) }
func (m *fakeMesh) AddApp(app string)                         { m.add("proxy add " + app) }
func (m *fakeMesh) RemoveApp(app string)                      { m.add("proxy remove " + app) }

func (m *fakeMesh) has(s string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Contains(m.calls, s)
}

// newPlane is a plane made as the server makes it, on a real store: some
// fields at once, the mesh set after its first use.
func newPlane(t *testing.T) (*Plane, *fakeMesh) {
	t.Helper()
	dir := t.TempDir()
	st := controltest.Store(t)
	keys, err := secrets.Load(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMesh{}
	p := &Plane{Store: st, Keys: keys, Proxy: m, Log: slog.New(slog.DiscardHandler), Builder: &build.Builder{Dir: filepath.Join(dir, "builds")},
		TempDir: filepath.Join(dir, "tmp"), ResourceDir: filepath.Join(dir, "resources")}
	return p, m
}

// TestPlaneLateFields: fields the server sets after the plane's first
// use are the ones later calls see, and the call policy outlives each call.
func TestPlaneLateFields(t *testing.T) {
	ctx := context.Background()
	p, m := newPlane(t)
	if err := p.MoveResourceDirs(ctx, filepath.Join(t.TempDir(), "old")); err != nil {
		t.Fatal(err)
	}
	p.Mesh, p.ServiceSubnet = m, netip.MustParsePrefix("10.96.0.0/24")
	for _, app := range []string{"web", "api"} {
		if _, err := p.CreateApp(ctx, app); err != nil {
			t.Fatal(err)
		}
	}
	if !m.has("service web 10.96.0.1") || !m.has("service api 10.96.0.2") {
		t.Fatalf("mesh got %q: want both apps' addresses", m.calls)
	}
	if _, err := p.Connect(ctx, "web", "api", "", "", io.Discard); err != nil {
		t.Fatal(err)
	}
	if !p.Allowed("web", "api") || p.Allowed("api", "web") {
		t.Errorf("after connect: web->api %v, api->web %v; want only web->api", p.Allowed("web", "api"), p.Allowed("api", "web"))
	}
	if err := p.Disconnect(ctx, "web", "api", io.Discard); err != nil {
		t.Fatal(err)
	}
	if p.Allowed("web", "api") || !m.has("revoke web->api") {
		t.Errorf("after disconnect: allowed %v, mesh got %q", p.Allowed("web", "api"), m.calls)
	}

	// A restart: a new plane on the same store loads the policy.
	if _, err := p.Connect(ctx, "api", "web", "", "", io.Discard); err != nil {
		t.Fatal(err)
	}
	q := &Plane{Store: p.Store, Keys: p.Keys, Proxy: m, Log: p.Log, Builder: p.Builder, TempDir: p.TempDir, Mesh: m, ServiceSubnet: p.ServiceSubnet}
	if q.Allowed("api", "web") {
		t.Fatal("allowed before Restore")
	}
	if err := q.Restore(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !q.Allowed("api", "web") || q.Allowed("web", "api") {
		t.Errorf("after Restore: api->web %v, web->api %v", q.Allowed("api", "web"), q.Allowed("web", "api"))
	}
}

// TestWireOptional: an optional part the plane lacks is a nil interface
// in the services (a nil pointer in one would pass their nil checks).
func TestWireOptional(t *testing.T) {
	s := (&Plane{}).wire()
	if s.apps.Images != nil || s.apps.Metrics != nil || s.apps.Routes != nil || s.apps.Unpacked != nil || s.apps.Dockerfiles {
		t.Errorf("apps: images %v, metrics %v, routes %v, unpacked %v, dockerfiles %v: want none", s.apps.Images, s.apps.Metrics, s.apps.Routes, s.apps.Unpacked, s.apps.Dockerfiles)
	}
	if s.mesh.Data != nil || s.mesh.Metrics != nil || s.mesh.Enabled() {
		t.Errorf("mesh: data %v, metrics %v: want none", s.mesh.Data, s.mesh.Metrics)
	}
	b := &build.Builder{Images: &build.Imager{}}
	if s := (&Plane{Builder: b}).wire(); !s.apps.Dockerfiles || s.apps.Unpacked != nil {
		t.Errorf("an imager without unpacking: dockerfiles %v, unpacked %v", s.apps.Dockerfiles, s.apps.Unpacked)
	}
}
