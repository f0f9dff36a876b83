package baseimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// shared is the cache the tests of real bases share, so that each base is
// assembled once per test run; built records how long that took.
var shared struct {
	once  sync.Once
	bases *Bases
	dir   string
	mu    sync.Mutex
	built map[string]time.Duration
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		_ = removeTree(shared.dir)
	}
	os.Exit(code)
}

// sharedGet returns the base called name from the shared cache.
func sharedGet(t *testing.T, name string) Base {
	t.Helper()
	if _, err := os.Stat("/var/lib/dpkg/status"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no dpkg database: these tests need a Debian host")
		}
		t.Skip("no dpkg database: not a Debian host")
	}
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "pier-baseimage-test-")
		if err != nil {
			panic(err)
		}
		shared.dir = dir
		shared.bases = New(dir, nil)
		shared.built = map[string]time.Duration{}
	})
	var progress bytes.Buffer
	start := time.Now()
	base, err := shared.bases.Get(context.Background(), name, &progress)
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	if strings.Contains(progress.String(), "assembling") {
		shared.mu.Lock()
		shared.built[base.Canonical] = time.Since(start)
		shared.mu.Unlock()
		t.Logf("%s", strings.TrimSpace(progress.String()))
	}
	return base
}

// layerEntry is one entry of a layer as read back from its tar.
type layerEntry struct {
	Hdr  *tar.Header
	Data []byte // of regular files
}

// readLayer reads a base's layer through its v1.Layer.
func readLayer(t *testing.T, b Base) []layerEntry {
	t.Helper()
	rc, err := b.Layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []layerEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, layerEntry{h, data})
	}
}

// checkLayer checks the invariants of every base's layer, and that its
// unpacked directory holds exactly the same.
func checkLayer(t *testing.T, b Base, es []layerEntry) {
	t.Helper()
	seen := map[string]bool{}
	prev := ""
	for _, e := range es {
		h := e.Hdr
		name := strings.TrimSuffix(h.Name, "/")
		if name <= prev {
			t.Errorf("%s after %s: not sorted or twice", name, prev)
		}
		prev = name
		seen[name] = true
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: owner %d:%d %q:%q mtime %v", name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		if h.Mode&^0o1777 != 0 || h.Mode&0o1000 != 0 && h.Typeflag != tar.TypeDir {
			t.Errorf("%s: mode %o", name, h.Mode)
		}
		if len(h.PAXRecords) > 0 && h.PAXRecords["path"] == "" && h.PAXRecords["linkpath"] == "" {
			t.Errorf("%s: extra PAX records %v", name, h.PAXRecords)
		}
		if strings.HasPrefix(name, "/") || name == ".." || strings.HasPrefix(name, "../") || strings.Contains(name, "/../") {
			t.Errorf("%s: path outside the image", name)
		}
		if d := filepath.Dir(name); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory", name)
		}

		p := filepath.Join(b.Dir, name)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("unpacked: %v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uint32(os.Geteuid()) || st.Mtim.Sec != 0 {
			t.Errorf("unpacked %s: uid %d mtime %d", name, st.Uid, st.Mtim.Sec)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if !fi.IsDir() || int64(st.Mode&0o7777) != h.Mode {
				t.Errorf("unpacked %s: %v, tar mode %o", name, fi.Mode(), h.Mode)
			}
		case tar.TypeReg:
			if !fi.Mode().IsRegular() || int64(st.Mode&0o7777) != h.Mode || fi.Size() != h.Size {
				t.Errorf("unpacked %s: %v size %d, tar mode %o size %d", name, fi.Mode(), fi.Size(), h.Mode, h.Size)
			}
		case tar.TypeSymlink:
			link, _ := os.Readlink(p)
			if link != h.Linkname {
				t.Errorf("unpacked %s -> %q, tar -> %q", name, link, h.Linkname)
			}
		default:
			t.Errorf("%s: entry of type %q", name, h.Typeflag)
		}
	}
	n := 0
	err := filepath.WalkDir(b.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(b.Dir, p); rel != "." && !seen[filepath.ToSlash(rel)] {
			t.Errorf("unpacked %s is not in the layer", rel)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(es)+1 {
		t.Errorf("unpacked %d entries, layer %d", n-1, len(es))
	}
}

// listing renders entries one a line, for golden files.
func listing(es []layerEntry) string {
	var sb strings.Builder
	for _, e := range es {
		h := e.Hdr
		fmt.Fprintf(&sb, "%c %04o %s", h.Typeflag, h.Mode, h.Name)
		switch h.Typeflag {
		case tar.TypeSymlink:
			fmt.Fprintf(&sb, " -> %s", h.Linkname)
		case tar.TypeReg:
			fmt.Fprintf(&sb, " %q", e.Data)
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

func entryMap(es []layerEntry) map[string]layerEntry {
	m := map[string]layerEntry{}
	for _, e := range es {
		m[strings.TrimSuffix(e.Hdr.Name, "/")] = e
	}
	return m
}
