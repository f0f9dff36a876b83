// Package postgres is pier's PostgreSQL resource type. A managed resource is
// a PostgreSQL server of its own, initialised in the resource's directory and
// run detached as an unprivileged user; an external one (admin_url) is a
// database on a server someone else runs, which pier only administers.
//
// Access goes through three NOLOGIN group roles per database (read,
// readwrite, owner) that hold every privilege; the login role of a
// connection only joins one of them. Objects are owned by the owner group,
// so credentials can be revoked, backups restored and admin sessions come
// and go without changing who may do what.
package postgres

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/pier-dev/pier/internal/resources"
)

// DefaultBinDir is where Debian's postgresql-15 package puts its programs.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// adminUser is the superuser initdb creates in a managed server.
const adminUser = "pier_admin"

// Config configures the driver. Zero fields get the defaults documented on
// each.
type Config struct {
	// BinDir holds initdb, postgres, pg_dump and pg_restore. Default:
	// /usr/lib/postgresql/15/bin if it exists, else the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string
	// User is the OS account managed servers run as when pier runs as
	// root. Default "postgres". When pier is not root, servers run as
	// pier's own user and User is ignored.
	User string
	// Log receives the driver's messages. Default: slog.Default().
	Log *slog.Logger
}

// Driver is the postgres resource type.
type Driver struct {
	binDir string
	user   string // "" runs servers as pier's own user
	log    *slog.Logger
	locks  sync.Map // inst.Dir -> *sync.Mutex; see lock
}

var (
	_ resources.Driver   = (*Driver)(nil)
	_ resources.Backuper = (*Driver)(nil)
)

// New returns a driver, filling in cfg's defaults.
func New(cfg Config) *Driver {
	if cfg.BinDir == "" {
		cfg.BinDir = defaultBinDir()
	}
	if cfg.User == "" {
		cfg.User = "postgres"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	d := &Driver{binDir: cfg.BinDir, log: cfg.Log}
	if os.Geteuid() == 0 {
		d.user = cfg.User
	}
	return d
}

func defaultBinDir() string {
	if _, err := os.Stat(filepath.Join(DefaultBinDir, "postgres")); err == nil {
		return DefaultBinDir
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVersion := DefaultBinDir, -1.0
	for _, dir := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		if err == nil && v > bestVersion {
			best, bestVersion = dir, v
		}
	}
	return best
}

// bin returns the path of one of PostgreSQL's programs, or an error telling
// the user how to install it.
func (d *Driver) bin(name string) (string, error) {
	p := filepath.Join(d.binDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found at %s; install postgresql-15 (apt-get install postgresql-15) or point the postgres driver's BinDir at PostgreSQL's bin directory", name, p)
	}
	return p, nil
}

const schema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "admin_url": {
      "type": "string",
      "format": "uri",
      "description": "Administer an existing server instead of running one: a postgres:// URL of a role that may create roles (and databases)."
    },
    "database": {
      "type": "string",
      "pattern": "^[a-z_][a-z0-9_]{0,62}$",
      "description": "Database name. Default: the resource's name with - replaced by _."
    },
    "max_connections": {
      "type": "integer", "minimum": 10, "maximum": 2000, "default": 100,
      "description": "Connections the managed server accepts."
    },
    "shared_buffers_mb": {
      "type": "integer", "minimum": 16, "maximum": 65536, "default": 128,
      "description": "Memory the managed server uses for its page cache, in MiB."
    },
    "backup_schedule": {
      "enum": ["daily", "off"], "default": "daily",
      "description": "When pier backs the database up."
    },
    "backup_retention": {
      "type": "integer", "minimum": 1, "maximum": 365, "default": 7,
      "description": "How many scheduled backups to keep."
    }
  }
}`

// Info describes the postgres type.
func (d *Driver) Info() resources.TypeInfo {
	return resources.TypeInfo{
		Name:         "postgres",
		Description:  "PostgreSQL database: a server of its own run by pier, or a database on an existing server (admin_url)",
		Schema:       json.RawMessage(schema),
		Provides:     []string{"host", "port", "user", "password", "url", "database"},
		Access:       []resources.Access{resources.ReadWrite, resources.Read, resources.Admin},
		Conventional: map[string]string{"DATABASE_URL": "url"},
	}
}

// intParam reads an integer parameter, which JSON decoding may have made a
// float64 or a json.Number.
func intParam(p map[string]any, key string, def int) int {
	switch v := p[key].(type) {
	case float64:
		return int(v)
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return int(n)
		}
		if f, err := v.Float64(); err == nil {
			return int(f)
		}
	case int:
		return v
	case int64:
		return int(v)
	}
	return def
}

func stringParam(p map[string]any, key string) string {
	s, _ := p[key].(string)
	return s
}

// databaseName is the resource's database: the one recorded at Provision,
// else the database parameter, else the resource's name made an identifier.
func databaseName(inst resources.Instance) string {
	if db := inst.Admin["database"]; db != "" {
		return db
	}
	if db := stringParam(inst.Params, "database"); db != "" {
		return db
	}
	return identifier(inst.Name)
}

// identifier turns a name (of a resource, an app) into a lower-case SQL
// identifier of at most 63 bytes.
func identifier(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		s = "_" + s
	}
	return fitName(s, "")
}

// fitName joins base and suffix, shortening base (and adding a hash of it,
// so distinct bases stay distinct) when the result would pass PostgreSQL's
// 63-byte limit on names.
func fitName(base, suffix string) string {
	const max = 63
	if len(base)+len(suffix) <= max {
		return base + suffix
	}
	h := fmt.Sprintf("_%08x", fnv32(base))
	return base[:max-len(suffix)-len(h)] + h + suffix
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// serverUID returns the uid and gid managed servers run as.
func (d *Driver) serverUID() (uid, gid int, err error) {
	if d.user == "" {
		return os.Getuid(), os.Getgid(), nil
	}
	u, err := user.Lookup(d.user)
	if err != nil {
		return 0, 0, fmt.Errorf("user %s, who runs PostgreSQL servers, not found: install postgresql-15 (it creates the user) or set the postgres driver's User: %w", d.user, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}
