package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	"time"

	"github.com/pier-dev/pier/internal/fspath"
	"github.com/pier-dev/pier/internal/pier"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// Names of this prefix are AUFS's own bookkeeping (.wh..wh.plnk and
	// the like), not files of the image.
	whiteoutMeta = ".wh..wh."
)

// unpacker applies layers, in order, to one directory.
//
// Every path it touches is a path relative to root ("rel", slash-separated,
// "" for root itself) with no ".." and no symbolic link in it: names from
// the layer are cleaned and rejected if they climb out, and the directories
// they go through are resolved by resolve, the way the kernel would inside
// the machine. Only the last component is created, and never followed.
// That holds because nothing else writes under root while we do.
type unpacker struct {
	root   string // absolute
	asRoot bool   // may chown and make device nodes
	limit  int64
	size   int64 // uncompressed layer bytes read so far

	// dirs holds the latest header of each directory; their modes and
	// times are applied by finish, once nothing more is written into them
	// (until then directories stay writable, for an unpacker not run as root).
	dirs    map[string]*tar.Header
	rootHdr *tar.Header
	notes   map[string]int
	buf     []byte
}

func newUnpacker(root string, limit int64) *unpacker {
	return &unpacker{
		root:   root,
		asRoot: os.Geteuid() == 0,
		limit:  limit,
		dirs:   map[string]*tar.Header{},
		notes:  map[string]int{},
		buf:    make([]byte, 256<<10),
	}
}

// applyLayer unpacks one layer, then checks what it read against the
// layer's digests: a layer that does not match fails the whole unpack.
func (u *unpacker) applyLayer(ctx context.Context, l layerSource) error {
	rc, err := l.open()
	if err != nil {
		return err
	}
	defer rc.Close()
	stored := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(rc, stored), 64<<10)
	var stream io.Reader = br
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		// klauspost's gzip: the standard library's API, twice as fast.
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer is not valid gzip: %v: %w", err, ErrInvalid)
		}
		defer zr.Close()
		stream = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return fmt.Errorf("layer is not valid zstd: %v: %w", err, ErrInvalid)
		}
		defer zr.Close()
		stream = zr
	}
	diff := sha256.New()
	r := io.TeeReader(&limitedReader{ctx: ctx, r: stream, u: u}, diff)
	if err := u.apply(r); err != nil {
		return err
	}
	// The digests cover what follows the tar's end marker too.
	if _, err := io.CopyBuffer(io.Discard, r, u.buf); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if _, err := io.CopyBuffer(io.Discard, br, u.buf); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if err := check("uncompressed layer", diff, l.diffID.Hex); err != nil {
		return err
	}
	return check("layer", stored, l.digest.Hex)
}

func check(what string, h hash.Hash, want string) error {
	if want == "" {
		return nil
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s has digest sha256:%s, not sha256:%s: the image is corrupt: %w", what, got, want, ErrInvalid)
	}
	return nil
}

// limitedReader counts uncompressed layer bytes against the unpacker's
// limit, which bounds disk use (and decompression bombs), and stops at
// cancellation.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	u   *unpacker
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if err := l.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := l.r.Read(p)
	l.u.size += int64(n)
	if l.u.size > l.u.limit {
		return n, fmt.Errorf("the image unpacks to more than %s, the limit (Store.MaxSize): use a smaller image or raise the limit: %w", pier.Bytes(l.u.limit), ErrTooLarge)
	}
	return n, err
}

// layerState is what one layer's whiteouts need to know.
type layerState struct {
	// unpacked holds the paths this layer wrote, and their parents:
	// whiteouts hide only what lower layers wrote.
	unpacked map[string]bool
	opaque   []string // directories to empty of lower layers' files
}

func (ls *layerState) mark(rel string) {
	for p := rel; p != "" && !ls.unpacked[p]; p = parentOf(p) {
		ls.unpacked[p] = true
	}
}

func (u *unpacker) apply(r io.Reader) error {
	tr := tar.NewReader(r)
	ls := &layerState{unpacked: map[string]bool{}}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		// Insecure names are rejected by entry, with its message.
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return fmt.Errorf("read layer: %w", err)
		}
		if err := u.entry(tr, hdr, ls); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	// Opaque directories are emptied last, so that the order of the marker
	// and this layer's own entries in the tar does not matter.
	for _, d := range ls.opaque {
		if err := u.clearOpaque(d, ls.unpacked); err != nil {
			return fmt.Errorf("opaque directory %q: %w", d, err)
		}
	}
	return nil
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header, ls *layerState) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("the root of the image must be a directory: %w", ErrInvalid)
		}
		h := *hdr
		u.rootHdr = &h
		return nil
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(dir, base, ls)
	}
	parent, err := u.resolve(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(u.abs(parent), 0o755); err != nil {
		return err
	}
	rel := path.Join(parent, base)
	abs := u.abs(rel)

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := u.clear(rel, true); err != nil {
			return err
		}
		if !isDir(abs) {
			if err := os.Mkdir(abs, 0o700); err != nil {
				return err
			}
		}
		h := *hdr
		u.dirs[rel] = &h
		ls.mark(rel)
		return nil
	case tar.TypeLink:
		if err := u.hardlink(rel, hdr.Linkname); err != nil {
			return err
		}
		ls.mark(rel)
		return nil // a hard link shares its target's metadata
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := u.clear(rel, false); err != nil {
			return err
		}
		if err := u.writeFile(abs, tr); err != nil {
			return err
		}
	case tar.TypeSymlink:
		// Any target is fine, absolute included: it is only ever followed
		// by resolve here, and by the kernel inside the machine.
		if err := u.clear(rel, false); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, abs); err != nil {
			return err
		}
	case tar.TypeChar, tar.TypeBlock:
		// Skipped or not, the device hides what lower layers had there.
		if err := u.clear(rel, false); err != nil {
			return err
		}
		// Never created: a device node unpacked under the data dir would
		// be a door into the host's disks or memory for whoever reaches
		// it. A machine's devices come from its runtime spec alone.
		u.note("device nodes skipped: a machine's devices come from its runtime")
		return nil
	case tar.TypeFifo:
		if err := u.clear(rel, false); err != nil {
			return err
		}
		if err := unix.Mkfifo(abs, 0o600); err != nil {
			return err
		}
	default:
		u.note(fmt.Sprintf("entries of tar type %q skipped", hdr.Typeflag))
		return nil
	}
	ls.mark(rel)
	return u.setMeta(abs, hdr)
}

// cleanEntryName turns a name in a layer into a rel path, or refuses it.
func cleanEntryName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("empty name: %w", ErrInvalid)
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("absolute path: layers hold paths relative to the root: %w", ErrUnsafeLayer)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("path leads outside the root filesystem: %w", ErrUnsafeLayer)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// resolve returns rel with the symbolic links along it resolved the way the
// kernel resolves them inside the machine: an absolute link starts again at
// the root. A link that climbs above the root is refused rather than
// clamped: the only use of one in a layer is to try to write outside.
// Components that do not exist (yet) are kept as they are.
func (u *unpacker) resolve(rel string) (string, error) {
	cur, err := fspath.Resolve(rel, u.readlink, fspath.Options{})
	switch {
	case errors.Is(err, fspath.ErrOutside):
		return "", fmt.Errorf("%s: a symbolic link on the way leads outside the root filesystem: %w", rel, ErrUnsafeLayer)
	case errors.Is(err, fspath.ErrLoop):
		return "", fmt.Errorf("%s: too many levels of symbolic links: %w", rel, ErrInvalid)
	}
	return cur, err
}

// readlink is fspath.Readlink over the tree being unpacked.
func (u *unpacker) readlink(rel string) (string, bool, error) {
	fi, err := os.Lstat(u.abs(rel))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", false, nil
	case err != nil:
		return "", false, err
	case fi.Mode()&fs.ModeSymlink == 0:
		return "", false, nil
	}
	target, err := os.Readlink(u.abs(rel))
	return target, err == nil, err
}

func parentOf(rel string) string { return fspath.Parent(rel) }

func (u *unpacker) abs(rel string) string {
	return filepath.Join(u.root, filepath.FromSlash(rel))
}

// clear removes what is at rel, unless it is a directory and keepDir.
func (u *unpacker) clear(rel string, keepDir bool) error {
	if rel == "" {
		return fmt.Errorf("an entry would replace the root directory: %w", ErrUnsafeLayer)
	}
	fi, err := os.Lstat(u.abs(rel))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	if keepDir && fi.IsDir() {
		return nil
	}
	if fi.IsDir() {
		for d := range u.dirs {
			if d == rel || strings.HasPrefix(d, rel+"/") {
				delete(u.dirs, d)
			}
		}
	}
	return removeAll(u.abs(rel))
}

func (u *unpacker) writeFile(abs string, r io.Reader) error {
	f, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(f, r, u.buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (u *unpacker) hardlink(rel, linkname string) error {
	target, err := cleanEntryName(linkname)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", linkname, err)
	}
	if target == "" {
		return fmt.Errorf("hard link to the root directory: %w", ErrInvalid)
	}
	tdir, tbase := path.Split(target)
	tparent, err := u.resolve(strings.TrimSuffix(tdir, "/"))
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", linkname, err)
	}
	trel := path.Join(tparent, tbase)
	if trel == rel {
		return nil
	}
	fi, err := os.Lstat(u.abs(trel))
	if err != nil {
		return fmt.Errorf("hard link to %q, which is not in the image before it: %w", linkname, ErrInvalid)
	}
	if fi.IsDir() {
		return fmt.Errorf("hard link to directory %q: %w", linkname, ErrInvalid)
	}
	if err := u.clear(rel, false); err != nil {
		return err
	}
	return os.Link(u.abs(trel), u.abs(rel))
}

func (u *unpacker) whiteout(dir, base string, ls *layerState) error {
	parent, err := u.resolve(dir)
	if err != nil {
		return err
	}
	switch {
	case base == whiteoutOpaque:
		ls.opaque = append(ls.opaque, parent)
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("whiteout names no file: %w", ErrUnsafeLayer)
	}
	rel := path.Join(parent, victim)
	if ls.unpacked[rel] {
		return nil // whiteouts hide only lower layers' files
	}
	return u.clear(rel, false)
}

// clearOpaque removes from dir whatever lower layers put there.
func (u *unpacker) clearOpaque(dir string, unpacked map[string]bool) error {
	top := u.abs(dir)
	if !isDir(top) {
		return nil
	}
	return filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == top {
			return nil
		}
		rel, err := filepath.Rel(u.root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if unpacked[rel] {
			return nil
		}
		if err := u.clear(rel, false); err != nil {
			return err
		}
		if d.IsDir() {
			return filepath.SkipDir
		}
		return nil
	})
}

// setMeta gives the entry at abs the owner, mode, extended attributes and
// times of hdr, in that order: chown clears set-user-ID bits and file
// capabilities.
func (u *unpacker) setMeta(abs string, hdr *tar.Header) error {
	link := hdr.Typeflag == tar.TypeSymlink
	if u.asRoot {
		if err := os.Lchown(abs, hdr.Uid, hdr.Gid); err != nil {
			if !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.EPERM) {
				return err
			}
			u.note("ownership not kept: user or group not mapped here")
		}
	}
	if !link {
		mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if err := os.Chmod(abs, mode); err != nil {
			return err
		}
	}
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if !allowedXattr(attr) {
			// File capabilities (security.capability) would grant
			// privileges to whoever runs the file; trusted.* and other
			// security.* attributes steer the overlay and the kernel.
			u.note("extended attributes skipped: file capabilities and trusted or security attributes are not kept")
			continue
		}
		if !u.asRoot && !strings.HasPrefix(attr, "user.") {
			u.note("extended attributes skipped: not running as root")
			continue
		}
		if err := unix.Lsetxattr(abs, attr, []byte(v), 0); err != nil {
			u.note(fmt.Sprintf("extended attributes skipped: %v", err))
		}
	}
	mt := hdr.ModTime
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	at := hdr.AccessTime
	if at.IsZero() {
		at = mt
	}
	ts := []unix.Timespec{
		{Sec: at.Unix(), Nsec: int64(at.Nanosecond())},
		{Sec: mt.Unix(), Nsec: int64(mt.Nanosecond())},
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, abs, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// finish applies the directories' metadata, deepest first (a directory's
// time must be set after its entries are), all but the root's.
func (u *unpacker) finish() error {
	rels := make([]string, 0, len(u.dirs))
	for rel := range u.dirs {
		rels = append(rels, rel)
	}
	slices.Sort(rels)
	slices.Reverse(rels)
	for _, rel := range rels {
		abs := u.abs(rel)
		if !isDir(abs) {
			continue
		}
		if err := u.setMeta(abs, u.dirs[rel]); err != nil {
			return fmt.Errorf("directory %q: %w", rel, err)
		}
	}
	return nil
}

// finishRoot applies the root directory's metadata, once it has been
// renamed into place (a read-only root could not be renamed).
func (u *unpacker) finishRoot(abs string) error {
	if u.rootHdr == nil {
		return nil
	}
	return u.setMeta(abs, u.rootHdr)
}

func (u *unpacker) note(msg string) { u.notes[msg]++ }

func (u *unpacker) noteLines() []string {
	var lines []string
	for msg, n := range u.notes {
		lines = append(lines, fmt.Sprintf("%s (%d entries)", msg, n))
	}
	slices.Sort(lines)
	return lines
}

// removeAll removes a tree that may hold read-only directories, which stop
// an unpacker not run as root from removing their entries.
func removeAll(p string) error {
	err := os.RemoveAll(p)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}

// allowedXattr says which extended attributes of an image's files are
// kept: user.* only. No machine asks for file capabilities (and machines
// run with no_new_privs, under which they would not apply).
func allowedXattr(name string) bool { return strings.HasPrefix(name, "user.") }
