// Package redis is the "redis" resource type: a Redis server that pier runs
// itself (managed mode, one redis-server per resource, run as an
// unprivileged user by the daemon package) or an existing Redis 7+ server
// that pier administers through an admin URL (external mode).
//
// A connection is an ACL user of its own, limited to the keys and pub/sub
// channels under "<app>:" and to a command set that leaves out everything
// in @admin and @dangerous, so one app can neither read another's data nor
// disturb the server (FLUSHALL, CONFIG, DEBUG, SHUTDOWN, ACL are denied).
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/user"
	"sync"

	"github.com/pier-dev/pier/internal/resources"
)

// Config configures the driver. Zero fields get the defaults documented on
// them in New.
type Config struct {
	// Binary is the redis-server executable (default: redis-server on PATH,
	// else /usr/bin/redis-server).
	Binary string
	// User is the OS account managed servers run as when pier runs as root
	// (default "redis" if that account exists, else "nobody"). When pier
	// does not run as root, servers run as pier's own user and User is
	// ignored.
	User string
	// Log receives the driver's logs (default: slog.Default()).
	Log *slog.Logger
}

// Driver provisions and administers redis resources.
type Driver struct {
	cfg Config

	// mu guards locks, one per managed resource directory: the daemon
	// package checks for a running server and then starts one, so two
	// overlapping starts (a periodic Start during Provision) must not race.
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// lock serialises the lifecycle calls of one managed resource.
func (d *Driver) lock(inst resources.Instance) (unlock func()) {
	d.mu.Lock()
	l, ok := d.locks[inst.Dir]
	if !ok {
		l = new(sync.Mutex)
		d.locks[inst.Dir] = l
	}
	d.mu.Unlock()
	l.Lock()
	return l.Unlock
}

var _ resources.Driver = (*Driver)(nil)

// New returns a driver with cfg's defaults filled in.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "/usr/bin/redis-server"
		if p, err := exec.LookPath("redis-server"); err == nil {
			cfg.Binary = p
		}
	}
	switch {
	case os.Getuid() != 0:
		cfg.User = ""
	case cfg.User == "":
		cfg.User = "nobody"
		if _, err := user.Lookup("redis"); err == nil {
			cfg.User = "redis"
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Driver{cfg: cfg, locks: map[string]*sync.Mutex{}}
}

// Config returns the driver's configuration with defaults filled in.
func (d *Driver) Config() Config { return d.cfg }

var schema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "admin_url": {
      "type": "string",
      "pattern": "^rediss?://",
      "description": "Use an existing Redis 7+ server instead of running one: redis://user:password@host:port of a user allowed to run ACL commands (ACL SETUSER, DELUSER, SAVE). The server should have an aclfile so the users pier creates survive its restart. The other parameters then do not apply."
    },
    "maxmemory_mb": {
      "type": "integer",
      "minimum": 8,
      "maximum": 65536,
      "default": 64,
      "description": "Memory limit of a managed server, in MiB."
    },
    "maxclients": {
      "type": "integer",
      "minimum": 10,
      "maximum": 10000,
      "default": 1000,
      "description": "Most client connections a managed server accepts, from all its connected apps together."
    },
    "maxmemory_policy": {
      "type": "string",
      "enum": ["noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"],
      "default": "noeviction",
      "description": "What a managed server does when maxmemory is reached: refuse writes (noeviction) or evict keys (for caches)."
    },
    "persistence": {
      "type": "string",
      "enum": ["aof", "rdb", "none"],
      "default": "aof",
      "description": "How a managed server keeps data across restarts: append-only file (every write, fsync each second), periodic snapshots, or not at all (a cache)."
    }
  }
}`)

// Info describes the redis type.
func (d *Driver) Info() resources.TypeInfo {
	return resources.TypeInfo{
		Name:         "redis",
		Description:  "Redis key-value store; each connected app gets its own ACL user limited to keys and channels prefixed \"<app>:\"",
		Schema:       schema,
		Provides:     []string{"host", "port", "user", "password", "url", "key_prefix"},
		Access:       []resources.Access{resources.ReadWrite, resources.Read},
		Conventional: map[string]string{"REDIS_URL": "url"},
	}
}

// params are an instance's parameters, typed.
type params struct {
	AdminURL    string
	MaxMemMB    int64
	MaxClients  int64
	Policy      string
	Persistence string
}

// parseParams reads inst.Params. The registry has validated them and filled
// defaults, but numbers may arrive as float64, json.Number or int64
// depending on where they came from.
func parseParams(p map[string]any) (params, error) {
	out := params{MaxMemMB: 64, MaxClients: 1000, Policy: "noeviction", Persistence: "aof"}
	if v, ok := p["admin_url"].(string); ok {
		out.AdminURL = v
	}
	if v, ok := p["maxmemory_policy"].(string); ok && v != "" {
		out.Policy = v
	}
	if v, ok := p["persistence"].(string); ok && v != "" {
		out.Persistence = v
	}
	if v, ok := p["maxmemory_mb"]; ok && v != nil {
		n, err := toInt(v)
		if err != nil {
			return out, fmt.Errorf("parameter maxmemory_mb: %w", err)
		}
		out.MaxMemMB = n
	}
	if v, ok := p["maxclients"]; ok && v != nil {
		n, err := toInt(v)
		if err != nil {
			return out, fmt.Errorf("parameter maxclients: %w", err)
		}
		out.MaxClients = n
	}
	return out, nil
}

var errNotInt = errors.New("not a whole number")

func toInt(v any) (int64, error) {
	switch n := v.(type) {
	case int:
		return int64(n), nil
	case int64:
		return n, nil
	case float64:
		if n != math.Trunc(n) {
			return 0, fmt.Errorf("%v: %w", n, errNotInt)
		}
		return int64(n), nil
	case json.Number:
		i, err := n.Int64()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", n, errNotInt)
		}
		return i, nil
	}
	return 0, fmt.Errorf("%v (%T): %w", v, v, errNotInt)
}

// Provision starts a managed server or checks an external one.
func (d *Driver) Provision(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	p, err := parseParams(inst.Params)
	if err != nil {
		return nil, err
	}
	if p.AdminURL != "" {
		return d.provisionExternal(ctx, inst)
	}
	defer d.lock(inst)()
	return d.provisionManaged(ctx, inst, p)
}

// Start starts a managed server that is not running.
func (d *Driver) Start(ctx context.Context, inst resources.Instance) error {
	if isExternal(inst) {
		return nil
	}
	defer d.lock(inst)()
	return d.startManaged(ctx, inst)
}

// Stop stops a managed server, keeping its data.
func (d *Driver) Stop(ctx context.Context, inst resources.Instance) error {
	if isExternal(inst) {
		return nil
	}
	defer d.lock(inst)()
	return d.stopManaged(ctx, inst)
}

// Destroy stops a managed server and deletes its data, or removes the ACL
// users pier created on an external server.
func (d *Driver) Destroy(ctx context.Context, inst resources.Instance) error {
	if isExternal(inst) {
		return d.destroyExternal(ctx, inst)
	}
	defer d.lock(inst)()
	return d.destroyManaged(ctx, inst)
}

func isExternal(inst resources.Instance) bool {
	s, _ := inst.Params["admin_url"].(string)
	return s != ""
}
