package certs

import (
	"net"
	"strings"

	"github.com/pier-dev/pier/internal/pier"
)

// NormalizeDomain lowercases name and drops a trailing dot, so that
// WWW.Example.com. and www.example.com are the same domain.
func NormalizeDomain(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

// ValidateDomain checks that name (normalized) can be a custom domain of an
// app on a server whose apps live at <app>.<serverDomain>: a DNS name of at
// least two labels, not a wildcard, an IP address or one of the server's
// own names. Errors are Invalid and say what to do instead.
func ValidateDomain(name, serverDomain string) error {
	bad := func(format string, args ...any) error { return pier.Errorf(pier.Invalid, format, args...) }
	switch {
	case name == "":
		return bad("give a domain name, like www.example.com")
	case strings.Contains(name, "*"):
		return bad("%s is a wildcard: wildcard certificates need DNS challenges, which pier does not do; add each name, like www.example.com", name)
	case net.ParseIP(strings.Trim(name, "[]")) != nil:
		return bad("%s is an IP address: certificates are issued for domain names; point a DNS name at this server and add that", name)
	case strings.ContainsAny(name, ":/?#@ "):
		return bad("%q is not a domain name: give the bare host name, without scheme, port or path (like www.example.com)", name)
	case len(name) > 253:
		return bad("domain %s is longer than 253 characters", name)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return bad("%s is not a fully qualified domain name: it needs a dot, like www.example.com", name)
	}
	for _, l := range labels {
		if err := validLabel(l); err != "" {
			return bad("invalid domain %s: %s", name, err)
		}
	}
	if tld := labels[len(labels)-1]; strings.Trim(tld, "0123456789") == "" {
		return bad("invalid domain %s: the last label %q is all digits", name, tld)
	}
	if sd := NormalizeDomain(serverDomain); sd != "" && (name == sd || strings.HasSuffix(name, "."+sd)) {
		return bad("%s is one of the server's own names: apps are served at <app>.%s already (see `pier apps list`); custom domains are names outside %s", name, sd, sd)
	}
	return nil
}

// validLabel returns what is wrong with one DNS label, or "".
func validLabel(l string) string {
	if l == "" {
		return "empty label (two dots in a row, or a leading dot)"
	}
	if len(l) > 63 {
		return "label " + l + " is longer than 63 characters"
	}
	for _, r := range l {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
		case r > 127:
			return "label " + l + " is not ASCII: give internationalized names in their xn-- (punycode) form"
		default:
			return "label " + l + " has " + string(r) + "; use letters, digits and dashes"
		}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return "label " + l + " starts or ends with a dash"
	}
	return ""
}

// IsLocalDomain reports whether the server's domain is a local one
// (localhost, *.localhost, *.test), whose names no public CA can certify:
// the HTTPS edge serves them with certificates from pier's own CA.
func IsLocalDomain(domain string) bool {
	d := NormalizeDomain(domain)
	return d == "localhost" || strings.HasSuffix(d, ".localhost") || d == "test" || strings.HasSuffix(d, ".test")
}
