package infra

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// TestFakeStoreIsStore runs what the tests rely on of the store against
// the fake and the real one.
func TestFakeStoreIsStore(t *testing.T) {
	ctx := context.Background()
	real := controltest.Store(t)
	if err := real.CreateApp(ctx, pier.App{Name: "web", Count: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]Store{"fake": newFakeStore("web"), "real": real} {
		t.Run(name, func(t *testing.T) {
			db := store.ResourceRow{Resource: resources.Resource{Name: "db", Type: "kv", Params: map[string]any{"size_mb": 64}, Status: resources.StatusCreating}}
			if err := s.CreateResource(ctx, db); err != nil {
				t.Fatal(err)
			}
			taken := db
			taken.Name = "web"
			if err := s.CreateResource(ctx, taken); pier.KindOf(err) != pier.Conflict {
				t.Errorf("resource named like an app: %v, want Conflict", err)
			}
			if r, _ := s.Resource(ctx, "db"); r.Params["size_mb"] != 64.0 {
				t.Errorf("params read back %#v, want JSON's float64", r.Params)
			}
			if _, err := s.Resource(ctx, "nope"); pier.KindOf(err) != pier.NotFound {
				t.Errorf("missing resource: %v", err)
			}
			if err := s.ResourceReady(ctx, "db", "k", []byte("x")); err != nil {
				t.Fatal(err)
			}
			for _, c := range []store.ConnectionRow{
				{Connection: resources.Connection{App: "web", Target: "db", Kind: "resource", Access: "read", As: "db", CreatedAt: time.Now()}, Status: store.ConnActive, KeyID: "k1", Sealed: []byte("a")},
				{Connection: resources.Connection{App: "web", Target: "api", Kind: "app", Access: "call", As: "api", CreatedAt: time.Now()}, Status: store.ConnActive},
				{Connection: resources.Connection{App: "api", Target: "db", Kind: "resource", Access: "read", As: "db", CreatedAt: time.Now()}, Status: store.ConnActive, KeyID: "k1", Sealed: []byte("b")},
			} {
				if err := s.PutConnection(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			cs, _ := s.Connections(ctx, "", "")
			var got []string
			for _, c := range cs {
				got = append(got, c.App+">"+c.Target+":"+c.Type)
			}
			if want := []string{"api>db:kv", "web>api:app", "web>db:kv"}; !slices.Equal(got, want) {
				t.Errorf("connections %q, want %q", got, want)
			}
			// DeleteRevoked: only a revoking row with the same credentials.
			s.DeleteRevoked(ctx, "web", "db", "k1", []byte("a"))
			if _, err := s.Connection(ctx, "web", "db"); err != nil {
				t.Errorf("an active row was deleted: %v", err)
			}
			s.SetConnectionStatus(ctx, "web", "db", store.ConnRevoking)
			s.DeleteRevoked(ctx, "web", "db", "k1", []byte("other"))
			if _, err := s.Connection(ctx, "web", "db"); err != nil {
				t.Errorf("a row with other credentials was deleted: %v", err)
			}
			s.DeleteRevoked(ctx, "web", "db", "k1", []byte("a"))
			if _, err := s.Connection(ctx, "web", "db"); pier.KindOf(err) != pier.NotFound {
				t.Errorf("the revoked row stayed: %v", err)
			}
			s.SetConnectionStatus(ctx, "web", "api", store.ConnRevoking)
			s.DeleteRevoked(ctx, "web", "api", "", nil)
			if _, err := s.Connection(ctx, "web", "api"); pier.KindOf(err) != pier.NotFound {
				t.Errorf("a revoked call connection (no credentials) stayed: %v", err)
			}
		})
	}
}
