package fspath

import (
	"errors"
	"testing"
)

// links is a tree given by its links; every other path is a plain file or
// directory.
type links map[string]string

func (l links) readlink(rel string) (string, bool, error) {
	t, ok := l[rel]
	return t, ok, nil
}

func TestResolve(t *testing.T) {
	tree := links{"a/b": "..", "a/b/c": "..", "abs": "/etc", "loop": "loop", "up": "../.."}
	for _, tt := range []struct {
		rel  string
		o    Options
		want string
		err  error
	}{
		{"x/y", Options{}, "x/y", nil},
		{"a/b/z", Options{}, "z", nil},
		{"abs/passwd", Options{}, "etc/passwd", nil},
		{"abs", Options{NoFollowLast: true}, "abs", nil},
		{"up/x", Options{}, "", ErrOutside},
		{"up/x", Options{Clamp: true}, "x", nil},
		{"../x", Options{}, "", ErrOutside},
		{"loop/x", Options{}, "", ErrLoop},
	} {
		got, err := Resolve(tt.rel, tree.readlink, tt.o)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("Resolve(%q, %+v) = %q, %v; want %q, %v", tt.rel, tt.o, got, err, tt.want, tt.err)
		}
	}
}
