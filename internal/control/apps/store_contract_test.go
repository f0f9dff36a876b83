package apps

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/store"
)

// TestFakeStoreIsStore runs what the tests rely on of the store against
// the fake and the real one.
func TestFakeStoreIsStore(t *testing.T) {
	ctx := context.Background()
	real := controltest.Store(t)
	for name, s := range map[string]Store{"fake": newFakeStore(), "real": real} {
		t.Run(name, func(t *testing.T) {
			if err := s.CreateApp(ctx, pier.App{Name: "web", Count: 1, CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.App(ctx, "nope"); pier.KindOf(err) != pier.NotFound {
				t.Errorf("missing app: %v", err)
			}
			if err := s.SetCount(ctx, "nope", 1); pier.KindOf(err) != pier.NotFound {
				t.Errorf("count of a missing app: %v", err)
			}
			for range 3 {
				if _, err := s.CreateRelease(ctx, pier.Release{App: "web", Status: pier.ReleasePending, CreatedAt: time.Now()}); err != nil {
					t.Fatal(err)
				}
			}
			s.Activate(ctx, "web", 1)
			s.Activate(ctx, "web", 3)
			s.SetReleaseStatus(ctx, "web", 2, pier.ReleaseFailed)
			rels, _ := s.Releases(ctx, "web")
			var got []string
			for _, r := range rels {
				got = append(got, r.Status)
			}
			if want := []string{pier.ReleaseActive, pier.ReleaseFailed, pier.ReleaseRetired}; !slices.Equal(got, want) {
				t.Errorf("releases newest first %q, want %q", got, want)
			}
			if a, _ := s.App(ctx, "web"); a.Release != 3 {
				t.Errorf("current v%d, want v3", a.Release)
			}
			if _, err := s.Release(ctx, "web", 9); pier.KindOf(err) != pier.NotFound {
				t.Errorf("missing release: %v", err)
			}
			s.PutSecrets(ctx, "web", []store.SealedSecret{{Name: "B", KeyID: "k", Sealed: []byte("b")}, {Name: "A", KeyID: "k", Sealed: []byte("a")}})
			if err := s.DeleteSecrets(ctx, "web", []string{"A", "NOPE"}); pier.KindOf(err) != pier.NotFound {
				t.Errorf("delete of an unknown secret: %v", err)
			}
			sealed, _, _ := s.Secrets(ctx, "web")
			if len(sealed) != 2 || sealed[0].Name != "A" {
				t.Errorf("after a refused delete: %+v, want A and B by name", sealed)
			}
		})
	}
}
