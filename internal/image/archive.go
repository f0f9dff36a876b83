package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// tarFS reads the files of an uncompressed tar archive in place: one pass
// over its headers (seeking past contents) finds where each file lies, so
// that reading index.json or manifest.json of a multi-gigabyte archive does
// not read its layers, and layers are read straight from the archive.
type tarFS struct {
	path    string
	f       *os.File
	entries map[string]*tarEntry
}

type tarEntry struct {
	name      string
	off, size int64
	mode      fs.FileMode
	mtime     time.Time
	symlink   string // target of a symbolic link, as a path in the archive
	hardlink  string // target of a hard link, as a path in the archive
}

var _ fs.FS = (*tarFS)(nil)

func openTarFS(p, transport string) (*tarFS, error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: check the path: %w", p, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	t := &tarFS{path: p, f: f, entries: map[string]*tarEntry{}}
	if err := t.scan(transport); err != nil {
		f.Close()
		return nil, err
	}
	return t, nil
}

func (t *tarFS) scan(transport string) error {
	fi, err := t.f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if transport == TransportOCIArchive {
			return fmt.Errorf("%s is a directory: for an OCI layout directory write oci:%s: %w", t.path, t.path, ErrBadRef)
		}
		return fmt.Errorf("%s is a directory, not a `docker save` tarball: %w", t.path, ErrBadRef)
	}
	var magic [4]byte
	if n, _ := io.ReadFull(t.f, magic[:]); n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		return fmt.Errorf("%s is gzip-compressed: decompress it first (gunzip -k %s) and use the .tar: %w", t.path, t.path, ErrInvalid)
	} else if n == 4 && magic == [4]byte{0x28, 0xb5, 0x2f, 0xfd} {
		return fmt.Errorf("%s is zstd-compressed: decompress it first (zstd -d %s) and use the .tar: %w", t.path, t.path, ErrInvalid)
	}
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	// tar.Reader reads headers straight from the file and skips contents by
	// seeking, so right after Next the file offset is where contents start.
	tr := tar.NewReader(t.f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if errors.Is(err, tar.ErrInsecurePath) {
			continue // never looked up: layout paths are relative
		}
		if err != nil {
			return fmt.Errorf("%s is not a readable tar archive: %v: %w", t.path, err, ErrInvalid)
		}
		n := cleanArchivePath(hdr.Name)
		e := &tarEntry{name: n, size: hdr.Size, mode: hdr.FileInfo().Mode(), mtime: hdr.ModTime}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			if e.off, err = t.f.Seek(0, io.SeekCurrent); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if path.IsAbs(hdr.Linkname) {
				e.symlink = cleanArchivePath(hdr.Linkname)
			} else {
				e.symlink = cleanArchivePath(path.Join(path.Dir(n), hdr.Linkname))
			}
		case tar.TypeLink:
			e.hardlink = cleanArchivePath(hdr.Linkname)
		default:
			continue
		}
		t.entries[n] = e
	}
}

// cleanArchivePath turns a name in an archive into a valid fs.FS path.
func cleanArchivePath(n string) string {
	return strings.TrimPrefix(path.Clean("/"+n), "/")
}

// Open opens the named file, following links inside the archive.
func (t *tarFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	n := name
	for hops := 0; ; hops++ {
		e, ok := t.entries[n]
		if !ok || hops > 16 {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		switch {
		case e.symlink != "":
			n = e.symlink
		case e.hardlink != "":
			n = e.hardlink
		default:
			return &tarFile{SectionReader: io.NewSectionReader(t.f, e.off, e.size), e: e}, nil
		}
	}
}

// Close closes the archive; files opened from it can no longer be read.
func (t *tarFS) Close() error { return t.f.Close() }

type tarFile struct {
	*io.SectionReader
	e *tarEntry
}

func (f *tarFile) Stat() (fs.FileInfo, error) { return tarFileInfo{f.e}, nil }
func (f *tarFile) Close() error               { return nil }

type tarFileInfo struct{ e *tarEntry }

func (i tarFileInfo) Name() string       { return path.Base(i.e.name) }
func (i tarFileInfo) Size() int64        { return i.e.size }
func (i tarFileInfo) Mode() fs.FileMode  { return i.e.mode }
func (i tarFileInfo) ModTime() time.Time { return i.e.mtime }
func (i tarFileInfo) IsDir() bool        { return false }
func (i tarFileInfo) Sys() any           { return nil }

// chooseArchiveEntry picks the image sel names in a `docker save`
// manifest.json: "" for its only image, "@N" for the Nth, else a reference
// among the images' RepoTags.
func chooseArchiveEntry(entries []dockerArchiveEntry, where, sel string) (dockerArchiveEntry, error) {
	var all []string
	for i, e := range entries {
		if len(e.RepoTags) == 0 {
			all = append(all, "@"+strconv.Itoa(i))
		}
		all = append(all, e.RepoTags...)
	}
	list := strings.Join(all, ", ")
	if len(entries) == 0 {
		return dockerArchiveEntry{}, fmt.Errorf("%s holds no images: %w", where, ErrNotFound)
	}
	if sel == "" {
		if len(entries) == 1 {
			return entries[0], nil
		}
		return dockerArchiveEntry{}, fmt.Errorf("%s holds %d images (%s): name one with %s:REF or %s:@N: %w", where, len(entries), list, where, where, ErrNotFound)
	}
	if n, ok := strings.CutPrefix(sel, "@"); ok {
		i, err := strconv.Atoi(n)
		if err != nil || i < 0 || i >= len(entries) {
			return dockerArchiveEntry{}, fmt.Errorf("%s holds %d images: %s is out of range: %w", where, len(entries), sel, ErrNotFound)
		}
		return entries[i], nil
	}
	want, err := name.NewTag(sel)
	if err != nil {
		return dockerArchiveEntry{}, fmt.Errorf("%s: %q is not a valid repository:tag: %w", where, sel, ErrBadRef)
	}
	for _, e := range entries {
		for _, rt := range e.RepoTags {
			// Compare normalized names: alpine:3.20 is docker.io/library/alpine:3.20.
			if t, err := name.NewTag(rt); err == nil && t.Name() == want.Name() {
				return e, nil
			}
		}
	}
	return dockerArchiveEntry{}, fmt.Errorf("%s has no image tagged %s (it has %s): %w", where, sel, list, ErrNotFound)
}
