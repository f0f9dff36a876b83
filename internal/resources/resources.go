// Package resources is pier's type system for infrastructure: a resource is
// a typed, named piece of infrastructure (a PostgreSQL server, a Redis
// server, a bucket) created from schema-validated parameters, and a
// connection grants one app exactly the access it declares, with
// credentials made for it alone.
//
// Each type is a Driver value registered in main (internal/server), so more
// types can be added later without touching this package. Drivers live in
// sub-packages: postgres, redis, bucket.
package resources

import (
	"context"
	"encoding/json"
	"io"
	"time"
)

// Access is what a connection may do with a resource.
type Access string

// The access levels. Resource types offer a subset of read, readwrite and
// admin; call is the level of app-to-app connections.
const (
	Read      Access = "read"
	ReadWrite Access = "readwrite"
	Admin     Access = "admin"
	Call      Access = "call"
)

// TypeInfo describes a resource type: its parameters, what it provides to a
// connection (its artifact type) and the access levels it supports.
type TypeInfo struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Schema is the JSON Schema (draft 2020-12) of the parameters. Defaults
	// declared in it are filled in before a driver sees the parameters.
	Schema json.RawMessage `json:"schema"`
	// Provides are the artifact fields a connection receives, in the order
	// their env vars are listed: host, port, user, password, url, and
	// type-specific ones (database; bucket, access_key_id, ...).
	Provides []string `json:"provides"`
	// Access lists the levels a connection may ask for; the first is the
	// default.
	Access []Access `json:"access"`
	// Conventional maps the ecosystem's usual env var names, given to the
	// sole connection of this type, to artifact fields (DATABASE_URL -> url).
	Conventional map[string]string `json:"conventional,omitempty"`
}

// Instance is one resource as its driver sees it.
type Instance struct {
	Name string
	// Params are the validated parameters with defaults filled in.
	Params map[string]any
	// Dir is the resource's private directory (created by pier, mode 0700,
	// owned by pier): under the data dir when servers run as pier's user,
	// else in a servers dir outside it that only root may write, so that
	// the data dir stays root's alone. Managed servers keep their data
	// here; drivers lay it out for the server's user with
	// daemon.Daemon.Prepare, which loosens no directory above it.
	Dir string
	// Port is the TCP port chosen for a managed server, free when the
	// resource was created and fixed for its life.
	Port int
	// Listen are the addresses a managed server listens on: loopback first
	// (pier administers through it), then the machines' gateway when apps
	// run in isolated machines. Nowhere else.
	Listen []string
	// Host is the address connected apps use to reach the server.
	Host string
	// Admin holds what the driver returned from Provision (admin user and
	// password, for instance). pier stores it encrypted.
	Admin map[string]string
}

// Grant asks for the credentials of one connection.
type Grant struct {
	App    string
	Access Access
}

// Credentials are the artifact fields of one connection (host, port, user,
// password, url, ...). pier stores them encrypted and hands them back to
// Revoke.
type Credentials map[string]string

// Driver provisions and administers the resources of one type. Every method
// must be safe to call again after a partial failure (idempotent), since
// pier retries after crashes.
type Driver interface {
	Info() TypeInfo
	// Provision creates the resource: a managed server is initialised and
	// started and accepts connections when Provision returns; an external
	// one (admin_url) is checked. It returns the admin credentials to keep.
	// On error nothing must be left behind.
	Provision(ctx context.Context, inst Instance) (admin map[string]string, err error)
	// Start makes a provisioned resource serve: it starts a managed server
	// that is not running (after a reboot or a crash) and is a no-op when it
	// runs or the resource is external. pier calls it at start and
	// periodically.
	Start(ctx context.Context, inst Instance) error
	// Stop stops a managed server, keeping its data.
	Stop(ctx context.Context, inst Instance) error
	// Destroy stops a managed server and deletes its data. For an external
	// resource it removes only what pier created there.
	Destroy(ctx context.Context, inst Instance) error
	// Grant creates credentials with exactly g.Access on the resource, for
	// g.App alone.
	Grant(ctx context.Context, inst Instance, g Grant) (Credentials, error)
	// Revoke removes those credentials: they fail to log in afterwards and
	// sessions opened with them are ended.
	Revoke(ctx context.Context, inst Instance, g Grant, c Credentials) error
}

// Backuper is implemented by drivers whose resources can be backed up.
type Backuper interface {
	// Backup writes a full backup of the resource to w.
	Backup(ctx context.Context, inst Instance, w io.Writer) error
	// Restore replaces the resource's data with the backup read from r.
	// Existing connections keep working afterwards.
	Restore(ctx context.Context, inst Instance, r io.Reader) error
}

// Status is where a resource is in its life. The values are stored and
// shown by the API as they are.
type Status string

// The resource statuses. A crash can leave a resource creating or
// deleting; the next start of the server removes it (its create or delete
// never finished).
const (
	StatusCreating Status = "creating" // being provisioned
	StatusReady    Status = "ready"    // serving; apps may connect
	StatusDeleting Status = "deleting" // being destroyed; no new connection
)

// Resource is a resource as pier records it.
type Resource struct {
	Name      string         `json:"name"`
	Type      string         `json:"type"`
	Params    map[string]any `json:"params"`
	Managed   bool           `json:"managed"`
	Host      string         `json:"host,omitempty"`
	Port      int            `json:"port,omitempty"`
	Status    Status         `json:"status"`
	CreatedAt time.Time      `json:"created_at"`
}

// Connection is an edge of the graph: app -> resource (or app -> app).
type Connection struct {
	App       string    `json:"app"`
	Target    string    `json:"target"`
	Kind      string    `json:"kind"` // "resource" or "app"
	Type      string    `json:"type"` // the target's resource type, or "app"
	Access    Access    `json:"access"`
	As        string    `json:"as"`  // env var prefix source (default: the target's name)
	Env       []string  `json:"env"` // names of the injected variables
	CreatedAt time.Time `json:"created_at"`
}

// Backup is one stored backup of a resource.
type Backup struct {
	ID        string    `json:"id"`
	Resource  string    `json:"resource"`
	Size      int64     `json:"size"`
	Trigger   string    `json:"trigger"` // "manual" or "schedule"
	CreatedAt time.Time `json:"created_at"`
}
