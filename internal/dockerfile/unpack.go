package dockerfile

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ErrUnsafeLayer: a layer of the FROM image tried to write outside its
// directory or through a symbolic link.
var ErrUnsafeLayer = errors.New("unsafe layer")

// importLayer copies the FROM image's layer l to blob (so the built image
// does not depend on its source any more) and unpacks it into dir, in
// overlayfs' format, as one lower layer of the build's stack: .wh.NAME
// entries become whiteouts (0/0 character devices), .wh..wh..opq marks
// its directory opaque. below are the layers under it, topmost first: a
// directory the layer's tar leaves implicit takes their attributes. The
// layer's content is checked against wantDiffID; *budget (bytes) bounds
// what the image may unpack to, across layers.
func importLayer(ctx context.Context, l v1.Layer, wantDiffID v1.Hash, blob, dir string, below stack, budget *int64) (*fileLayer, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.OpenFile(blob, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	stored := newHashWriter(f)
	br := bufio.NewReaderSize(io.TeeReader(rc, stored), 64<<10)
	var stream io.Reader = br
	mediaType := types.OCIUncompressedLayer
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("layer is not valid gzip: %w", err)
		}
		defer zr.Close()
		stream, mediaType = zr, types.OCILayer
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("layer is not valid zstd: %w", err)
		}
		defer zr.Close()
		stream, mediaType = zr, types.OCILayerZStd
	}
	diff := newHashWriter(io.Discard)
	u := &unpacker{dir: dir, below: below, dirs: map[string]*tar.Header{}, buf: make([]byte, 256<<10)}
	r := io.TeeReader(&budgetReader{ctx: ctx, r: stream, budget: budget}, diff)
	if err := u.apply(r); err != nil {
		return nil, err
	}
	// The digests cover what follows the tar's end marker too.
	if _, err := io.CopyBuffer(io.Discard, r, u.buf); err != nil {
		return nil, err
	}
	if _, err := io.CopyBuffer(io.Discard, br, u.buf); err != nil {
		return nil, err
	}
	if err := u.finish(); err != nil {
		return nil, err
	}
	if got := diff.sum(); got != wantDiffID {
		return nil, fmt.Errorf("layer content has digest %s, but the image's config says %s: the image is corrupt", got, wantDiffID)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	return &fileLayer{path: blob, digest: stored.sum(), diffID: wantDiffID, size: stored.n, mediaType: mediaType}, nil
}

// budgetReader counts uncompressed bytes against the build's budget (a
// bound on disk use and on decompression bombs) and stops at cancellation.
type budgetReader struct {
	ctx    context.Context
	r      io.Reader
	budget *int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := b.r.Read(p)
	*b.budget -= int64(n)
	if *b.budget < 0 {
		return n, errors.New("the FROM image unpacks to more than the build allows (Options.MaxSize)")
	}
	return n, err
}

// unpacker writes one layer's entries into its own directory. Entries go
// to their literal paths (overlayfs merges the layers, not us), so nothing
// is resolved through lower layers; within the layer, a path through a
// symbolic link or a file is refused.
type unpacker struct {
	dir   string
	below stack
	dirs  map[string]*tar.Header // directory metadata, applied by finish
	buf   []byte
}

func (u *unpacker) abs(rel string) string { return filepath.Join(u.dir, filepath.FromSlash(rel)) }

func (u *unpacker) apply(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return fmt.Errorf("read layer: %w", err)
		}
		if err := u.entry(tr, hdr); err != nil {
			return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
}

func cleanName(name string) (string, error) {
	if path.IsAbs(name) {
		return "", fmt.Errorf("absolute path: %w", ErrUnsafeLayer)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("path leads outside the root: %w", ErrUnsafeLayer)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		if hdr.Typeflag == tar.TypeDir {
			h := *hdr
			u.dirs[""] = &h
		}
		return nil
	}
	parent, base := path.Split(rel)
	parent = strings.TrimSuffix(parent, "/")
	if err := u.mkdirs(parent); err != nil {
		return err
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			return unix.Lsetxattr(u.abs(parent), opaqueXattr, []byte("y"), 0)
		case strings.HasPrefix(base, whiteoutMeta):
			return nil
		}
		victim := strings.TrimPrefix(base, whiteoutPrefix)
		if victim == "." || victim == ".." || strings.Contains(victim, "/") {
			return fmt.Errorf("whiteout names no file: %w", ErrUnsafeLayer)
		}
		p := u.abs(path.Join(parent, victim))
		if err := u.clear(p); err != nil {
			return err
		}
		return unix.Mknod(p, unix.S_IFCHR, 0)
	}
	abs := u.abs(rel)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if fi, err := os.Lstat(abs); err != nil || !fi.IsDir() {
			if err := u.clear(abs); err != nil {
				return err
			}
			if err := os.Mkdir(abs, 0o700); err != nil {
				return err
			}
		}
		h := *hdr
		u.dirs[rel] = &h
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := u.clear(abs); err != nil {
			return err
		}
		f, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		_, err = io.CopyBuffer(f, tr, u.buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := u.clear(abs); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, abs); err != nil {
			return err
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, ErrUnsafeLayer)
		}
		tparent := parentOf(target)
		if err := u.checkParents(tparent); err != nil {
			return err
		}
		fi, err := os.Lstat(u.abs(target))
		if err != nil || fi.IsDir() {
			return fmt.Errorf("hard link to %q, which is not a file of the same layer (not supported)", hdr.Linkname)
		}
		if target == rel {
			return nil
		}
		if err := u.clear(abs); err != nil {
			return err
		}
		return os.Link(u.abs(target), abs) // shares its target's metadata
	case tar.TypeFifo:
		if err := u.clear(abs); err != nil {
			return err
		}
		if err := unix.Mkfifo(abs, 0o600); err != nil {
			return err
		}
	default:
		return nil // device nodes have no place in a build's root
	}
	return setMeta(abs, hdr)
}

// mkdirs makes rel's directories in the layer that its tar leaves
// implicit, with the attributes the layers below have for them. A path
// component that is not a directory in this layer is refused: the tar
// would write through a symbolic link.
func (u *unpacker) mkdirs(rel string) error {
	if rel == "" {
		return nil
	}
	cur := ""
	for _, part := range strings.Split(rel, "/") {
		cur = path.Join(cur, part)
		p := u.abs(cur)
		fi, err := os.Lstat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("/%s is not a directory in this layer: %w", cur, ErrUnsafeLayer)
			}
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		mode, uid, gid := u.below.dirAttrs(cur)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return nil
}

func (u *unpacker) checkParents(rel string) error {
	cur := ""
	for _, part := range strings.Split(rel, "/") {
		if part == "" {
			continue
		}
		cur = path.Join(cur, part)
		fi, err := os.Lstat(u.abs(cur))
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("/%s is not a directory in this layer: %w", cur, ErrUnsafeLayer)
		}
	}
	return nil
}

// clear removes what the layer has at abs already (a later entry wins).
func (u *unpacker) clear(abs string) error {
	fi, err := os.Lstat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		rel, _ := filepath.Rel(u.dir, abs)
		rel = filepath.ToSlash(rel)
		for d := range u.dirs {
			if d == rel || strings.HasPrefix(d, rel+"/") {
				delete(u.dirs, d)
			}
		}
	}
	return os.RemoveAll(abs)
}

// finish applies the directories' metadata, deepest first, so that their
// times stick.
func (u *unpacker) finish() error {
	rels := make([]string, 0, len(u.dirs))
	for rel := range u.dirs {
		rels = append(rels, rel)
	}
	slices.Sort(rels)
	slices.Reverse(rels)
	for _, rel := range rels {
		if err := setMeta(u.abs(rel), u.dirs[rel]); err != nil {
			return fmt.Errorf("directory %q: %w", rel, err)
		}
	}
	return nil
}

// setMeta gives an entry the owner, mode, extended attributes and times of
// hdr, in that order (chown clears set-id bits).
func setMeta(abs string, hdr *tar.Header) error {
	if err := os.Lchown(abs, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		mode := fs.FileMode(hdr.Mode & 0o777)
		if hdr.Mode&unix.S_ISUID != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&unix.S_ISGID != 0 {
			mode |= fs.ModeSetgid
		}
		if hdr.Mode&unix.S_ISVTX != 0 {
			mode |= fs.ModeSticky
		}
		if err := os.Chmod(abs, mode); err != nil {
			return err
		}
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && keepXattr(name) {
				unix.Lsetxattr(abs, name, []byte(v), 0) // best effort, as tar does
			}
		}
	}
	mt := hdr.ModTime
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, abs, ts, unix.AT_SYMLINK_NOFOLLOW)
}
