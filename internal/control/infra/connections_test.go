package infra

import (
	"context"
	"io"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// TestConnect: a connection is granted with the type's default access,
// stored sealed, rolled into the app and recorded; its variables reach the
// app's machines, and its port is opened to them.
func TestConnect(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web")
	e.create(t, "db")
	conn := e.connect(t, "web", "db")

	if conn.Access != resources.ReadWrite || conn.As != "db" || conn.Kind != "resource" || !slices.Contains(conn.Env, "DB_URL") {
		t.Errorf("connection %+v: want readwrite as db, with DB_URL", conn)
	}
	for _, w := range []string{"grant db web readwrite", "reroll web: connect db (readwrite)"} {
		if !e.log.Has(w) {
			t.Errorf("did %q, want %q", e.log.All(), w)
		}
	}
	row, err := e.store.Connection(ctx, "web", "db")
	if err != nil || row.Status != store.ConnActive {
		t.Fatalf("stored %+v, %v: want active", row, err)
	}
	cr, err := e.svc.creds(row)
	if err != nil || cr["user"] != "web" {
		t.Errorf("sealed credentials open to %v, %v: want web's", cr, err)
	}
	if got := e.store.eventsOf("web"); !slices.Contains(got, "connect: connected to kv db with readwrite access as db") {
		t.Errorf("events of web %q", got)
	}
	if got := e.store.eventsOf("resource/db"); !slices.Contains(got, "connect: web connected with readwrite access") {
		t.Errorf("events of db %q", got)
	}

	env, err := e.svc.Env(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	db, _ := e.store.Resource(ctx, "db")
	port := strconv.Itoa(db.Port)
	for _, w := range []string{"DB_USER=web", "DB_PASSWORD=pw-web", "DB_URL=kv://web@127.0.0.1:" + port, "KV_URL=kv://web@127.0.0.1:" + port} {
		if !slices.Contains(env, w) {
			t.Errorf("env %q: want %s", env, w)
		}
	}
	if got := e.svc.HostPorts("web"); !slices.Equal(got, []int{db.Port}) {
		t.Errorf("host ports %v, want [%d]", got, db.Port)
	}
}

// TestConnectRefused: a connection that cannot be made is refused before
// anything is granted, stored or rolled.
func TestConnectRefused(t *testing.T) {
	tests := []struct {
		name          string
		app, target   string
		access        resources.Access
		as            string
		noMesh, busy  bool
		kind          pier.Kind
		wantConnsLeft int // web's connections afterwards (the setup's: db)
	}{
		{name: "unknown app", app: "nope", target: "db", kind: pier.NotFound},
		{name: "unknown target", app: "web", target: "nothing", kind: pier.NotFound},
		{name: "resource being created", app: "web", target: "new", kind: pier.Conflict},
		{name: "already connected", app: "web", target: "db", kind: pier.Conflict},
		{name: "name of another connection", app: "web", target: "cache", as: "db", kind: pier.Conflict},
		{name: "access the type lacks", app: "web", target: "cache", access: resources.Admin, kind: pier.Invalid},
		{name: "reserved name", app: "web", target: "cache", as: "pier_db", kind: pier.Invalid},
		{name: "an app to itself", app: "web", target: "web", kind: pier.Invalid},
		{name: "an app without a mesh", app: "web", target: "api", noMesh: true, kind: pier.Invalid},
		{name: "to an app with a resource's access", app: "web", target: "api", access: resources.Read, kind: pier.Invalid},
		{name: "app busy", app: "web", target: "cache", busy: true, kind: pier.Conflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web", "api")
			e.create(t, "db")
			e.create(t, "cache")
			e.create(t, "new")
			e.leaveResource("new", resources.StatusCreating)
			e.connect(t, "web", "db")
			e.calls.enabled = !tc.noMesh
			if tc.busy {
				// A caller that stops waiting for the deploy under way
				// changes nothing.
				unlock, _ := e.busy.TryLock("web", "a deploy")
				defer unlock()
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
				defer cancel()
			}
			before := len(e.log.All())
			_, err := e.svc.Connect(ctx, tc.app, tc.target, tc.access, tc.as, io.Discard)
			if pier.KindOf(err) != tc.kind {
				t.Fatalf("error %v (%v), want kind %v", err, pier.KindOf(err), tc.kind)
			}
			if did := e.log.All()[before:]; len(did) != 0 {
				t.Errorf("did %q, want nothing", did)
			}
			if conns, _ := e.store.Connections(ctx, "web", ""); len(conns) != 1 || conns[0].Target != "db" {
				t.Errorf("connections of web %+v, want only the one to db", conns)
			}
		})
	}
}

// TestConnectRollFails: when the app cannot be rolled with the new
// credentials they are revoked and forgotten; if the revoke fails too,
// the connection stays marked for the maintenance loop.
func TestConnectRollFails(t *testing.T) {
	for _, revokeFails := range []bool{false, true} {
		t.Run("revoke fails "+strconv.FormatBool(revokeFails), func(t *testing.T) {
			e := newEnv(t, "web")
			e.create(t, "db")
			e.apps.fail = errBoom
			if revokeFails {
				e.driver.setFail("revoke", errBoom)
			}
			if _, err := e.svc.Connect(context.Background(), "web", "db", "", "", io.Discard); err == nil {
				t.Fatal("no error")
			}
			if !e.log.Has("revoke db web") {
				t.Errorf("did %q, want the grant revoked", e.log.All())
			}
			st, ok := e.store.connStatus("web", "db")
			switch {
			case revokeFails && st != store.ConnRevoking:
				t.Errorf("connection %q (%v), want revoking", st, ok)
			case !revokeFails && ok:
				t.Errorf("connection %q, want none", st)
			}
			if got := e.store.eventsOf("web"); len(got) != 0 {
				t.Errorf("events %q, want none", got)
			}
		})
	}
}

// TestDisconnect: the app is rolled without the connection, then its
// credentials are revoked and it is forgotten; a call connection is denied
// before the roll. A failed roll does not keep the credentials alive.
func TestDisconnect(t *testing.T) {
	tests := []struct {
		name, target string
		rollFails    bool
		want         []string // in this order
		events       map[string]string
	}{
		{name: "resource", target: "db", want: []string{"reroll web: disconnect db", "revoke db web"},
			events: map[string]string{"web": "disconnect: disconnected from db", "resource/db": "disconnect: web disconnected; its credentials were revoked"}},
		{name: "resource, roll fails", target: "db", rollFails: true, want: []string{"reroll web: disconnect db", "revoke db web"},
			events: map[string]string{"resource/db": "disconnect: web disconnected; its credentials were revoked"}},
		{name: "app", target: "api", want: []string{"deny web->api", "reroll web: disconnect api"},
			events: map[string]string{"web": "disconnect: disconnected from api", "api": "disconnect: web may no longer call it"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "web", "api")
			e.create(t, "db")
			e.connect(t, "web", tc.target)
			e.apps.fail = nil
			if tc.rollFails {
				e.apps.fail = errBoom
			}
			before := len(e.log.All())
			if err := e.svc.Disconnect(context.Background(), "web", tc.target, io.Discard); err != nil {
				t.Fatal(err)
			}
			did := e.log.All()[before:]
			i := 0
			for _, d := range did {
				if i < len(tc.want) && d == tc.want[i] {
					i++
				}
			}
			if i != len(tc.want) {
				t.Errorf("did %q, want %q in this order", did, tc.want)
			}
			if st, ok := e.store.connStatus("web", tc.target); ok {
				t.Errorf("connection still stored (%q)", st)
			}
			for subject, want := range tc.events {
				if !slices.Contains(e.store.eventsOf(subject), want) {
					t.Errorf("events of %s %q, want %q", subject, e.store.eventsOf(subject), want)
				}
			}
		})
	}
}

// TestDeclared: the connections pier.toml declares are checked without a
// change, made under the deploy, undone together if one fails or the
// release does, and recorded once it is live.
func TestDeclared(t *testing.T) {
	ctx := context.Background()
	decls := []appconfig.Connection{{Resource: "db"}, {Resource: "cache", Access: "read"}}

	t.Run("check refuses", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			decls []appconfig.Connection
			kind  pier.Kind
		}{
			{"missing resource", []appconfig.Connection{{Resource: "nothing"}}, pier.Invalid},
			{"other access than the connection's", []appconfig.Connection{{Resource: "db", Access: "read"}}, pier.Conflict},
			{"one name twice", []appconfig.Connection{{Resource: "cache", As: "store"}, {Resource: "new2", As: "store"}}, pier.Conflict},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := newEnv(t, "web")
				e.create(t, "db")
				e.create(t, "cache")
				e.create(t, "new2")
				e.connect(t, "web", "db")
				before := len(e.log.All())
				err := e.svc.CheckDeclared(ctx, "web", tc.decls)
				if pier.KindOf(err) != tc.kind {
					t.Errorf("error %v, want kind %v", err, tc.kind)
				}
				if did := e.log.All()[before:]; len(did) != 0 {
					t.Errorf("did %q, want nothing", did)
				}
			})
		}
	})

	t.Run("existing connection is kept", func(t *testing.T) {
		e := newEnv(t, "web")
		e.create(t, "db")
		e.create(t, "cache")
		e.connect(t, "web", "db")
		_, done, err := e.svc.GrantDeclared(ctx, "web", decls, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if n := e.log.Count("grant db web readwrite"); n != 1 {
			t.Errorf("did %q: db granted again", e.log.All())
		}
		if !e.log.Has("grant cache web read") {
			t.Errorf("did %q, want cache granted read", e.log.All())
		}
		done(ctx)
		if !slices.Contains(e.store.eventsOf("resource/cache"), "connect: web connected with read access") {
			t.Errorf("events of cache %q", e.store.eventsOf("resource/cache"))
		}
	})

	t.Run("second grant fails", func(t *testing.T) {
		e := newEnv(t)
		e.store.apps["web"] = pier.App{Name: "web"}
		e.create(t, "db")
		e.create(t, "cache")
		e.driver.setFail("grant cache", errBoom) // after db's
		_, _, err := e.svc.GrantDeclared(ctx, "web", decls, io.Discard)
		if err == nil {
			t.Fatal("no error")
		}
		if !e.log.Has("revoke db web") {
			t.Errorf("did %q, want db's grant revoked", e.log.All())
		}
		if conns, _ := e.store.Connections(ctx, "web", ""); len(conns) != 0 {
			t.Errorf("connections %+v, want none", conns)
		}
	})

	t.Run("release fails", func(t *testing.T) {
		e := newEnv(t, "web")
		e.create(t, "db")
		e.create(t, "cache")
		undo, _, err := e.svc.GrantDeclared(ctx, "web", decls, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if conns, _ := e.store.Connections(ctx, "web", ""); len(conns) != 2 {
			t.Fatalf("connections %+v, want two", conns)
		}
		undo()
		if conns, _ := e.store.Connections(ctx, "web", ""); len(conns) != 0 {
			t.Errorf("after undo: connections %+v, want none", conns)
		}
		if !e.log.Has("revoke db web") || !e.log.Has("revoke cache web") {
			t.Errorf("did %q, want both revoked", e.log.All())
		}
		if got := e.store.eventsOf("web"); len(got) != 0 {
			t.Errorf("events %q, want none", got)
		}
	})
}

// TestForget: an app being destroyed loses its connections and its
// callers may no longer call it.
func TestForget(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web", "api")
	e.create(t, "db")
	e.connect(t, "web", "db")
	e.connect(t, "web", "api")
	e.connect(t, "api", "web")
	e.svc.Forget(ctx, "web")
	for _, w := range []string{"revoke db web", "deny web->api", "deny api->web", "unserve web"} {
		if !e.log.Has(w) {
			t.Errorf("did %q, want %q", e.log.All(), w)
		}
	}
	for _, target := range []string{"db", "api"} {
		if st, ok := e.store.connStatus("web", target); ok {
			t.Errorf("web -> %s still stored (%q)", target, st)
		}
	}
	// The caller's row goes too: a later app named web must not be
	// callable by api on the strength of it.
	if st, ok := e.store.connStatus("api", "web"); ok {
		t.Errorf("caller's connection api -> web still stored (%q)", st)
	}
	if !slices.Contains(e.store.eventsOf("resource/db"), "disconnect: web was destroyed; its credentials were revoked") {
		t.Errorf("events of db %q", e.store.eventsOf("resource/db"))
	}
}
