package store

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestAppsReleasesAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	if err := s.CreateApp(ctx, pier.App{Name: "web", Count: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateApp(ctx, pier.App{Name: "web", Count: 1}); pier.KindOf(err) != pier.Conflict {
		t.Fatalf("duplicate app: %v", err)
	}
	if _, err := s.App(ctx, "nope"); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("missing app: %v", err)
	}
	for i := 1; i <= 3; i++ {
		r, err := s.CreateRelease(ctx, pier.Release{App: "web", BuildID: "b", Builder: "go", Status: pier.ReleasePending,
			Config: pier.RunConfig{Strategy: "rolling", Env: map[string]string{"A": "1"}}, CreatedAt: time.Now()})
		if err != nil || r.Version != i {
			t.Fatalf("release %d: %+v %v", i, r, err)
		}
	}
	if err := s.Activate(ctx, "web", 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(ctx, "web", 3); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCount(ctx, "web", 4); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, path) // everything survives a reopen
	a, err := s.App(ctx, "web")
	if err != nil || a.Release != 3 || a.Count != 4 {
		t.Fatalf("app after reopen: %+v %v", a, err)
	}
	rels, _ := s.Releases(ctx, "web")
	statuses := []string{rels[0].Status, rels[1].Status, rels[2].Status}
	if statuses[0] != pier.ReleaseActive || statuses[1] != pier.ReleaseRetired || statuses[2] != pier.ReleasePending {
		t.Fatalf("statuses newest first = %v", statuses)
	}
	if rels[0].Config.Env["A"] != "1" {
		t.Fatalf("config not kept: %+v", rels[0].Config)
	}
	if err := s.DeleteApp(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if rels, _ := s.Releases(ctx, "web"); len(rels) != 0 {
		t.Fatalf("releases of a deleted app: %v", rels)
	}
	if err := s.SetCount(ctx, "web", 1); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("SetCount on deleted app: %v", err)
	}
}

func TestDeleteSecretsIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	s.CreateApp(ctx, pier.App{Name: "web", Count: 1})
	if err := s.PutSecrets(ctx, "web", []SealedSecret{{Name: "A", KeyID: "k1", Sealed: []byte{1}, Digest: "d"}, {Name: "B", KeyID: "k1", Sealed: []byte{2}, Digest: "e"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSecrets(ctx, "web", []string{"A", "MISSING"}); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("delete with a missing name: %v", err)
	}
	sealed, infos, _ := s.Secrets(ctx, "web")
	if len(sealed) != 2 || infos[0].Name != "A" {
		t.Fatalf("a failed delete removed some secrets: %+v", infos)
	}
	if err := s.DeleteSecrets(ctx, "web", []string{"A"}); err != nil {
		t.Fatal(err)
	}
	if _, infos, _ := s.Secrets(ctx, "web"); len(infos) != 1 || infos[0].Name != "B" {
		t.Fatalf("after delete: %+v", infos)
	}
}

func TestMachinesAndEvents(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	s.AddMachine(ctx, pier.Machine{ID: "m1", App: "web", StartedAt: time.Now()})
	s.AddMachine(ctx, pier.Machine{ID: "m2", App: "web", StartedAt: time.Now()})
	s.RemoveMachine(ctx, "m1")
	if ids, _ := s.MachineIDs(ctx); len(ids) != 1 || ids[0] != "m2" {
		t.Fatalf("machine ids = %v", ids)
	}
	for _, m := range []string{"one", "two", "three"} {
		s.AddEvent(ctx, "web", "t", m)
	}
	evs, err := s.Events(ctx, "web", 2)
	if err != nil || len(evs) != 2 || evs[0].Message != "two" || evs[1].Message != "three" {
		t.Fatalf("events = %+v %v", evs, err)
	}
}

func TestCerts(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	if err := s.CreateApp(ctx, pier.App{Name: "web", Count: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateCert(ctx, pier.Cert{Domain: "www.example.com", App: "nope", CreatedAt: time.Now()}); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("cert of a missing app: %v", err)
	}
	if err := s.CreateCert(ctx, pier.Cert{Domain: "www.example.com", App: "web", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateCert(ctx, pier.Cert{Domain: "www.example.com", App: "web", CreatedAt: time.Now()}); pier.KindOf(err) != pier.Conflict {
		t.Fatalf("duplicate domain: %v", err)
	}
	if err := s.CreateCert(ctx, pier.Cert{Domain: "api.example.com", App: "web", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCert(ctx, "api.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCert(ctx, "api.example.com"); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("delete twice: %v", err)
	}
	certs, err := s.Certs(ctx)
	if err != nil || len(certs) != 1 || certs[0].Domain != "www.example.com" || certs[0].App != "web" {
		t.Fatalf("certs = %+v, %v", certs, err)
	}
	// Destroying the app takes its domains with it.
	if err := s.DeleteApp(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if certs, err := s.Certs(ctx); err != nil || len(certs) != 0 {
		t.Fatalf("certs after the app was deleted = %+v, %v", certs, err)
	}
}

func TestFilesArePrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	// An earlier version's files, made under a umask of 022.
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.WriteFile(path+suffix, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path+suffix, 0o644)
	}
	s := open(t, path)
	if err := s.CreateApp(context.Background(), pier.App{Name: "web", Count: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	check := func() {
		t.Helper()
		for _, suffix := range []string{"", "-wal", "-shm"} {
			st, err := os.Stat(path + suffix)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v; want 0600", path+suffix, st.Mode().Perm())
			}
		}
	}
	check()

	// A new database, under a umask that would let others read it.
	s.Close()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(path + suffix)
	}
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	s = open(t, path)
	if err := s.CreateApp(context.Background(), pier.App{Name: "web", Count: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	check()
}
