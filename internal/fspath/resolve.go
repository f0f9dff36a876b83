// Package fspath resolves paths inside a root filesystem tree the way the
// kernel would inside the machine, one symbolic link at a time, without
// ever following a link on the host. The image unpacker, the Dockerfile
// executor and the source-upload extractor share it.
package fspath

import (
	"errors"
	"path"
	"strings"
)

// MaxLinks bounds the links one resolution follows, as the kernel's ELOOP.
const MaxLinks = 40

// Resolve's errors.
var (
	ErrOutside = errors.New("a symbolic link on the way climbs above the root")
	ErrLoop    = errors.New("too many levels of symbolic links")
)

// Readlink reports whether rel (slash-separated, relative to the root) is a
// symbolic link, and its target. A path that does not exist is no link.
type Readlink func(rel string) (target string, isLink bool, err error)

// Options says how the walk treats the edges.
type Options struct {
	// Clamp keeps ".." at the root at the root, as the kernel does
	// inside a chroot; without it the walk fails with ErrOutside.
	Clamp bool
	// NoFollowLast leaves a link as the last component unresolved.
	NoFollowLast bool
}

// Resolve returns rel with the links along it resolved: an absolute target
// starts again at the root. Components that do not exist are kept as they
// are. The result is relative to the root, "" for the root itself.
func Resolve(rel string, readlink Readlink, o Options) (string, error) {
	todo := strings.Split(rel, "/")
	cur := ""
	for links := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if cur == "" && !o.Clamp {
				return "", ErrOutside
			}
			cur = Parent(cur)
			continue
		}
		next := path.Join(cur, c)
		if len(todo) == 0 && o.NoFollowLast {
			cur = next
			continue
		}
		target, isLink, err := readlink(next)
		if err != nil {
			return "", err
		}
		if !isLink {
			cur = next
			continue
		}
		if links++; links > MaxLinks {
			return "", ErrLoop
		}
		if path.IsAbs(target) {
			cur = ""
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return cur, nil
}

// Parent is the directory of rel, "" for the root.
func Parent(rel string) string {
	if d := path.Dir(rel); d != "." && d != "/" {
		return d
	}
	return ""
}
