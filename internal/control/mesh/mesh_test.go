package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// fakeStore holds apps, resources and connections as store.Store lists
// them (apps and resources by name, connections by app then target), and
// gives service numbers from 1, keeping an app's.
type fakeStore struct {
	mu        sync.Mutex
	apps      []pier.App
	resources []store.ResourceRow
	conns     []store.ConnectionRow
	numbers   map[string]int
	events    []string
}

var _ Store = (*fakeStore)(nil)

func (s *fakeStore) App(ctx context.Context, name string) (pier.App, error) {
	for _, a := range s.apps {
		if a.Name == name {
			return a, nil
		}
	}
	return pier.App{}, pier.Errorf(pier.NotFound, "app %q not found", name)
}

func (s *fakeStore) Apps(ctx context.Context) ([]pier.App, error) {
	out := slices.Clone(s.apps)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *fakeStore) EnsureServiceNumber(ctx context.Context, app string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.numbers == nil {
		s.numbers = map[string]int{}
	}
	if n, ok := s.numbers[app]; ok {
		return n, nil
	}
	s.numbers[app] = len(s.numbers) + 1
	return s.numbers[app], nil
}

func (s *fakeStore) Resources(ctx context.Context) ([]store.ResourceRow, error) {
	return slices.Clone(s.resources), nil
}

func (s *fakeStore) Connections(ctx context.Context, app, target string) ([]store.ConnectionRow, error) {
	var out []store.ConnectionRow
	for _, c := range s.conns {
		if (app == "" || c.App == app) && (target == "" || c.Target == target) {
			out = append(out, c)
		}
	}
	return out, nil
}

func (s *fakeStore) AddEvent(ctx context.Context, app, typ, msg string) error {
	s.events = append(s.events, app+" "+typ+": "+msg)
	return nil
}

// fakeData is the mesh's data plane; Revoke checks the policy was changed
// first, as the real one relies on.
type fakeData struct {
	policy   *Policy
	services map[string]netip.Addr
	revoked  []string
	// allowedAtRevoke is what the policy said when Revoke came.
	allowedAtRevoke []bool
}

func (d *fakeData) SetService(app string, vip netip.Addr) { d.services[app] = vip }
func (d *fakeData) RemoveService(app string)              { delete(d.services, app) }
func (d *fakeData) Revoke(src, dst string) {
	d.revoked = append(d.revoked, src+"->"+dst)
	d.allowedAtRevoke = append(d.allowedAtRevoke, d.policy.Allowed(src, dst))
}

func conn(app, target, kind string, st store.ConnStatus) store.ConnectionRow {
	return store.ConnectionRow{Connection: resources.Connection{App: app, Target: target, Kind: kind, Access: "call", As: target}, Status: st}
}

func newService(st *fakeStore, withMesh bool) (*Service, *fakeData) {
	s := &Service{Store: st, Subnet: netip.MustParsePrefix("10.96.0.0/29"), Policy: &Policy{}, Log: slog.New(slog.DiscardHandler)}
	d := &fakeData{policy: s.Policy, services: map[string]netip.Addr{}}
	if withMesh {
		s.Data = d
	}
	return s, d
}

// TestStart: at start every app gets its service address back and the
// policy allows exactly the active call connections.
func TestStart(t *testing.T) {
	st := &fakeStore{
		apps: []pier.App{{Name: "web"}, {Name: "api"}, {Name: "billing"}},
		conns: []store.ConnectionRow{
			conn("web", "api", "app", store.ConnActive),
			conn("web", "billing", "app", store.ConnRevoking),
			conn("api", "db", "resource", store.ConnActive),
		},
	}
	s, d := newService(st, true)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst string
		want     bool
	}{
		{"web", "api", true},
		{"api", "web", false},     // one way only
		{"web", "billing", false}, // being removed
		{"api", "db", false},      // a resource connection
	} {
		if got := s.Policy.Allowed(tc.src, tc.dst); got != tc.want {
			t.Errorf("Allowed(%s, %s) = %v, want %v", tc.src, tc.dst, got, tc.want)
		}
	}
	if len(d.services) != 3 || d.services["api"] != netip.MustParseAddr("10.96.0.1") {
		t.Errorf("services %v: want every app, api first (by name)", d.services)
	}

	// Without a mesh nothing is loaded: no call is carried anyway.
	s, _ = newService(st, false)
	if err := s.Start(context.Background()); err != nil || s.Policy.Allowed("web", "api") || s.Enabled() {
		t.Errorf("without a mesh: err %v, allowed %v, enabled %v", err, s.Policy.Allowed("web", "api"), s.Enabled())
	}
}

// TestAllowDeny: Deny takes the rule away before the data plane cuts the
// open calls, so none is let in again meanwhile.
func TestAllowDeny(t *testing.T) {
	s, d := newService(&fakeStore{}, true)
	s.Allow("web", "api")
	if !s.Policy.Allowed("web", "api") {
		t.Fatal("not allowed after Allow")
	}
	s.Deny("web", "api")
	if s.Policy.Allowed("web", "api") {
		t.Error("allowed after Deny")
	}
	if !slices.Equal(d.revoked, []string{"web->api"}) || !slices.Equal(d.allowedAtRevoke, []bool{false}) {
		t.Errorf("revoked %v with the policy saying %v: want web->api, already denied", d.revoked, d.allowedAtRevoke)
	}
	// Without a data plane Deny still updates the policy.
	s, _ = newService(&fakeStore{}, false)
	s.Allow("a", "b")
	s.Deny("a", "b")
	if s.Policy.Allowed("a", "b") {
		t.Error("no mesh: allowed after Deny")
	}
}

func TestNthAddr(t *testing.T) {
	p := netip.MustParsePrefix("10.96.0.0/29") // 8 addresses: .1-.6 usable
	for _, tc := range []struct {
		n    int
		want string // "" Conflict
	}{
		{1, "10.96.0.1"}, {6, "10.96.0.6"}, {7, ""}, {0, ""},
	} {
		got, err := nthAddr(p, tc.n)
		if tc.want == "" {
			if pier.KindOf(err) != pier.Conflict {
				t.Errorf("n %d: %v, %v; want Conflict", tc.n, got, err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("n %d: %v, %v; want %s", tc.n, got, err, tc.want)
		}
	}
	odd := netip.MustParsePrefix("10.96.0.9/29") // not masked
	if got, _ := nthAddr(odd, 1); got.String() != "10.96.0.9" {
		t.Errorf("unmasked prefix: %v, want 10.96.0.9", got)
	}
}

// TestServices: an app keeps its address; a gone one loses it; a full
// subnet refuses more.
func TestServices(t *testing.T) {
	ctx := context.Background()
	s, d := newService(&fakeStore{}, true)
	for _, app := range []string{"a", "b", "a"} {
		if err := s.AddService(ctx, app); err != nil {
			t.Fatal(err)
		}
	}
	if d.services["a"] != netip.MustParseAddr("10.96.0.1") || d.services["b"] != netip.MustParseAddr("10.96.0.2") {
		t.Errorf("services %v", d.services)
	}
	s.RemoveService("a")
	if _, ok := d.services["a"]; ok {
		t.Error("a kept its address")
	}
	for _, app := range []string{"c", "d", "e", "f"} {
		if err := s.AddService(ctx, app); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddService(ctx, "g"); pier.KindOf(err) != pier.Conflict {
		t.Errorf("seventh app in a /29: %v, want Conflict", err)
	}
}

type fakeFleet map[string][]pier.Machine

func (f fakeFleet) Machines(app string) []pier.Machine { return f[app] }
func (f fakeFleet) Serving(app string) int             { return len(f[app]) }

// TestGraph: every app (deployed or not, with its serving machines) and
// resource is a node; only active connections are edges.
func TestGraph(t *testing.T) {
	st := &fakeStore{
		apps:      []pier.App{{Name: "web", Release: 3}, {Name: "new"}},
		resources: []store.ResourceRow{{Resource: resources.Resource{Name: "db", Type: "postgres", Status: resources.StatusReady}}},
		conns: []store.ConnectionRow{
			conn("web", "db", "resource", store.ConnActive),
			conn("web", "new", "app", store.ConnRevoking),
		},
	}
	s, _ := newService(st, false)
	s.Fleet = fakeFleet{"web": {{ID: "m1"}, {ID: "m2"}}}
	g, err := s.Graph(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]graph.Node{}
	for _, n := range g.Nodes {
		nodes[n.ID] = n
	}
	if n := nodes["web"]; n.Status != "deployed" || n.Release != 3 || n.Machines != 2 {
		t.Errorf("web %+v", n)
	}
	if n := nodes["new"]; n.Status != "created" || n.Machines != 0 {
		t.Errorf("new %+v", n)
	}
	if n := nodes["db"]; n.Kind != "resource" || n.Status != "ready" || n.Type != "postgres" {
		t.Errorf("db %+v", n)
	}
	if len(g.Edges) != 1 || g.Edges[0].From != "web" || g.Edges[0].To != "db" || g.Edges[0].State != graph.StateDeclared {
		t.Errorf("edges %+v: want web -> db, declared", g.Edges)
	}
}

// fakeCA is a certificate authority that counts rotations.
type fakeCA struct {
	issuer int
	fail   error
}

func (c *fakeCA) AppID(app string) spiffeid.ID {
	return spiffeid.RequireFromSegments(c.TrustDomain(), "app", app)
}
func (c *fakeCA) Certificate(id spiffeid.ID) (*tls.Certificate, error) {
	return &tls.Certificate{}, c.fail
}
func (c *fakeCA) Issued(id spiffeid.ID) (identity.CertInfo, bool) {
	return identity.CertInfo{Serial: "leaf"}, true
}
func (c *fakeCA) TrustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString("pier.test")
}
func (c *fakeCA) Status() identity.Status {
	return identity.Status{TrustDomain: "pier.test", Issuer: identity.CertInfo{Serial: "issuer-" + string(rune('0'+c.issuer))}}
}
func (c *fakeCA) RotateIssuer(ctx context.Context) error { c.issuer++; return c.fail }
func (c *fakeCA) RotateAnchor(ctx context.Context) error { c.issuer++; return c.fail }

// TestIdentity: an app's identity names its SPIFFE ID and machines; an
// unknown app has none.
func TestIdentity(t *testing.T) {
	ctx := context.Background()
	s, _ := newService(&fakeStore{apps: []pier.App{{Name: "web"}}}, true)
	s.CA, s.Fleet = &fakeCA{}, fakeFleet{"web": {{ID: "m1", State: "started"}}}
	id, err := s.Identity(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if id.SPIFFEID != "spiffe://pier.test/app/web" || !id.Mesh || len(id.Machines) != 1 || id.Machines[0] != (IdentityMachine{ID: "m1", State: "started"}) {
		t.Errorf("identity %+v", id)
	}
	if _, err := s.Identity(ctx, "nope"); pier.KindOf(err) != pier.NotFound {
		t.Errorf("unknown app: %v", err)
	}
}

// TestRotate: a rotation is recorded on the mesh's history; a failed one
// is not.
func TestRotate(t *testing.T) {
	ctx := context.Background()
	st := &fakeStore{}
	s, _ := newService(st, true)
	ca := &fakeCA{}
	s.CA = ca
	got, err := s.Rotate(ctx, true)
	if err != nil || got.Issuer.Serial != "issuer-1" {
		t.Fatalf("rotate: %+v, %v", got, err)
	}
	if !slices.Equal(st.events, []string{"mesh mesh.rotate: rotated the trust anchor; issuer is now issuer-1"}) {
		t.Errorf("events %q", st.events)
	}
	ca.fail = errors.New("disk full")
	if _, err := s.Rotate(ctx, false); err == nil || len(st.events) != 1 {
		t.Errorf("failed rotate: %v, events %q", err, st.events)
	}
}

// TestWindows: metrics queries take windows of 1s to 24h, and steps
// within the window.
func TestWindows(t *testing.T) {
	ctx := context.Background()
	s, _ := newService(&fakeStore{apps: []pier.App{{Name: "web"}}}, true)
	s.Metrics = noMetrics{}
	for _, tc := range []struct {
		window, step time.Duration
		ok           bool
	}{
		{time.Minute, time.Second, true},
		{MaxMetricsWindow, time.Hour, true},
		{time.Millisecond, time.Millisecond, false},
		{25 * time.Hour, time.Hour, false},
		{time.Minute, 2 * time.Minute, false},
		{time.Minute, time.Millisecond, false},
	} {
		_, err := s.History(ctx, "web", "", tc.window, tc.step)
		if (err == nil) != tc.ok {
			t.Errorf("window %s step %s: %v, want ok %v", tc.window, tc.step, err, tc.ok)
		}
	}
}

// noMetrics has recorded nothing.
type noMetrics struct{}

func (noMetrics) Apps(time.Duration) []metrics.Stat               { return nil }
func (noMetrics) Edges(time.Duration) []metrics.Stat              { return nil }
func (noMetrics) Machines(string, time.Duration) []metrics.Stat   { return nil }
func (noMetrics) Paths(string, time.Duration, int) []metrics.Stat { return nil }
func (noMetrics) History(string, string, time.Duration, time.Duration) []metrics.Point {
	return []metrics.Point{}
}
func (noMetrics) Observed() []metrics.Stat { return nil }
