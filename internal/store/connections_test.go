package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
)

// TestDeleteRevokedAppConnection: an app-to-app connection has no sealed
// credentials (NULL); once revoked its row must go, or reconnecting fails
// with "already connected" forever.
func TestDeleteRevokedAppConnection(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	for _, app := range []string{"web", "api"} {
		if err := s.CreateApp(ctx, pier.App{Name: app, Count: 1, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []ConnectionRow{
		{Connection: resources.Connection{App: "web", Target: "api", Kind: "app", Access: resources.Access("call"), As: "API", CreatedAt: time.Now()}, Status: ConnActive},
		{Connection: resources.Connection{App: "api", Target: "web", Kind: "app", Access: resources.Access("call"), As: "WEB", CreatedAt: time.Now()}, Status: ConnActive, KeyID: "k1", Sealed: []byte("sealed")},
	} {
		if err := s.PutConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := s.SetConnectionStatus(ctx, c.App, c.Target, ConnRevoking); err != nil {
			t.Fatal(err)
		}
		row, err := s.Connection(ctx, c.App, c.Target)
		if err != nil {
			t.Fatal(err)
		}
		// A different sealed value is a newer connection: it stays.
		if err := s.DeleteRevoked(ctx, row.App, row.Target, row.KeyID, []byte("other")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Connection(ctx, c.App, c.Target); err != nil {
			t.Fatalf("%s -> %s: a row with other credentials was deleted: %v", c.App, c.Target, err)
		}
		if err := s.DeleteRevoked(ctx, row.App, row.Target, row.KeyID, row.Sealed); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Connection(ctx, c.App, c.Target); pier.KindOf(err) != pier.NotFound {
			t.Errorf("%s -> %s (sealed %q): still there after DeleteRevoked: %v", c.App, c.Target, c.Sealed, err)
		}
	}
}

// TestResourceStatuses: a resource's status goes creating -> ready ->
// deleting, and the database holds the same words as before statuses were
// typed (existing data dirs keep working).
func TestResourceStatuses(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	r := ResourceRow{Resource: resources.Resource{Name: "db", Type: "postgres", Params: map[string]any{}, Status: resources.StatusCreating, CreatedAt: time.Now()}}
	if err := s.CreateResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		change func() error
		want   resources.Status
		stored string
	}{
		{func() error { return nil }, resources.StatusCreating, "creating"},
		{func() error { return s.ResourceReady(ctx, "db", "k1", []byte("sealed")) }, resources.StatusReady, "ready"},
		{func() error { return s.SetResourceStatus(ctx, "db", resources.StatusDeleting) }, resources.StatusDeleting, "deleting"},
	}
	for _, st := range steps {
		if err := st.change(); err != nil {
			t.Fatal(err)
		}
		got, err := s.Resource(ctx, "db")
		if err != nil {
			t.Fatal(err)
		}
		var stored string
		if err := s.db.QueryRowContext(ctx, `SELECT status FROM resources WHERE name = 'db'`).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if got.Status != st.want || stored != st.stored {
			t.Errorf("status %q, stored %q; want %q, %q", got.Status, stored, st.want, st.stored)
		}
	}
	if got, _ := s.Resource(ctx, "db"); got.AdminKeyID != "k1" || string(got.AdminSealed) != "sealed" {
		t.Errorf("ResourceReady kept key %q, sealed %q", got.AdminKeyID, got.AdminSealed)
	}
}
