// Package machines is pier's machines API: machines created directly (as
// sandboxes or building blocks), in the shape of the Fly.io Machines API —
// config object, states, wait, exec, leases and metadata — run through an
// isolating runtime driver.
package machines

import (
	"encoding/base64"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// States, named as in the Fly Machines API.
const (
	StateCreated    = "created"
	StateStarting   = "starting"
	StateStarted    = "started"
	StateStopping   = "stopping"
	StateStopped    = "stopped"
	StateDestroying = "destroying"
	StateDestroyed  = "destroyed"
	StateFailed     = "failed"
)

// Machine is a machine as the API shows it.
type Machine struct {
	ID         string        `json:"id"`
	Name       string        `json:"name"`
	App        string        `json:"-"`
	State      string        `json:"state"`
	Region     string        `json:"region"`
	InstanceID string        `json:"instance_id"`
	PrivateIP  string        `json:"private_ip,omitempty"`
	Config     Config        `json:"config"`
	ImageRef   ImageRef      `json:"image_ref"`
	CreatedAt  time.Time     `json:"created_at"`
	UpdatedAt  time.Time     `json:"updated_at"`
	Events     []Event       `json:"events"`
	Nonce      string        `json:"nonce,omitempty"` // only on create with lease_ttl
	Lease      *Lease        `json:"-"`
	Role       *Role         `json:"-"` // set on the machines of an app's releases
	Checks     []CheckStatus `json:"checks,omitempty"`
}

// ImageRef describes the image a machine runs.
type ImageRef struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

// Event is one entry of a machine's history.
type Event struct {
	Type      string `json:"type"`   // launch, start, exit, stop, update, destroy
	Status    string `json:"status"` // the state it led to
	Source    string `json:"source"` // "user" or "pier"
	Timestamp int64  `json:"timestamp"`
	Request   *struct {
		ExitEvent *ExitEvent `json:"exit_event,omitempty"`
	} `json:"request,omitempty"`
}

// ExitEvent says how a machine's process ended.
type ExitEvent struct {
	ExitCode      int    `json:"exit_code"`
	Signal        string `json:"signal,omitempty"`
	OOMKilled     bool   `json:"oom_killed"`
	RequestedStop bool   `json:"requested_stop"`
	ExitedAt      string `json:"exited_at"`
}

// CheckStatus is the latest result of a check.
type CheckStatus struct {
	Name   string `json:"name"`
	Status string `json:"status"` // passing, critical
	Output string `json:"output,omitempty"`
}

// Config is the machine config object.
type Config struct {
	Image       string            `json:"image"`
	Env         map[string]string `json:"env,omitempty"`
	Init        Init              `json:"init,omitempty"`
	Guest       Guest             `json:"guest"`
	Services    []Service         `json:"services,omitempty"`
	Checks      map[string]Check  `json:"checks,omitempty"`
	Restart     Restart           `json:"restart"`
	AutoDestroy bool              `json:"auto_destroy,omitempty"`
	Files       []File            `json:"files,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// Init overrides the image's entrypoint and command.
type Init struct {
	Exec       []string `json:"exec,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// Guest sizes the machine.
type Guest struct {
	CPUKind  string `json:"cpu_kind,omitempty"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memory_mb"`
	// RootfsSizeMB is what the machine may write to its root filesystem
	// (0: the server's --machine-disk-mb).
	RootfsSizeMB int `json:"rootfs_size_mb,omitempty"`
}

// Service exposes a port of the machine through pier.
type Service struct {
	Protocol           string `json:"protocol,omitempty"`
	InternalPort       int    `json:"internal_port"`
	Autostop           any    `json:"autostop,omitempty"` // "off", "stop", true or false, as Fly accepts
	Autostart          *bool  `json:"autostart,omitempty"`
	MinMachinesRunning int    `json:"min_machines_running,omitempty"`
	// Checks gate the machine's place in the service's traffic (a port of
	// 0 is the internal port); without any, the internal port must accept
	// connections.
	Checks []Check `json:"checks,omitempty"`
}

// Check is a health check of a machine.
type Check struct {
	Type     string `json:"type"` // tcp or http
	Port     int    `json:"port"`
	Path     string `json:"path,omitempty"`
	Interval string `json:"interval,omitempty"`
	Timeout  string `json:"timeout,omitempty"`
}

// Restart is the restart policy.
type Restart struct {
	Policy     string `json:"policy,omitempty"` // no, always, on-failure (default)
	MaxRetries int    `json:"max_retries,omitempty"`
}

// File is a file written into the machine before it starts.
type File struct {
	GuestPath string `json:"guest_path"`
	RawValue  string `json:"raw_value"` // base64
}

// Lease is an exclusive claim on a machine, proven by its nonce.
type Lease struct {
	Nonce       string `json:"nonce"`
	ExpiresAt   int64  `json:"expires_at"`
	Owner       string `json:"owner"`
	Description string `json:"description"`
	Version     string `json:"version"`
}

// Limits on what a machine may ask for.
const (
	MaxCPUs     = 16
	MaxMemoryMB = 64 * 1024
	MinMemoryMB = 16
	MinRootfsMB = 16
	MaxRootfsMB = 1024 * 1024
)

// normalize fills defaults and validates c. Every error names the field.
func (c *Config) normalize() error {
	bad := func(field, format string, args ...any) error {
		return pier.Errorf(pier.Invalid, "invalid config.%s: %s", field, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(c.Image) == "" {
		return bad("image", "an image is required (e.g. oci:/path/to/layout:tag)")
	}
	if c.Guest.CPUs == 0 {
		c.Guest.CPUs = 1
	}
	if c.Guest.MemoryMB == 0 {
		c.Guest.MemoryMB = 256
	}
	if c.Guest.CPUKind == "" {
		c.Guest.CPUKind = "shared"
	}
	if c.Guest.CPUs < 0 || c.Guest.CPUs > MaxCPUs {
		return bad("guest.cpus", "%d is out of range (1 to %d)", c.Guest.CPUs, MaxCPUs)
	}
	if c.Guest.MemoryMB < MinMemoryMB || c.Guest.MemoryMB > MaxMemoryMB {
		return bad("guest.memory_mb", "%d is out of range (%d to %d)", c.Guest.MemoryMB, MinMemoryMB, MaxMemoryMB)
	}
	if r := c.Guest.RootfsSizeMB; r != 0 && (r < MinRootfsMB || r > MaxRootfsMB) {
		return bad("guest.rootfs_size_mb", "%d is out of range (%d to %d; 0 for the server's default)", r, MinRootfsMB, MaxRootfsMB)
	}
	for k := range c.Env {
		if err := pier.ValidateEnvName(k); err != nil {
			return bad("env", "%v", err)
		}
	}
	switch c.Restart.Policy {
	case "":
		c.Restart.Policy = "on-failure"
	case "no", "always", "on-failure":
	default:
		return bad("restart.policy", "%q is not one of no, always, on-failure", c.Restart.Policy)
	}
	if c.Restart.MaxRetries < 0 {
		return bad("restart.max_retries", "must not be negative")
	}
	for i, s := range c.Services {
		if s.InternalPort < 1 || s.InternalPort > 65535 {
			return bad(fmt.Sprintf("services[%d].internal_port", i), "%d is not a port", s.InternalPort)
		}
		if _, err := autostop(s.Autostop); err != nil {
			return bad(fmt.Sprintf("services[%d].autostop", i), "%v", err)
		}
		if s.MinMachinesRunning < 0 {
			return bad(fmt.Sprintf("services[%d].min_machines_running", i), "must not be negative")
		}
		for j, ch := range s.Checks {
			if err := ch.validate(true); err != nil {
				return bad(fmt.Sprintf("services[%d].checks[%d].%s", i, j, err.field), "%s", err.msg)
			}
		}
	}
	for name, ch := range c.Checks {
		if err := ch.validate(false); err != nil {
			return bad("checks."+name+"."+err.field, "%s", err.msg)
		}
	}
	for i, f := range c.Files {
		if !path.IsAbs(f.GuestPath) || path.Clean(f.GuestPath) != f.GuestPath || f.GuestPath == "/" {
			return bad(fmt.Sprintf("files[%d].guest_path", i), "%q must be a clean absolute file path", f.GuestPath)
		}
		if _, err := base64.StdEncoding.DecodeString(f.RawValue); err != nil {
			return bad(fmt.Sprintf("files[%d].raw_value", i), "not base64: %v", err)
		}
	}
	return nil
}

// checkError names the field of a check that is wrong.
type checkError struct{ field, msg string }

// validate checks a check; a service's check may leave its port 0 (the
// service's internal port).
func (c Check) validate(service bool) *checkError {
	if c.Type != "tcp" && c.Type != "http" {
		return &checkError{"type", fmt.Sprintf("%q is not tcp or http", c.Type)}
	}
	if c.Port < 0 || c.Port > 65535 || (c.Port == 0 && !service) {
		return &checkError{"port", fmt.Sprintf("%d is not a port", c.Port)}
	}
	if c.Type == "http" || c.Path != "" {
		if c.Path == "" {
			return &checkError{"path", "an http check needs a path, like \"/healthz\""}
		}
		if err := pier.CheckPath(c.Path); err != nil {
			return &checkError{"path", err.Error()}
		}
	}
	for field, v := range map[string]string{"interval": c.Interval, "timeout": c.Timeout} {
		if v == "" {
			continue
		}
		if d, err := time.ParseDuration(v); err != nil || d <= 0 {
			return &checkError{field, fmt.Sprintf("%q is not a duration like 10s", v)}
		}
	}
	return nil
}

// autostop reads Fly's autostop forms: "off"/false → false, "stop"/true → true.
func autostop(v any) (bool, error) {
	switch x := v.(type) {
	case nil:
		return false, nil
	case bool:
		return x, nil
	case string:
		switch x {
		case "off", "":
			return false, nil
		case "stop":
			return true, nil
		case "suspend":
			return false, fmt.Errorf("suspend is not supported; use \"stop\"")
		}
	}
	return false, fmt.Errorf("%v is not one of \"off\", \"stop\", true, false", v)
}
