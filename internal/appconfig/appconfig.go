// Package appconfig reads and writes pier.toml, the per-app config file at an
// app's root. Decoding is strict: unknown keys and bad values are errors that
// name the key and its line.
package appconfig

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pier-dev/pier/internal/pier"
)

// FileName is the name of the config file at an app's root.
const FileName = "pier.toml"

// Config is the content of pier.toml.
type Config struct {
	// App is the app's name; commands run in this directory act on it.
	App string `toml:"app"`
	// Build overrides what pier detects.
	Build Build `toml:"build"`
	// Deploy controls how releases roll out.
	Deploy Deploy `toml:"deploy"`
	// Env holds plain (non-secret) environment variables.
	Env map[string]string `toml:"env"`
	// Checks are health checks; without any, a TCP connect on PORT is used.
	Checks []Check `toml:"checks"`
	// HTTPService controls scale to zero (names as in fly.toml).
	HTTPService HTTPService `toml:"http_service"`
	// Network controls what the app's machines may reach.
	Network Network `toml:"network"`
	// HTTP controls how the edge serves the app.
	HTTP HTTP `toml:"http"`
	// Connections are the resources the app uses; a deploy connects the
	// missing ones (the resources must exist).
	Connections []Connection `toml:"connections"`
	// Routes set timeouts and retries for calls to this app through the
	// mesh, by path prefix (the longest matching prefix wins).
	Routes []Route `toml:"routes"`
}

// Route is a mesh route policy of the app, applied to calls it receives.
type Route struct {
	// Path is a path prefix, like "/api/" or "/".
	Path string `toml:"path"`
	// Timeout bounds a call, from its arrival to the end of the answer's
	// headers (default: none). A call over it gets 504.
	Timeout string `toml:"timeout,omitempty"`
	// Retries is how many more times an idempotent request without a body
	// (GET, HEAD, OPTIONS) is tried, on another machine when there is one,
	// after a connection failure or a 502, 503 or 504 (0 to 3).
	Retries int `toml:"retries,omitempty"`
}

// Connection declares that the app uses a resource.
type Connection struct {
	// Resource is the resource's name.
	Resource string `toml:"resource"`
	// Access is read, readwrite or admin (default: the type's default);
	// call for an app.
	Access string `toml:"access,omitempty"`
	// As names the connection and prefixes its env vars (default: the
	// resource's name).
	As string `toml:"as,omitempty"`
}

// HTTP is how the edge serves the app.
type HTTP struct {
	// ForceHTTPS redirects plain-HTTP requests to HTTPS (308) when the
	// server serves HTTPS (--https-addr); ACME challenges are not redirected.
	ForceHTTPS bool `toml:"force_https,omitempty"`
}

// Network is the app's network policy.
type Network struct {
	// Outbound is "allow" (default) or "deny": whether machines may open
	// connections to the internet and the LAN.
	Outbound string `toml:"outbound,omitempty"`
}

// HTTPService controls how the app's machines follow its traffic.
type HTTPService struct {
	// AutoStopMachines is "stop" to stop idle machines, or "off" (default).
	AutoStopMachines string `toml:"auto_stop_machines,omitempty"`
	// AutoStartMachines starts machines when a request arrives and none
	// runs (default true when auto_stop_machines is "stop").
	AutoStartMachines *bool `toml:"auto_start_machines,omitempty"`
	// MinMachinesRunning is how many machines stay up when idle (default 0).
	MinMachinesRunning int `toml:"min_machines_running,omitempty"`
	// IdleTimeout is how long without requests makes a machine idle (default 5m).
	IdleTimeout string `toml:"idle_timeout,omitempty"`
}

// Build overrides detection.
type Build struct {
	// Builder is one of dockerfile, go, node, python, static, procfile.
	Builder string `toml:"builder,omitempty"`
	// Command is a shell command that builds the app (replaces the builder's).
	Command string `toml:"command,omitempty"`
	// Start is the shell command that runs the app (replaces the detected one).
	Start string `toml:"start,omitempty"`
	// Network is what build steps may reach: "default" (package
	// registries and the internet, never pier or the host's services) or
	// "none" (nothing beyond the build machine). Isolated builds only.
	Network string `toml:"network,omitempty"`
}

// Deploy controls rollout.
type Deploy struct {
	// Strategy is "rolling" (default: one machine at a time) or "immediate"
	// (all new machines at once).
	Strategy string `toml:"strategy,omitempty"`
	// WaitTimeout is how long a new machine has to pass its checks (default 60s).
	WaitTimeout string `toml:"wait_timeout,omitempty"`
	// DrainTimeout is how long in-flight requests may run on an old machine (default 30s).
	DrainTimeout string `toml:"drain_timeout,omitempty"`
}

// Check is one health check.
type Check struct {
	Type     string `toml:"type,omitempty"`     // "http" (default when path is set) or "tcp"
	Path     string `toml:"path,omitempty"`     // for http: the path to GET
	Interval string `toml:"interval,omitempty"` // default 2s
	Timeout  string `toml:"timeout,omitempty"`  // default 2s
}

// Builders are the builder names pier knows.
var Builders = []string{"dockerfile", "go", "node", "python", "static", "procfile"}

// Error is a problem in pier.toml at a line (0 when unknown).
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key != "" {
		return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, e.Msg)
}

// Load reads dir/pier.toml. It returns (nil, nil) when there is none.
func Load(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return Parse(FileName, b)
}

// Parse decodes and validates a pier.toml document.
func Parse(name string, b []byte) (*Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) && len(strict.Errors) > 0 {
			de := strict.Errors[0]
			row, _ := de.Position()
			return nil, &Error{File: name, Line: row, Key: strings.Join(de.Key(), "."), Msg: "unknown key (known: app, [build] builder/command/start/network, [deploy] strategy/wait_timeout/drain_timeout, [env], [[checks]] type/path/interval/timeout, [http_service] auto_stop_machines/auto_start_machines/min_machines_running/idle_timeout, [network] outbound, [http] force_https, [[connections]] resource/access/as)"}
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, &Error{File: name, Line: row, Key: strings.Join(de.Key(), "."), Msg: de.Error()}
		}
		return nil, &Error{File: name, Msg: err.Error()}
	}
	if err := c.validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = name
			ce.Line = lineOf(b, ce.Key)
		}
		return nil, err
	}
	return &c, nil
}

var envPrefixRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)

func (c *Config) validate() error {
	bad := func(key, format string, args ...any) error {
		return &Error{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	if c.App != "" {
		if err := pier.ValidateAppName(c.App); err != nil {
			return bad("app", "%v", err)
		}
	}
	if b := c.Build.Builder; b != "" && !contains(Builders, b) {
		return bad("build.builder", "unknown builder %q (use one of %s)", b, strings.Join(Builders, ", "))
	}
	switch c.Build.Network {
	case "", "default", "none":
	default:
		return bad("build.network", "%q is not \"default\" or \"none\"", c.Build.Network)
	}
	switch c.Deploy.Strategy {
	case "", pier.StrategyRolling, pier.StrategyImmediate:
	default:
		return bad("deploy.strategy", "unknown strategy %q (use rolling or immediate)", c.Deploy.Strategy)
	}
	for key, v := range map[string]string{"deploy.wait_timeout": c.Deploy.WaitTimeout, "deploy.drain_timeout": c.Deploy.DrainTimeout} {
		if _, err := duration(v, time.Second); err != nil {
			return bad(key, "%v", err)
		}
	}
	switch c.HTTPService.AutoStopMachines {
	case "", "off", "stop":
	default:
		return bad("http_service.auto_stop_machines", "%q is not \"stop\" or \"off\"", c.HTTPService.AutoStopMachines)
	}
	switch c.Network.Outbound {
	case "", "allow", "deny":
	default:
		return bad("network.outbound", "%q is not \"allow\" or \"deny\"", c.Network.Outbound)
	}
	if c.HTTPService.MinMachinesRunning < 0 {
		return bad("http_service.min_machines_running", "must not be negative")
	}
	if _, err := duration(c.HTTPService.IdleTimeout, time.Second); err != nil {
		return bad("http_service.idle_timeout", "%v", err)
	}
	seen := map[string]bool{}
	for i, cn := range c.Connections {
		key := fmt.Sprintf("connections[%d]", i)
		if err := pier.ValidateAppName(cn.Resource); err != nil {
			return bad(key+".resource", "%q is not a resource name", cn.Resource)
		}
		if seen[cn.Resource] {
			return bad(key+".resource", "%s is declared twice", cn.Resource)
		}
		seen[cn.Resource] = true
		switch cn.Access {
		case "", "read", "readwrite", "admin", "call":
		default:
			return bad(key+".access", "%q is not read, readwrite, admin (resources) or call (apps)", cn.Access)
		}
		if cn.As != "" && !envPrefixRE.MatchString(cn.As) {
			return bad(key+".as", "%q must be letters, digits, - and _, starting with a letter", cn.As)
		}
	}
	paths := map[string]bool{}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if !strings.HasPrefix(r.Path, "/") {
			return bad(key+".path", "path %q must start with /", r.Path)
		}
		if paths[r.Path] {
			return bad(key+".path", "%s is declared twice", r.Path)
		}
		paths[r.Path] = true
		if _, err := duration(r.Timeout, time.Millisecond); err != nil {
			return bad(key+".timeout", "%v", err)
		}
		if r.Retries < 0 || r.Retries > 3 {
			return bad(key+".retries", "%d is not between 0 and 3", r.Retries)
		}
	}
	for name := range c.Env {
		if err := pier.ValidateEnvName(name); err != nil {
			return bad("env."+name, "%v", err)
		}
	}
	for i, ch := range c.Checks {
		key := fmt.Sprintf("checks[%d]", i)
		switch ch.Type {
		case "", "http", "tcp":
		default:
			return bad(key+".type", "unknown check type %q (use http or tcp)", ch.Type)
		}
		if ch.Type == "http" && ch.Path == "" {
			return bad(key+".path", "an http check needs a path, like \"/healthz\"")
		}
		if ch.Path != "" {
			if err := pier.CheckPath(ch.Path); err != nil {
				return bad(key+".path", "%v", err)
			}
		}
		for k, v := range map[string]string{"interval": ch.Interval, "timeout": ch.Timeout} {
			if _, err := duration(v, time.Millisecond); err != nil {
				return bad(key+"."+k, "%v", err)
			}
		}
	}
	return nil
}

func duration(s string, min time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use a number with a unit, like 30s)", s)
	}
	if d < min {
		return 0, fmt.Errorf("duration %q is too short (at least %s)", s, min)
	}
	return d, nil
}

// RunConfig turns the file's deploy settings into the config that travels
// with a release, with defaults filled in.
func (c *Config) RunConfig() pier.RunConfig {
	rc := pier.RunConfig{Env: c.Env, Strategy: c.Deploy.Strategy}
	if rc.Strategy == "" {
		rc.Strategy = pier.StrategyRolling
	}
	rc.WaitTimeout.Duration = orDefault(c.Deploy.WaitTimeout, 60*time.Second)
	rc.DrainTimeout.Duration = orDefault(c.Deploy.DrainTimeout, 30*time.Second)
	hs := c.HTTPService
	rc.AutoStop = hs.AutoStopMachines == "stop"
	rc.AutoStart = rc.AutoStop
	if hs.AutoStartMachines != nil {
		rc.AutoStart = *hs.AutoStartMachines
	}
	rc.MinMachines = hs.MinMachinesRunning
	rc.IdleTimeout.Duration = orDefault(hs.IdleTimeout, 5*time.Minute)
	rc.DenyOutbound = c.Network.Outbound == "deny"
	rc.ForceHTTPS = c.HTTP.ForceHTTPS
	for _, r := range c.Routes {
		t, _ := duration(r.Timeout, time.Millisecond)
		rc.Routes = append(rc.Routes, pier.Route{Path: r.Path, Timeout: pier.Duration{Duration: t}, Retries: r.Retries})
	}
	for _, ch := range c.Checks {
		pc := pier.Check{Type: ch.Type, Path: ch.Path}
		if pc.Type == "" {
			pc.Type = "tcp"
			if ch.Path != "" {
				pc.Type = "http"
			}
		}
		pc.Interval.Duration = orDefault(ch.Interval, 2*time.Second)
		pc.Timeout.Duration = orDefault(ch.Timeout, 2*time.Second)
		rc.Checks = append(rc.Checks, pc)
	}
	return rc
}

func orDefault(s string, def time.Duration) time.Duration {
	if d, err := duration(s, 0); err == nil && d > 0 {
		return d
	}
	return def
}

// New returns the text of a new pier.toml for app: the name, plus the
// settings most often changed, commented out.
func New(app string) []byte {
	return []byte(fmt.Sprintf(`# pier app config. Unknown keys are errors; see `+"`pier launch --help`"+`.
app = %q

# [build]
# builder = "go"          # dockerfile, go, node, python, static or procfile (default: detected)
# command = "make build"  # build command (default: the builder's)
# start = "./server"      # start command; the app must listen on $PORT
# network = "none"        # build steps reach nothing (default: registries and the internet)

# [deploy]
# strategy = "rolling"    # or "immediate"
# wait_timeout = "60s"    # time a new machine has to pass its checks

# [env]
# GREETING = "hello"      # plain settings; use `+"`pier secrets set`"+` for secrets

# [[checks]]
# path = "/healthz"       # HTTP check (default: TCP connect on $PORT)
# interval = "2s"

# [network]
# outbound = "deny"       # no connections beyond pier (isolated runtime only)

# [http]
# force_https = true      # redirect http:// to https:// (server with --https-addr)

# [http_service]
# auto_stop_machines = "stop"   # scale to zero when idle
# min_machines_running = 0
# idle_timeout = "5m"
`, app))
}

var headerRE = regexp.MustCompile(`^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?`)

// lineOf finds the line that sets a dotted key such as "deploy.strategy",
// "env.PORT" or "checks[1].path". It returns 0 if the key is not written out.
func lineOf(doc []byte, key string) int {
	table, leaf := "", key
	index := -1
	if i := strings.LastIndex(key, "."); i >= 0 {
		table, leaf = key[:i], key[i+1:]
	}
	if j := strings.Index(table, "["); j >= 0 {
		fmt.Sscanf(table[j:], "[%d]", &index)
		table = table[:j]
	}
	current, seen := "", -1
	for n, line := range strings.Split(string(doc), "\n") {
		if m := headerRE.FindStringSubmatch(line); m != nil {
			current = m[1]
			if current == table {
				seen++
			}
			continue
		}
		if current != table || (index >= 0 && seen != index) {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if ok && strings.Trim(strings.TrimSpace(k), `"'`) == leaf {
			return n + 1
		}
	}
	return 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
