package certs

import (
	"strings"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

func TestValidateDomain(t *testing.T) {
	tests := []struct {
		name, server string
		want         string // substring of the error; "" = valid
	}{
		{"www.example.com", "localhost", ""},
		{"example.com", "apps.example.com", ""},
		{"a-b.c0.example.org", "localhost", ""},
		{"xn--bcher-kva.example", "localhost", ""},
		{"www.example.test", "localhost", ""},
		{"", "localhost", "give a domain name"},
		{"*.example.com", "localhost", "wildcard"},
		{"www.*.example.com", "localhost", "wildcard"},
		{"192.0.2.1", "localhost", "IP address"},
		{"::1", "localhost", "IP address"},
		{"[2001:db8::1]", "localhost", "IP address"},
		{"https://www.example.com", "localhost", "without scheme"},
		{"www.example.com:443", "localhost", "without scheme"},
		{"www.example.com/path", "localhost", "without scheme"},
		{"example", "localhost", "needs a dot"},
		{"localhost", "example.com", "needs a dot"},
		{"www..example.com", "localhost", "empty label"},
		{".example.com", "localhost", "empty label"},
		{"-www.example.com", "localhost", "starts or ends with a dash"},
		{"www-.example.com", "localhost", "starts or ends with a dash"},
		{"www_x.example.com", "localhost", "letters, digits and dashes"},
		{"bücher.example", "localhost", "punycode"},
		{strings.Repeat("a", 64) + ".example.com", "localhost", "longer than 63"},
		{strings.Repeat("abcdefghi.", 26) + "com", "localhost", "longer than 253"},
		{"example.123", "localhost", "all digits"},
		{"web.localhost", "localhost", "server's own names"},
		{"a.b.localhost", "localhost", "server's own names"},
		{"apps.example.com", "apps.example.com", "server's own names"},
		{"web.apps.example.com", "apps.example.com", "server's own names"},
		{"web.apps.example.com", "Apps.Example.com.", "server's own names"},
		{"otherapps.example.com", "apps.example.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+"@"+tt.server, func(t *testing.T) {
			err := ValidateDomain(tt.name, tt.server)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if pier.KindOf(err) != pier.Invalid {
				t.Errorf("kind %v, want Invalid", pier.KindOf(err))
			}
		})
	}
}

func TestNormalizeDomain(t *testing.T) {
	for in, want := range map[string]string{"WWW.Example.COM.": "www.example.com", " a.b ": "a.b", "x.y": "x.y"} {
		if got := NormalizeDomain(in); got != want {
			t.Errorf("NormalizeDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsLocalDomain(t *testing.T) {
	for d, want := range map[string]bool{"localhost": true, "dev.localhost": true, "pier.test": true, "LOCALHOST.": true,
		"example.com": false, "localhost.example.com": false, "mytest": false, "test.example": false} {
		if got := IsLocalDomain(d); got != want {
			t.Errorf("IsLocalDomain(%q) = %v, want %v", d, got, want)
		}
	}
}
