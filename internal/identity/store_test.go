package identity

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pier-dev/pier/internal/secrets"
)

var _ Sealer = (*secrets.Keyring)(nil)

func TestFileStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keys, err := secrets.Load(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	st := &FileStore{Path: filepath.Join(dir, "mesh", "ca.sealed"), Sealer: keys}

	if data, err := st.Load(ctx); data != nil || err != nil {
		t.Fatalf("Load before any Save = %q, %v; want nil, nil", data, err)
	}
	a, err := Open(ctx, st, Options{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RotateIssuer(ctx); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(st.Path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("mode = %o, want 600", mode)
	}
	raw, err := os.ReadFile(st.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{"PRIVATE KEY", "-----BEGIN", "pier.internal", `"key"`} {
		if bytes.Contains(raw, []byte(plain)) {
			t.Errorf("file contains %q in plain text", plain)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(st.Path)); len(entries) != 1 {
		t.Errorf("%d files next to the state, want no temp files left", len(entries))
	}

	b, err := Open(ctx, st, Options{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	sa, sb := a.Status(), b.Status()
	if sa.Anchors[0].Serial != sb.Anchors[0].Serial || sa.Issuer.Serial != sb.Issuer.Serial {
		t.Error("reopened FileStore CA has other anchor or issuer")
	}

	// Sealed under the mesh CA scope: another keyring cannot open it.
	other, err := secrets.Load(filepath.Join(dir, "other-keys"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&FileStore{Path: st.Path, Sealer: other}).Load(ctx); err == nil {
		t.Error("state opened with the wrong keyring")
	}
}
