package pier

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// CheckPath validates an HTTP health check's path: an absolute path on the
// machine's own address, with an optional query, and nothing that could
// name another host ("@host:port/...", "//host/...", a scheme) or split
// the request line (spaces, control characters).
func CheckPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q must start with /", p)
	case strings.HasPrefix(p, "//"):
		return fmt.Errorf("path %q must not start with // (it would name a host)", p)
	case strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return fmt.Errorf("path %q must not hold spaces or control characters", p)
	case strings.Contains(p, "#"):
		return fmt.Errorf("path %q must not hold a fragment (#)", p)
	}
	if _, err := url.ParseRequestURI(p); err != nil {
		return fmt.Errorf("path %q is not a valid request path: %w", p, err)
	}
	return nil
}

// CheckURL is the URL an HTTP check of path asks for on hostport: the host
// is always hostport, whatever path holds.
func CheckURL(hostport, path string) (*url.URL, error) {
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	ref, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, err
	}
	if ref.Host != "" || ref.User != nil || ref.Scheme != "" {
		return nil, errors.New("check path names a host")
	}
	return &url.URL{Scheme: "http", Host: hostport, Path: ref.Path, RawPath: ref.RawPath, RawQuery: ref.RawQuery}, nil
}
