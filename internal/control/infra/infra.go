// Package infra runs pier's resources (databases, caches, buckets: the
// infrastructure apps connect to) and the connections that give an app
// access to a resource or to another app: creating, backing up, restoring
// and deleting resources, granting and revoking connections' credentials,
// keeping managed servers up, and finishing at the next start what a crash
// left half done.
package infra

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// Store is the state resources and connections live in.
type Store interface {
	App(ctx context.Context, name string) (pier.App, error)
	CreateResource(ctx context.Context, r store.ResourceRow) error
	ResourceReady(ctx context.Context, name, keyID string, sealed []byte) error
	SetResourceStatus(ctx context.Context, name string, status resources.Status) error
	DeleteResource(ctx context.Context, name string) error
	Resource(ctx context.Context, name string) (store.ResourceRow, error)
	Resources(ctx context.Context) ([]store.ResourceRow, error)
	PutConnection(ctx context.Context, c store.ConnectionRow) error
	SetConnectionStatus(ctx context.Context, app, target string, status store.ConnStatus) error
	DeleteConnection(ctx context.Context, app, target string) error
	DeleteRevoked(ctx context.Context, app, target, keyID string, sealed []byte) error
	Connection(ctx context.Context, app, target string) (store.ConnectionRow, error)
	Connections(ctx context.Context, app, target string) ([]store.ConnectionRow, error)
	AddBackup(ctx context.Context, b resources.Backup) error
	DeleteBackup(ctx context.Context, id string) error
	Backups(ctx context.Context, resource string) ([]resources.Backup, error)
	Backup(ctx context.Context, resource, id string) (resources.Backup, error)
	AddEvent(ctx context.Context, app, typ, msg string) error
}

// Types are the resource types (resources.Registry): their drivers, and
// the checks of parameters and access levels.
type Types interface {
	Driver(typ string) (resources.Driver, error)
	Params(typ string, in map[string]any) (map[string]any, error)
	AccessOf(typ string, a resources.Access) (resources.Access, error)
	Types() []resources.TypeInfo
}

// Keys seal what is stored encrypted: admin credentials, secret
// parameters and connections' credentials.
type Keys interface {
	Seal(scope, name, value string) (keyID string, sealed []byte, err error)
	Open(scope, name, keyID string, sealed []byte) (string, error)
}

// Locks allow one operation at a time per app or resource name.
type Locks interface {
	// Lock waits for the work under way on name; TryLock does not.
	Lock(ctx context.Context, name, op string) (unlock func(), err error)
	TryLock(name, op string) (unlock func(), err error)
}

// Apps rolls an app so that its machines get a changed environment: a
// connection made or removed.
type Apps interface {
	// Reroll rolls app's current release again (nothing before its first
	// deploy); the caller holds app's lock.
	Reroll(ctx context.Context, app, desc string, out io.Writer) (*pier.Release, error)
}

// Calls is the mesh's side of call connections.
type Calls interface {
	// Enabled says whether a mesh carries app-to-app calls at all.
	Enabled() bool
	Allow(src, dst string)
	// Deny refuses src's calls to dst and cuts the open ones.
	Deny(src, dst string)
	// RemoveService takes the service address of an app that is gone.
	RemoveService(app string)
}

// Service runs resources and connections.
type Service struct {
	Store Store
	Types Types
	Keys  Keys
	Busy  Locks
	Apps  Apps
	Calls Calls
	Log   *slog.Logger
	// ResourceDir holds resources' data and BackupDir their backups; Net
	// is where their servers listen.
	ResourceDir string
	BackupDir   string
	Net         ResourceNet
}

func (s *Service) event(ctx context.Context, subject, typ, format string, args ...any) {
	if err := s.Store.AddEvent(ctx, subject, typ, fmt.Sprintf(format, args...)); err != nil {
		s.Log.Error("record event", "app", subject, "err", err)
	}
}

// resourceEvent records an event in the history of a resource.
func (s *Service) resourceEvent(ctx context.Context, name, typ, format string, args ...any) {
	s.event(ctx, "resource/"+name, typ, format, args...)
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
