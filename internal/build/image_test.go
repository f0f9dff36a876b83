package build

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
)

// TestTreeLayer: the app layer holds the tree under its prefix, root-owned,
// without set-id bits, symlinks as links (even ones leading out), and
// nothing but directories, files and links.
func TestTreeLayer(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "server"), []byte("#!/bin/sh\n"), 0o755)
	os.Chmod(filepath.Join(dir, "bin", "server"), 0o4755)
	os.Symlink("/etc/shadow", filepath.Join(dir, "escape"))
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644)
	os.Chown(filepath.Join(dir, "bin", "server"), 1234, 1234)
	path := filepath.Join(t.TempDir(), "layer.tar.gz")
	if err := writeTreeLayer(path, dir, "app"); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
		if h.Mode&0o6000 != 0 {
			t.Errorf("%s keeps set-id bits: %o", h.Name, h.Mode)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			got[h.Name] = "-> " + h.Linkname
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			got[h.Name] = string(b)
		default:
			got[h.Name] = string(h.Typeflag)
		}
	}
	want := map[string]string{"app/": "5", "app/bin/": "5", "app/bin/server": "#!/bin/sh\n", "app/escape": "-> /etc/shadow"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layer = %q\nwant %q", got, want)
	}
}

func TestCommand(t *testing.T) {
	for _, tt := range []struct {
		builder, start string
		want           []string
	}{
		{"static", "", []string{"/.pier/pier", "static-serve", "--dir", "/app"}},
		{"go", "./.pier/bin/app", []string{"/bin/sh", "-c", "exec ./.pier/bin/app"}},
		{"node", "npm start && echo done", []string{"/bin/sh", "-c", "npm start && echo done"}},
	} {
		if got := Command(tt.builder, tt.start); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Command(%q, %q) = %q, want %q", tt.builder, tt.start, got, tt.want)
		}
	}
}
