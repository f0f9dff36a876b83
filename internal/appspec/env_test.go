package appspec

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

const selfBinary = "/opt/pier/bin/pier"

func TestCommand(t *testing.T) {
	tests := []struct {
		builder, start string
		want           []string
	}{
		{"go", "./server", []string{"/bin/sh", "-c", "exec ./server"}},
		{"node", "node server.js", []string{"/bin/sh", "-c", "exec node server.js"}},
		// Shell syntax: run as written, a shell is needed.
		{"python", "python manage.py migrate && gunicorn app", []string{"/bin/sh", "-c", "python manage.py migrate && gunicorn app"}},
		{"node", "node server.js --port $PORT", []string{"/bin/sh", "-c", "node server.js --port $PORT"}},
		{"procfile", "web | tee log", []string{"/bin/sh", "-c", "web | tee log"}},
		// Static sites are served by pier itself unless they say otherwise.
		{"static", "", []string{selfBinary, "static-serve", "--dir", "."}},
		{"static", "caddy file-server", []string{"/bin/sh", "-c", "exec caddy file-server"}},
	}
	for _, tt := range tests {
		t.Run(tt.builder+" "+tt.start, func(t *testing.T) {
			if got := Command(pier.Release{Builder: tt.builder, Start: tt.start}, selfBinary); !slices.Equal(got, tt.want) {
				t.Errorf("command() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		secrets map[string]string
		want    []string // between the base and pier's own variables
	}{
		{"nothing", nil, nil, nil},
		{"release env, sorted", map[string]string{"B": "2", "A": "1"}, nil, []string{"A=1", "B=2"}},
		{"secrets, sorted", nil, map[string]string{"Z": "z", "K": "k"}, []string{"K=k", "Z=z"}},
		{"secret overrides env", map[string]string{"DB": "plain", "X": "1"}, map[string]string{"DB": "sealed"}, []string{"X=1", "DB=sealed"}},
		{"values with = and spaces", map[string]string{"Q": "a=b c"}, nil, []string{"Q=a=b c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := pier.Release{App: "web", Version: 7, Config: pier.RunConfig{Env: tt.env}}
			got := Env(r, tt.secrets)
			base := baseEnv()
			if len(got) != len(base)+len(tt.want)+2 {
				t.Fatalf("Env = %q, want base %q + %q + pier's two", got, base, tt.want)
			}
			if !slices.Equal(got[:len(base)], base) {
				t.Errorf("Env does not start with the base: %q", got)
			}
			if mid := got[len(base) : len(got)-2]; !slices.Equal(mid, tt.want) {
				t.Errorf("app variables = %q, want %q", mid, tt.want)
			}
			if tail := got[len(got)-2:]; !slices.Equal(tail, []string{"PIER_APP_NAME=web", "PIER_RELEASE_VERSION=7"}) {
				t.Errorf("pier's variables = %q, want them last", tail)
			}
			seen := map[string]bool{}
			for _, kv := range got {
				k, _, _ := strings.Cut(kv, "=")
				if seen[k] {
					t.Errorf("%s appears twice in %q", k, got)
				}
				seen[k] = true
			}
			if seen["PORT"] {
				t.Errorf("Env sets PORT, which is the driver's to choose: %q", got)
			}
		})
	}
}

func TestBaseEnvKeepsServerSettingsOut(t *testing.T) {
	t.Setenv("PIER_TOKEN", "tok-very-secret")
	t.Setenv("PIER_DATA_DIR", "/var/lib/pier")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-very-secret")
	t.Setenv("DATABASE_URL", "postgres://pier:pw@localhost/pier")
	t.Setenv("LANG", "de_DE.ISO-8859-1")
	t.Setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
	t.Setenv("HOME", "/home/pier")
	t.Setenv("TZ", "Europe/Berlin")

	got := Env(pier.Release{App: "web", Version: 1}, nil)
	allowed := map[string]bool{"LANG": true, "PATH": true, "HOME": true, "TMPDIR": true, "TZ": true,
		"PIER_APP_NAME": true, "PIER_RELEASE_VERSION": true}
	for _, kv := range got {
		k, _, _ := strings.Cut(kv, "=")
		if !allowed[k] {
			t.Errorf("machine env has %s from the server's environment", kv)
		}
		if strings.Contains(kv, "very-secret") {
			t.Errorf("machine env leaks %q", kv)
		}
	}
	for _, want := range []string{"LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/pier", "TZ=Europe/Berlin"} {
		if !slices.Contains(got, want) {
			t.Errorf("machine env %q lacks %s", got, want)
		}
	}
	if v, ok := os.LookupEnv("TMPDIR"); ok && !slices.Contains(got, "TMPDIR="+v) {
		t.Errorf("machine env %q lacks TMPDIR=%s", got, v)
	}
}
