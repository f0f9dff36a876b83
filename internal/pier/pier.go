// Package pier holds the domain types shared by every part of pier: apps,
// releases, machines, events and the error kinds that the API maps to HTTP
// statuses. It imports nothing of ours.
package pier

import (
	"fmt"
	"regexp"
	"time"
)

// App is a named service built from source; it is made of machines running
// its current release.
type App struct {
	Name      string    `json:"name"`
	Count     int       `json:"count"`             // desired number of machines
	Release   int       `json:"release,omitempty"` // current release version; 0 before the first deploy
	CreatedAt time.Time `json:"created_at"`
}

// Release is an immutable, numbered build plus config of an app.
type Release struct {
	App         string    `json:"app"`
	Version     int       `json:"version"`
	BuildID     string    `json:"build_id"`
	Builder     string    `json:"builder"`
	Start       string    `json:"start"` // shell command run in the build's directory
	Config      RunConfig `json:"config"`
	Status      string    `json:"status"` // see Release* constants
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
	// Image is the release's OCI image; zero for releases built before
	// pier made images, or on a server that runs apps as host processes.
	Image ReleaseImage `json:"image,omitzero"`
}

// ReleaseImage is what a release records of its image.
type ReleaseImage struct {
	Digest string `json:"digest,omitempty"` // manifest digest, sha256:...
	Size   int64  `json:"size,omitempty"`   // compressed bytes of its layers
	// Lowers are the ids of the read-only layer directories pier keeps
	// for it besides the app itself (its base, pier's file server),
	// topmost first.
	Lowers []string `json:"lowers,omitempty"`
	// Run says how to run an image that is not laid out as pier's own
	// builders lay theirs (a Dockerfile's): nil for those.
	Run *ImageRun `json:"run,omitempty"`
}

// ImageRun is what a release takes from its image's config to run it.
type ImageRun struct {
	Cmd     []string `json:"cmd"` // ENTRYPOINT then CMD
	Env     []string `json:"env,omitempty"`
	WorkDir string   `json:"workdir,omitempty"`
	User    string   `json:"user,omitempty"`
	Port    int      `json:"port,omitempty"` // the lowest EXPOSEd TCP port; 0: 8080
}

// Release statuses.
const (
	ReleasePending = "pending" // created, not yet rolled out
	ReleaseActive  = "active"  // the one being served
	ReleaseFailed  = "failed"  // its deploy was aborted
	ReleaseRetired = "retired" // was active; replaced by a later deploy
)

// Deploy strategies.
const (
	StrategyRolling   = "rolling"
	StrategyImmediate = "immediate"
)

// RunConfig is the part of pier.toml that travels with a release.
type RunConfig struct {
	Env          map[string]string `json:"env,omitempty"`
	Checks       []Check           `json:"checks,omitempty"`
	Strategy     string            `json:"strategy"`
	WaitTimeout  Duration          `json:"wait_timeout"`  // how long a new machine has to become healthy
	DrainTimeout Duration          `json:"drain_timeout"` // how long in-flight requests may take to finish
	// Scale to zero: with AutoStop, machines beyond MinMachines stop after
	// IdleTimeout without requests; with AutoStart, a request to an app
	// with no running machine starts them again.
	AutoStop    bool     `json:"auto_stop,omitempty"`
	AutoStart   bool     `json:"auto_start,omitempty"`
	MinMachines int      `json:"min_machines_running,omitempty"`
	IdleTimeout Duration `json:"idle_timeout,omitempty"`
	// DenyOutbound cuts the app's machines off from networks beyond pier
	// (needs an isolating runtime).
	DenyOutbound bool `json:"deny_outbound,omitempty"`
	// ForceHTTPS redirects the app's plain-HTTP requests to HTTPS when the
	// edge serves HTTPS.
	ForceHTTPS bool `json:"force_https,omitempty"`
	// Routes are the timeouts and retries of calls to the app through the
	// mesh.
	Routes []Route `json:"routes,omitempty"`
}

// Route is a mesh route policy: calls whose path starts with Path get
// Timeout (0: none) and Retries (idempotent requests without a body).
type Route struct {
	Path    string   `json:"path"`
	Timeout Duration `json:"timeout,omitempty"`
	Retries int      `json:"retries,omitempty"`
}

// Check is a health check of a machine. Type "tcp" connects to PORT; "http"
// sends GET Path and expects a 2xx or 3xx answer.
type Check struct {
	Type     string   `json:"type"`
	Path     string   `json:"path,omitempty"`
	Interval Duration `json:"interval"`
	Timeout  Duration `json:"timeout"`
}

// Duration is a time.Duration that reads and writes as "1.5s" in JSON.
type Duration struct{ time.Duration }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (use a number with a unit, like 5s or 200ms)", b)
	}
	d.Duration = v
	return nil
}

// Machine is one running instance of an app's release.
type Machine struct {
	ID        string    `json:"id"`
	App       string    `json:"app"`
	Release   int       `json:"release"`
	State     string    `json:"state"` // see Machine* constants
	Healthy   bool      `json:"healthy"`
	Addr      string    `json:"addr,omitempty"`
	PID       int       `json:"pid,omitempty"`
	Restarts  int       `json:"restarts"`
	StartedAt time.Time `json:"started_at"`
}

// Machine states, named as in the Fly Machines API.
const (
	MachineStarting  = "starting"
	MachineStarted   = "started"
	MachineStopping  = "stopping"
	MachineStopped   = "stopped"
	MachineDestroyed = "destroyed"
)

// Event is one entry of the append-only history.
type Event struct {
	ID      int64     `json:"id"`
	App     string    `json:"app"`
	Type    string    `json:"type"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// SecretInfo describes a secret without revealing it.
type SecretInfo struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	UpdatedAt time.Time `json:"updated_at"`
}

// LogLine is one line an app's machine (or its build) wrote.
type LogLine struct {
	Time    time.Time `json:"time"`
	App     string    `json:"app"`
	Machine string    `json:"machine"` // machine id, or "build"
	Stream  string    `json:"stream"`  // stdout or stderr
	Line    string    `json:"line"`
}

var appNameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateAppName checks that name can be a DNS label, since apps are served
// at <name>.<domain>.
func ValidateAppName(name string) error {
	if !appNameRE.MatchString(name) {
		return Errorf(Invalid, "invalid app name %q: use 1-63 lowercase letters, digits and dashes, starting with a letter and not ending with a dash", name)
	}
	return nil
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidateEnvName checks a variable name used for env and secrets.
func ValidateEnvName(name string) error {
	if !envNameRE.MatchString(name) {
		return Errorf(Invalid, "invalid variable name %q: use letters, digits and underscores, not starting with a digit", name)
	}
	if name == "PORT" || len(name) > 5 && name[:5] == "PIER_" {
		return Errorf(Invalid, "variable name %q is reserved by pier", name)
	}
	return nil
}
