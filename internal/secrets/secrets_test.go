package secrets

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestSealOpenRoundTripAndBinding(t *testing.T) {
	dir := t.TempDir()
	k, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, sealed, err := k.Seal("web", "API_KEY", "hunter2-very-secret")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("hunter2")) {
		t.Fatal("sealed value contains the plaintext")
	}
	got, err := k.Open("web", "API_KEY", id, sealed)
	if err != nil || got != "hunter2-very-secret" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := k.Open("other", "API_KEY", id, sealed); err == nil {
		t.Fatal("a value sealed for one app opened for another")
	}
	if _, err := k.Open("web", "API_KEY", "k9999", sealed); err == nil {
		t.Fatal("opened with an unknown key id")
	}
	info, err := os.Stat(filepath.Join(dir, id+".key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", info.Mode().Perm(), err)
	}
}

func TestRotateKeepsOldValuesReadable(t *testing.T) {
	dir := t.TempDir()
	k, _ := Load(dir)
	id1, sealed, _ := k.Seal("web", "A", "one")
	id2, err := k.Rotate()
	if err != nil || id2 == id1 {
		t.Fatalf("Rotate = %q, %v", id2, err)
	}
	k2, err := Load(dir) // a restarted server sees both keys and seals with the newest
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k2.Open("web", "A", id1, sealed); err != nil || got != "one" {
		t.Fatalf("old value after rotate = %q, %v", got, err)
	}
	if id, _, _ := k2.Seal("web", "B", "two"); id != id2 {
		t.Fatalf("sealed with %s, want newest key %s", id, id2)
	}
}

func TestDigestChangesWithValue(t *testing.T) {
	k, _ := Load(t.TempDir())
	a, b := k.Digest("web", "A", "x"), k.Digest("web", "A", "y")
	if a == b || len(a) != 16 {
		t.Fatalf("digests %q %q", a, b)
	}
	if a != k.Digest("web", "A", "x") {
		t.Fatal("digest not stable")
	}
}
