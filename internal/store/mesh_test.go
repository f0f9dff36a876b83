package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func TestServiceNumbers(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, app := range []string{"a", "b", "c"} {
		if err := s.CreateApp(ctx, pier.App{Name: app, Count: 1, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int]string{}
	for _, app := range []string{"a", "b", "c", "a"} {
		n, err := s.EnsureServiceNumber(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		if other, ok := seen[n]; ok && other != app {
			t.Fatalf("%s and %s share number %d", app, other, n)
		}
		seen[n] = app
	}
	if len(seen) != 3 {
		t.Fatalf("numbers: %v", seen)
	}
	// Numbers are kept for the app's life, and go with it.
	all, err := s.ServiceNumbers(ctx)
	if err != nil || len(all) != 3 || seen[all["b"]] != "b" {
		t.Fatalf("ServiceNumbers: %v %v", all, err)
	}
	if err := s.DeleteApp(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.ServiceNumbers(ctx); len(all) != 2 {
		t.Fatalf("after deleting b: %v", all)
	}
	n, err := s.EnsureServiceNumber(ctx, "a")
	if err != nil || seen[n] != "a" {
		t.Fatalf("a's number changed: %d %v", n, err)
	}
}
