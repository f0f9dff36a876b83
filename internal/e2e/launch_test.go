package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLaunchEveryBuilder launches one sample app per builder and checks each
// answers through the edge proxy.
func TestLaunchEveryBuilder(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		tests := []struct {
			sample, builder, want string
			tools                 []string
		}{
			{"go", "go", "hello from go", []string{"go"}},
			{"node", "node", "hello from node", []string{"node"}},
			{"node-dep", "node", "is-number(42)=true", []string{"node", "npm"}},
			{"python", "python", "hello from python", []string{"python3"}},
			{"static", "static", "hello from static", nil},
			{"procfile", "procfile", "hello from procfile", []string{"python3"}},
		}
		for _, tt := range tests {
			t.Run(tt.sample, func(t *testing.T) {
				need(t, tt.tools...)
				dir := copyApp(t, tt.sample)
				app := "s-" + tt.sample
				out, err := s.pier("launch", dir, "--name", app, "--yes")
				if err != nil {
					t.Fatalf("launch: %v\n%s", err, out)
				}
				for _, want := range []string{"Detected a " + tt.builder + " app", "is live at http://" + app + ".localhost:"} {
					if !strings.Contains(out, want) {
						t.Errorf("launch output lacks %q:\n%s", want, out)
					}
				}
				s.mustGet(app, "/", tt.want)
				cfg, err := os.ReadFile(filepath.Join(dir, "pier.toml"))
				if err != nil || !strings.Contains(string(cfg), `app = "`+app+`"`) {
					t.Errorf("pier.toml = %q, %v", cfg, err)
				}
			})
		}
		t.Run("static site hides dot files", func(t *testing.T) {
			if code, body, _ := s.get("s-static", "/.env"); code != 404 || strings.Contains(body, "SECRET-DOTFILE") {
				t.Errorf("GET /.env = %d %q; want 404", code, body)
			}
		})
		t.Run("build output streamed and logged", func(t *testing.T) {
			logs := s.mustPier("logs", "-a", "s-go", "-n", "200")
			if !strings.Contains(logs, "[build] $ go build") || !strings.Contains(logs, "listening on") {
				t.Errorf("logs lack build and app output:\n%s", logs)
			}
		})
		t.Run("apps list", func(t *testing.T) {
			out := s.mustPier("apps", "list")
			for _, tt := range tests {
				if !strings.Contains(out, "s-"+tt.sample) {
					t.Errorf("apps list lacks s-%s:\n%s", tt.sample, out)
				}
			}
		})
	})
}

// TestBadInputChangesNothing checks that bad input gets a clear error and
// leaves no app, release or pier.toml behind.
func TestBadInputChangesNothing(t *testing.T) {
	s := startServer(t)
	empty := t.TempDir()
	writeFile(t, filepath.Join(empty, "README"), "nothing to run here\n")
	badKey := copyApp(t, "go")
	writeFile(t, filepath.Join(badKey, "pier.toml"), "app = \"badkey\"\n\n[deploy]\nstratgy = \"rolling\"\n")

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"nothing detectable", []string{"launch", empty, "--name", "empty", "--yes"}, "no app detected in " + empty + ": add a Dockerfile, go.mod, package.json"},
		{"invalid app name", []string{"launch", copyApp(t, "go"), "--name", "Bad_Name", "--yes"}, `invalid app name "Bad_Name"`},
		{"unknown pier.toml key", []string{"launch", badKey, "--yes"}, "pier.toml:4: deploy.stratgy: unknown key"},
		{"no --yes without a terminal", []string{"launch", copyApp(t, "go"), "--name", "prompted"}, "pass --yes"},
		{"unknown app", []string{"status", "-a", "ghost"}, `app "ghost" not found`},
		{"bad scale", []string{"scale", "count", "many", "-a", "ghost"}, `count "many" is not a whole number`},
		{"bad secret", []string{"secrets", "set", "NOEQUALS", "-a", "ghost"}, `"NOEQUALS" is not NAME=VALUE`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := s.pier(tt.args...)
			if err == nil {
				t.Fatalf("pier %v succeeded:\n%s", tt.args, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("pier %v said:\n%s\nwant it to contain %q", tt.args, out, tt.want)
			}
		})
	}
	if out := s.mustPier("apps", "list"); !strings.Contains(out, "no apps yet") {
		t.Errorf("bad input created apps:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(empty, "pier.toml")); err == nil {
		t.Error("launch of an undetectable directory wrote pier.toml")
	}

	t.Run("secret with reserved name is rejected whole", func(t *testing.T) {
		s.mustPier("apps", "create", "sec")
		out, err := s.pier("secrets", "set", "-a", "sec", "GOOD=1", "PORT=2")
		if err == nil || !strings.Contains(out, `"PORT" is reserved`) {
			t.Fatalf("secrets set PORT: %v\n%s", err, out)
		}
		if out := s.mustPier("secrets", "list", "-a", "sec"); !strings.Contains(out, "no secrets") {
			t.Errorf("a rejected secrets set stored some:\n%s", out)
		}
	})
}

// TestLaunchDoesNotTakeOverAnApp checks that launching a different directory
// under an existing app's name is refused, while relaunching the directory
// whose pier.toml names the app deploys a new release.
func TestLaunchDoesNotTakeOverAnApp(t *testing.T) {
	s := startServer(t)
	first := copyApp(t, "go")
	s.mustPier("launch", first, "--name", "taken", "--yes")
	out, err := s.pier("launch", copyApp(t, "static"), "--name", "taken", "--yes")
	if err == nil || !strings.Contains(out, "an app named taken already exists") {
		t.Fatalf("launch over an existing app: %v\n%s", err, out)
	}
	s.mustGet("taken", "/", "hello from go")
	out = s.mustPier("launch", first, "--yes")
	if !strings.Contains(out, "taken v2 is live") {
		t.Errorf("relaunch of the app's own directory:\n%s", out)
	}
}
