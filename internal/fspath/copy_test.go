package fspath

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := os.WriteFile(src, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CopyFile(src, dst, 0o640); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(dst); err != nil || string(data) != "content" {
		t.Errorf("copy = %q, %v", data, err)
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm()&^0o640 != 0 {
		t.Errorf("mode %v, want at most 0640", fi.Mode())
	}
	// An existing destination is never written through (it may be a link).
	if err := CopyFile(src, dst, 0o640); err == nil {
		t.Error("copied over an existing file")
	}
}
