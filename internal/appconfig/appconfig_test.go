package appconfig

import (
	"strings"
	"testing"
	"time"
)

func TestParseErrorsNameKeyAndLine(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"unknown top-level key", "app = \"web\"\ncolour = \"blue\"\n", "pier.toml:2: colour: unknown key"},
		{"unknown nested key", "app = \"web\"\n[build]\nbuilder = \"go\"\nflavour = \"x\"\n", "pier.toml:4: build.flavour: unknown key"},
		{"bad app name", "\n\napp = \"Web_1\"\n", "pier.toml:3: app: invalid app name"},
		{"bad builder", "[build]\nbuilder = \"rust\"\n", "pier.toml:2: build.builder: unknown builder \"rust\""},
		{"bad strategy", "app = \"a\"\n[deploy]\nstrategy = \"yolo\"\n", "pier.toml:3: deploy.strategy: unknown strategy"},
		{"bad duration", "[deploy]\nwait_timeout = \"soon\"\n", "pier.toml:2: deploy.wait_timeout: invalid duration"},
		{"second check path", "[[checks]]\npath = \"/ok\"\n[[checks]]\ntype = \"http\"\npath = \"health\"\n", "pier.toml:5: checks[1].path: path \"health\" must start with /"},
		{"reserved env", "[env]\nPORT = \"1\"\n", "pier.toml:2: env.PORT: "},
		{"wrong type", "app = 3\n", "pier.toml:1: app: "},
		{"syntax", "app = \"x\n", "pier.toml:1"},
		{"bad auto stop", "[http_service]\nauto_stop_machines = \"suspend\"\n", "pier.toml:2: http_service.auto_stop_machines"},
		{"negative min machines", "[http_service]\nmin_machines_running = -1\n", "pier.toml:2: http_service.min_machines_running"},
		{"bad connection access", "[[connections]]\nresource = \"db\"\n[[connections]]\nresource = \"cache\"\naccess = \"write\"\n", "pier.toml:5: connections[1].access: \"write\" is not read, readwrite, admin (resources) or call (apps)"},
		{"route without slash", "[[routes]]\npath = \"api\"\n", "pier.toml:2: routes[0].path: path \"api\" must start with /"},
		{"route bad timeout", "[[routes]]\npath = \"/\"\ntimeout = \"fast\"\n", "pier.toml:3: routes[0].timeout: invalid duration"},
		{"route too many retries", "[[routes]]\npath = \"/\"\nretries = 5\n", "pier.toml:3: routes[0].retries: 5 is not between 0 and 3"},
		{"route twice", "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/a\"\n", "pier.toml:4: routes[1].path: /a is declared twice"},
		{"connection twice", "[[connections]]\nresource = \"db\"\n[[connections]]\nresource = \"db\"\n", "pier.toml:4: connections[1].resource: db is declared twice"},
		{"connection without resource", "[[connections]]\naccess = \"read\"\n", "pier.toml: connections[0].resource"},
		{"unknown connection key", "[[connections]]\nresource = \"db\"\nrole = \"x\"\n", "pier.toml:3: connections.role: unknown key"},
		{"force_https not a bool", "app = \"web\"\n[http]\nforce_https = \"yes\"\n", "pier.toml:3: http.force_https: "},
		{"unknown http key", "[http]\nforce_http = true\n", "pier.toml:2: http.force_http: unknown key"},
		{"short idle timeout", "[http_service]\nidle_timeout = \"10ms\"\n", "pier.toml:2: http_service.idle_timeout: duration \"10ms\" is too short"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("pier.toml", []byte(tt.doc))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error = %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestRunConfigDefaults(t *testing.T) {
	c, err := Parse("pier.toml", []byte("app = \"web\"\n[env]\nGREETING = \"hi\"\n[[checks]]\npath = \"/healthz\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	rc := c.RunConfig()
	if rc.Strategy != "rolling" || rc.WaitTimeout.Duration != time.Minute || rc.DrainTimeout.Duration != 30*time.Second {
		t.Fatalf("defaults: %+v", rc)
	}
	if len(rc.Checks) != 1 || rc.Checks[0].Type != "http" || rc.Checks[0].Interval.Duration != 2*time.Second {
		t.Fatalf("checks: %+v", rc.Checks)
	}
	if rc.Env["GREETING"] != "hi" {
		t.Fatalf("env: %v", rc.Env)
	}
}

func TestScaleToZeroConfig(t *testing.T) {
	tests := []struct {
		doc                 string
		autoStop, autoStart bool
		min                 int
		idle                time.Duration
	}{
		{"", false, false, 0, 5 * time.Minute},
		{"[http_service]\nauto_stop_machines = \"stop\"\n", true, true, 0, 5 * time.Minute},
		{"[http_service]\nauto_stop_machines = \"stop\"\nauto_start_machines = false\nmin_machines_running = 1\nidle_timeout = \"30s\"\n", true, false, 1, 30 * time.Second},
	}
	for _, tt := range tests {
		c, err := Parse("pier.toml", []byte(tt.doc))
		if err != nil {
			t.Fatal(err)
		}
		rc := c.RunConfig()
		if rc.AutoStop != tt.autoStop || rc.AutoStart != tt.autoStart || rc.MinMachines != tt.min || rc.IdleTimeout.Duration != tt.idle {
			t.Errorf("%q: %+v", tt.doc, rc)
		}
	}
}

func TestNewParsesBack(t *testing.T) {
	out, err := Parse("pier.toml", New("web"))
	if err != nil {
		t.Fatalf("%v\n%s", err, New("web"))
	}
	if out.App != "web" || out.Build != (Build{}) || len(out.Checks) != 0 {
		t.Fatalf("new config: %+v", out)
	}
}

func TestConnections(t *testing.T) {
	c, err := Parse("pier.toml", []byte("app = \"web\"\n[[connections]]\nresource = \"web-db\"\nas = \"db\"\n[[connections]]\nresource = \"cache\"\naccess = \"read\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Connection{{Resource: "web-db", As: "db"}, {Resource: "cache", Access: "read"}}
	if len(c.Connections) != 2 || c.Connections[0] != want[0] || c.Connections[1] != want[1] {
		t.Errorf("connections = %+v, want %+v", c.Connections, want)
	}
}

func TestForceHTTPS(t *testing.T) {
	for doc, want := range map[string]bool{"": false, "[http]\nforce_https = true\n": true, "[http]\nforce_https = false\n": false} {
		c, err := Parse("pier.toml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.RunConfig().ForceHTTPS; got != want {
			t.Errorf("%q: ForceHTTPS = %v, want %v", doc, got, want)
		}
	}
}

func TestRoutes(t *testing.T) {
	c, err := Parse("pier.toml", []byte("app = \"api\"\n[[routes]]\npath = \"/slow/\"\ntimeout = \"30s\"\n[[routes]]\npath = \"/\"\nretries = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	rc := c.RunConfig()
	if len(rc.Routes) != 2 || rc.Routes[0].Path != "/slow/" || rc.Routes[0].Timeout.Duration != 30*time.Second || rc.Routes[1].Retries != 2 || rc.Routes[1].Timeout.Duration != 0 {
		t.Fatalf("routes = %+v", rc.Routes)
	}
}
