package baseimage

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// epoch is every entry's modification time, so that the same packages make
// the same layer whenever and wherever they were installed.
var epoch = time.Unix(0, 0)

// written is what writing a base's entries made.
type written struct {
	DiffID, Digest v1.Hash
	Size           int64 // of the compressed layer
	Unpacked       int64 // bytes of regular files
	Files          int
}

// write writes entries (sorted, directories first) both as a gzipped tar
// layer at layerPath and unpacked under rootfs (which must not exist),
// from one read of each host file, so the two hold the same thing.
func write(ctx context.Context, entries []*entry, layerPath, rootfs string) (written, error) {
	var w written
	f, err := os.OpenFile(layerPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return w, err
	}
	defer f.Close()
	compressed := &hashCounter{h: sha256.New()}
	gz, err := gzip.NewWriterLevel(io.MultiWriter(f, compressed), gzip.DefaultCompression)
	if err != nil {
		return w, err
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diff))
	u := &unpacker{root: rootfs, made: map[string]bool{}, buf: make([]byte, 1<<20)}
	if err := os.Mkdir(rootfs, 0o700); err != nil {
		return w, err
	}
	for i, e := range entries {
		if i%256 == 0 && ctx.Err() != nil {
			return w, ctx.Err()
		}
		n, err := u.put(tw, e)
		if err != nil {
			return w, fmt.Errorf("%s: %w", e.Path, err)
		}
		w.Unpacked += n
		if e.Type == tar.TypeReg {
			w.Files++
		}
	}
	if err := tw.Close(); err != nil {
		return w, err
	}
	if err := gz.Close(); err != nil {
		return w, err
	}
	if err := f.Sync(); err != nil {
		return w, err
	}
	if err := u.finish(); err != nil {
		return w, err
	}
	w.Size = compressed.n
	w.Digest = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", compressed.h.Sum(nil))}
	w.DiffID = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", diff.Sum(nil))}
	return w, f.Close()
}

type hashCounter struct {
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return c.h.Write(b)
}

// unpacker makes the unpacked copy of the entries it writes to a tar.
// Entries come parent first and never through a symlink (the collector
// resolved them), so only each path's last component is created, and
// never followed.
type unpacker struct {
	root string
	dirs []*entry // modes and times applied by finish, once they are filled
	made map[string]bool
	buf  []byte
}

func tarMode(e *entry) int64 {
	m := int64(e.Mode.Perm())
	if e.Type == tar.TypeDir && e.Mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// put writes e to tw and under u.root; it returns the bytes of content.
func (u *unpacker) put(tw *tar.Writer, e *entry) (int64, error) {
	if !fs.ValidPath(e.Path) || e.Path == "." { // relative, clean, no ".."
		return 0, fmt.Errorf("path outside the image")
	}
	// Only directories made here are gone through: never a symlink, which
	// could lead out of the rootfs.
	if d := path.Dir(e.Path); d != "." && !u.made[d] {
		return 0, fmt.Errorf("%s is not a directory of the image, or comes later", d)
	}
	dst := filepath.Join(u.root, filepath.FromSlash(e.Path))
	hdr := &tar.Header{
		Name:     e.Path,
		Typeflag: e.Type,
		Mode:     tarMode(e),
		ModTime:  epoch,
		Format:   tar.FormatPAX,
	}
	switch e.Type {
	case tar.TypeDir:
		hdr.Name += "/"
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		u.dirs = append(u.dirs, e)
		u.made[e.Path] = true
		// Writable until finish, for an unpacker not run as root.
		return 0, os.Mkdir(dst, 0o700)
	case tar.TypeSymlink:
		hdr.Linkname = e.Link
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		if err := os.Symlink(e.Link, dst); err != nil {
			return 0, err
		}
		return 0, setTime(dst)
	case tar.TypeReg:
		return u.putFile(tw, hdr, e, dst)
	}
	return 0, fmt.Errorf("entry of type %q", e.Type)
}

func (u *unpacker) putFile(tw *tar.Writer, hdr *tar.Header, e *entry, dst string) (int64, error) {
	var src io.Reader
	if e.Src == "" {
		hdr.Size = int64(len(e.Data))
		src = &byteReader{b: e.Data}
	} else {
		// O_NOFOLLOW and the fstat: what is read is the regular file the
		// collector saw, not whatever replaced it since.
		f, err := os.OpenFile(e.Src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return 0, err
		}
		if !fi.Mode().IsRegular() {
			return 0, fmt.Errorf("%s is no longer a regular file", e.Src)
		}
		hdr.Size = fi.Size()
		src = f
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	if err := tw.WriteHeader(hdr); err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(io.MultiWriter(tw, out), io.LimitReader(src, hdr.Size), u.buf)
	if err != nil {
		return n, err
	}
	if n != hdr.Size {
		return n, fmt.Errorf("file shrank while read (%d of %d bytes)", n, hdr.Size)
	}
	if err := out.Chmod(fs.FileMode(hdr.Mode)); err != nil {
		return n, err
	}
	if err := out.Close(); err != nil {
		return n, err
	}
	return n, setTime(dst)
}

// byteReader is bytes.Reader without WriterTo, so CopyBuffer uses our
// buffer and the MultiWriter sees every byte.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// finish gives directories their modes and times, deepest first (a
// directory's time changes when something is made in it).
func (u *unpacker) finish() error {
	if err := os.Chmod(u.root, 0o755); err != nil {
		return err
	}
	for _, e := range slices.Backward(u.dirs) {
		dst := filepath.Join(u.root, filepath.FromSlash(e.Path))
		mode := e.Mode.Perm() | e.Mode&fs.ModeSticky
		if err := os.Chmod(dst, mode); err != nil {
			return err
		}
		if err := setTime(dst); err != nil {
			return err
		}
	}
	return nil
}

func setTime(p string) error {
	ts := []unix.Timespec{unix.NsecToTimespec(0), unix.NsecToTimespec(0)}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}
