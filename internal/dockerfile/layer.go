package dockerfile

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// OCI layer whiteouts: .wh.NAME deletes NAME of the layers below;
// .wh..wh..opq in a directory hides everything the layers below have in it.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	whiteoutMeta   = ".wh..wh."
)

// fileLayer is a layer blob written under the build's work directory.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size           int64
	mediaType      types.MediaType
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

func (l *fileLayer) layer() (v1.Layer, error) { return partial.CompressedToLayer(l) }

// hashWriter counts and hashes what goes through it.
type hashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func newHashWriter(w io.Writer) *hashWriter { return &hashWriter{w: w, h: sha256.New()} }

func (h *hashWriter) Write(p []byte) (int, error) {
	n, err := h.w.Write(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashWriter) sum() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.h.Sum(nil))}
}

// writeLayer turns a layer directory in overlayfs' format (a RUN step's
// upper layer, or the files of a COPY) into a gzipped OCI layer at dst:
// overlay whiteouts become .wh. files and opaque directories get a
// .wh..wh..opq entry. Entries are sorted; owners are numeric; modes keep
// their set-id bits, as in any image (build and app machines run with
// no_new_privs, so the bits never raise privileges there). Device nodes
// and sockets are left out, as are extended attributes other than user.*
// and file capabilities. Nothing is followed: symbolic links are stored
// as links, and files are opened without following one.
func writeLayer(dir, dst string) (*fileLayer, error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	stored := newHashWriter(f)
	zw, err := gzip.NewWriterLevel(stored, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	diff := newHashWriter(zw)
	tw := tar.NewWriter(diff)
	links := map[[2]uint64]string{} // (dev, inode) of files with several names -> first name
	buf := make([]byte, 256<<10)
	err = walkSorted(dir, "", func(rel string, fi fs.FileInfo) error {
		return addEntry(tw, dir, rel, fi, links, buf)
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		os.Remove(dst)
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return &fileLayer{path: dst, digest: stored.sum(), diffID: diff.sum(), size: stored.n, mediaType: types.OCILayer}, nil
}

// walkSorted calls fn for every entry under dir/rel in lexical order,
// parents before their entries, never following symbolic links.
func walkSorted(dir, rel string, fn func(rel string, fi fs.FileInfo) error) error {
	entries, err := os.ReadDir(filepath.Join(dir, rel))
	if err != nil {
		return err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	for _, name := range names {
		r := path.Join(rel, name)
		fi, err := os.Lstat(filepath.Join(dir, r))
		if err != nil {
			return err
		}
		if err := fn(r, fi); err != nil {
			return fmt.Errorf("%s: %w", r, err)
		}
		if fi.IsDir() {
			if err := walkSorted(dir, r, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

func addEntry(tw *tar.Writer, dir, rel string, fi fs.FileInfo, links map[[2]uint64]string, buf []byte) error {
	abs := filepath.Join(dir, rel)
	st := fi.Sys().(*syscall.Stat_t)
	if isWhiteout(fi) {
		d, base := path.Split(rel)
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: d + whiteoutPrefix + base, Mode: 0o644, Format: tar.FormatPAX, ModTime: fi.ModTime()})
	}
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: fi.ModTime(),
		Format:  tar.FormatPAX,
	}
	switch {
	case fi.IsDir():
		hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(abs)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case fi.Mode().IsRegular():
		hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = rel
			}
		}
	case fi.Mode()&fs.ModeNamedPipe != 0:
		hdr.Typeflag = tar.TypeFifo
	default:
		return nil // device nodes and sockets have no place in an image
	}
	if hdr.Typeflag != tar.TypeSymlink {
		addXattrs(hdr, abs)
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		f, err := os.OpenFile(abs, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyBuffer(tw, io.LimitReader(f, hdr.Size), buf)
		if err != nil {
			return err
		}
		if n != hdr.Size {
			return fmt.Errorf("file shrank while being read")
		}
	}
	if fi.IsDir() && isOpaque(abs) {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel + "/" + whiteoutOpaque, Mode: 0o644, Format: tar.FormatPAX, ModTime: fi.ModTime()})
	}
	return nil
}

// keepXattr says which extended attributes travel in layers: user ones
// and file capabilities; never overlayfs' own (trusted.overlay.*), which
// would change how a layer stacks, nor security labels of this host.
func keepXattr(name string) bool {
	// File capabilities are not kept (see image.allowedXattr).
	return strings.HasPrefix(name, "user.")
}

func addXattrs(hdr *tar.Header, abs string) {
	sz, err := unix.Llistxattr(abs, nil)
	if err != nil || sz <= 0 {
		return
	}
	list := make([]byte, sz)
	sz, err = unix.Llistxattr(abs, list)
	if err != nil {
		return
	}
	for _, name := range strings.Split(strings.TrimRight(string(list[:sz]), "\x00"), "\x00") {
		if !keepXattr(name) {
			continue
		}
		val := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(abs, name, val)
		if err != nil {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = string(val[:n])
	}
}
