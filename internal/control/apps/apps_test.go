package apps

import (
	"context"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// TestScale: a count outside 0-100 or a busy app changes nothing; a good
// one is stored, and rolled out if the app has a release.
func TestScale(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		released bool
		busy     bool
		kind     pier.Kind
		did      string // the rollout's, "" none
	}{
		{name: "negative", n: -1, released: true, kind: pier.Invalid},
		{name: "above 100", n: 101, released: true, kind: pier.Invalid},
		{name: "busy", n: 2, released: true, busy: true, kind: pier.Conflict},
		{name: "to zero", n: 0, released: true, did: "scale web v1 to 0"},
		{name: "to 100", n: 100, released: true, did: "scale web v1 to 100"},
		{name: "before the first deploy", n: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web")
			if tc.released {
				e.addRelease(t, "web", pier.ReleaseActive)
			}
			if tc.busy {
				// A caller that stops waiting for the deploy under way
				// changes nothing.
				unlock, _ := e.busy.TryLock("web", "a deploy")
				defer unlock()
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
				defer cancel()
			}
			a, err := e.svc.Scale(ctx, "web", tc.n)
			if pier.KindOf(err) != tc.kind || (tc.kind == 0) != (err == nil) {
				t.Fatalf("error %v, want kind %v", err, tc.kind)
			}
			stored, _ := e.store.App(ctx, "web")
			var scaled []string
			for _, d := range e.log.All() {
				if strings.HasPrefix(d, "scale ") {
					scaled = append(scaled, d)
				}
			}
			if err != nil {
				if stored.Count != 1 || len(scaled) != 0 {
					t.Errorf("after a refused scale: count %d, did %q", stored.Count, scaled)
				}
				return
			}
			if a.Count != tc.n || stored.Count != tc.n {
				t.Errorf("count %d, stored %d, want %d", a.Count, stored.Count, tc.n)
			}
			if want := []string{tc.did}; tc.did == "" && len(scaled) != 0 || tc.did != "" && !slices.Equal(scaled, want) {
				t.Errorf("did %q, want %q", scaled, tc.did)
			}
			if !e.store.hasEvent("web scale: scaled to " + strconv.Itoa(tc.n) + " machine(s)") {
				t.Errorf("events %q", e.store.events)
			}
		})
	}
}

// TestCreateApp: an app gets its proxy route and service address; a
// reserved name is refused and a failed address undoes the app.
func TestCreateApp(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if _, err := e.svc.CreateApp(ctx, "edge"); pier.KindOf(err) != pier.Invalid {
		t.Errorf("create edge: %v, want Invalid (reserved)", err)
	}
	if _, err := e.svc.CreateApp(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if !e.log.Has("proxy add web") || !e.log.Has("service web") || !e.store.hasEvent("web app.create: app web created") {
		t.Errorf("did %q, events %q", e.log.All(), e.store.events)
	}
	e.parts.serviceErr = pier.Errorf(pier.Conflict, "the service subnet is full")
	if _, err := e.svc.CreateApp(ctx, "api"); pier.KindOf(err) != pier.Conflict {
		t.Fatalf("create with a full subnet: %v", err)
	}
	if _, err := e.store.App(ctx, "api"); pier.KindOf(err) != pier.NotFound {
		t.Errorf("app kept after its address failed: %v", err)
	}
	if !e.log.Has("proxy remove api") {
		t.Errorf("did %q, want the proxy route removed", e.log.All())
	}
}

// TestDestroyApp: an app is taken out of traffic and stopped before its
// connections are revoked, then forgotten everywhere.
func TestDestroyApp(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web")
	e.addRelease(t, "web", pier.ReleaseActive)
	var told []string
	e.svc.AppDestroyed = func(app string) { told = append(told, app) }
	if err := e.svc.DestroyApp(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	want := []string{"proxy remove web", "stop web", "forget connections web", "forget metrics web", "remove builds web"}
	if did := e.log.All(); !slices.Equal(did, want) {
		t.Errorf("did %q, want %q", did, want)
	}
	if _, err := e.store.App(ctx, "web"); pier.KindOf(err) != pier.NotFound {
		t.Errorf("app still stored: %v", err)
	}
	if !slices.Equal(told, []string{"web"}) {
		t.Errorf("AppDestroyed told %q", told)
	}
	if err := e.svc.DestroyApp(ctx, "web"); pier.KindOf(err) != pier.NotFound {
		t.Errorf("second destroy: %v, want NotFound", err)
	}
}

// TestReconcile: after a restart every app is routed; one whose first
// deploy was cut short is stopped, the others run their current release;
// releases a restart cut short before they went live are marked failed.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "new", "web")
	e.addRelease(t, "new", pier.ReleasePending)
	e.addRelease(t, "web", pier.ReleaseRetired)
	e.addRelease(t, "web", pier.ReleaseActive)
	e.addRelease(t, "web", pier.ReleasePending)
	e.store.SetCount(ctx, "web", 3)
	if err := e.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"proxy add new", "stop new", "proxy add web", "routes web", "reconcile web v2 x3"}
	if did := e.log.All(); !slices.Equal(did, want) {
		t.Errorf("did %q, want %q", did, want)
	}
	for _, c := range []struct {
		app     string
		version int
		status  string
	}{{"new", 1, pier.ReleaseFailed}, {"web", 1, pier.ReleaseRetired}, {"web", 2, pier.ReleaseActive}, {"web", 3, pier.ReleaseFailed}} {
		if r, _ := e.store.Release(ctx, c.app, c.version); r.Status != c.status {
			t.Errorf("%s v%d is %s, want %s", c.app, c.version, r.Status, c.status)
		}
	}
	if !e.store.hasEvent("web deploy.failed: v3 was cut short by a restart of pier server; v2 stays live") {
		t.Errorf("no event says web's v3 was cut short: %q", e.store.events)
	}
}

// fakeCleaner kills what it is given.
type fakeCleaner struct {
	got []string
	err error
}

func (c *fakeCleaner) Cleanup(ctx context.Context, ids []string) (int, error) {
	c.got = ids
	return len(ids), c.err
}

// TestRestore: machines a server older than the machine manager left are
// killed and forgotten, and unfinished uploads and builds removed; if they
// cannot be killed, nothing is forgotten.
func TestRestore(t *testing.T) {
	for _, fail := range []bool{false, true} {
		e := newEnv(t)
		e.store.machines = []string{"m1", "m2"}
		os.MkdirAll(e.svc.TempDir, 0o700)
		c := &fakeCleaner{}
		if fail {
			c.err = errBoom
		}
		err := e.svc.Restore(context.Background(), c)
		if (err != nil) != fail {
			t.Fatalf("fail %v: error %v", fail, err)
		}
		if !slices.Equal(c.got, []string{"m1", "m2"}) {
			t.Errorf("cleaned %q, want m1 m2", c.got)
		}
		ids, _ := e.store.MachineIDs(context.Background())
		_, statErr := os.Stat(e.svc.TempDir)
		if fail {
			if len(ids) != 2 || e.log.Has("sweep") {
				t.Errorf("after a failed cleanup: machines %q, did %q", ids, e.log.All())
			}
			continue
		}
		if len(ids) != 0 || !os.IsNotExist(statErr) || !e.log.Has("sweep") {
			t.Errorf("machines %q, temp dir %v, did %q: want all gone and builds swept", ids, statErr, e.log.All())
		}
	}
}

// TestReleaseSpec: a machine's environment has the release's secrets
// opened, its connections' variables last (winning over a secret of the
// same name), and host ports only when isolated.
func TestReleaseSpec(t *testing.T) {
	ctx := context.Background()
	for _, isolated := range []bool{false, true} {
		e := newEnv(t, "web")
		e.svc.Specs = fakeSpecs{isolated: isolated}
		rel := e.addRelease(t, "web", pier.ReleaseActive)
		if _, err := e.svc.SetSecrets(ctx, "web", map[string]string{"TOKEN": "t0k", "DB_URL": "from-secret"}, io.Discard); err != nil {
			t.Fatal(err)
		}
		e.parts.env = []string{"DB_URL=from-connection"}
		e.parts.ports = []int{5432}
		spec, err := e.svc.ReleaseSpec(ctx, "web", rel.Version)
		if err != nil {
			t.Fatal(err)
		}
		var db []string
		for _, kv := range spec.Env {
			if strings.HasPrefix(kv, "DB_URL=") {
				db = append(db, kv)
			}
		}
		if !slices.Contains(spec.Env, "TOKEN=t0k") || !slices.Equal(db, []string{"DB_URL=from-connection"}) {
			t.Errorf("env %q: want TOKEN opened and DB_URL once, the connection's", spec.Env)
		}
		if wantPorts := isolated; (len(spec.HostPorts) == 1) != wantPorts {
			t.Errorf("isolated %v: host ports %v", isolated, spec.HostPorts)
		}
	}
}

func TestDedupEnv(t *testing.T) {
	tests := []struct{ in, want []string }{
		{nil, []string{}},
		{[]string{"A=1", "B=2"}, []string{"A=1", "B=2"}},
		{[]string{"A=1", "B=2", "A=3"}, []string{"A=3", "B=2"}}, // last value, first place
		{[]string{"A=1", "A=", "A"}, []string{"A"}},
	}
	for _, tc := range tests {
		if got := dedupEnv(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("dedupEnv(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
