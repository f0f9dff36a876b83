package infra

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/control/busy"
	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
)

type event struct{ subject, typ, msg string }

// fakeStore keeps what store.Store keeps, in memory, with its rules: names
// shared by apps and resources, NotFound for missing rows, connections
// listed by app then target with the target's resource type, and
// DeleteRevoked deleting only the very row that was revoked, parameters
// read back from JSON.
type fakeStore struct {
	mu        sync.Mutex
	apps      map[string]pier.App
	resources map[string]store.ResourceRow
	conns     map[[2]string]store.ConnectionRow
	backups   []resources.Backup
	events    []event
	// fail makes the named method fail once.
	fail map[string]error
}

var _ Store = (*fakeStore)(nil)

func newFakeStore(apps ...string) *fakeStore {
	s := &fakeStore{apps: map[string]pier.App{}, resources: map[string]store.ResourceRow{}, conns: map[[2]string]store.ConnectionRow{}, fail: map[string]error{}}
	for _, a := range apps {
		s.apps[a] = pier.App{Name: a, Count: 1}
	}
	return s
}

func (s *fakeStore) failing(method string) error {
	err := s.fail[method]
	delete(s.fail, method)
	return err
}

func (s *fakeStore) App(ctx context.Context, name string) (pier.App, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[name]
	if !ok {
		return a, pier.Errorf(pier.NotFound, "app %q not found", name)
	}
	return a, nil
}

func (s *fakeStore) CreateResource(ctx context.Context, r store.ResourceRow) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.apps[r.Name]; ok {
		return pier.Errorf(pier.Conflict, "the name %q is taken", r.Name)
	}
	if _, ok := s.resources[r.Name]; ok {
		return pier.Errorf(pier.Conflict, "the name %q is taken", r.Name)
	}
	// Parameters are stored as JSON: numbers come back as float64.
	b, err := json.Marshal(r.Params)
	if err != nil {
		return err
	}
	r.Params = nil
	if err := json.Unmarshal(b, &r.Params); err != nil {
		return err
	}
	s.resources[r.Name] = r
	return nil
}

func (s *fakeStore) ResourceReady(ctx context.Context, name, keyID string, sealed []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing("ResourceReady"); err != nil {
		return err
	}
	r, ok := s.resources[name]
	if ok {
		r.Status, r.AdminKeyID, r.AdminSealed = resources.StatusReady, keyID, sealed
		s.resources[name] = r
	}
	return nil
}

func (s *fakeStore) SetResourceStatus(ctx context.Context, name string, status resources.Status) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.resources[name]; ok {
		r.Status = status
		s.resources[name] = r
	}
	return nil
}

func (s *fakeStore) DeleteResource(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.resources, name)
	s.backups = slices.DeleteFunc(s.backups, func(b resources.Backup) bool { return b.Resource == name })
	return nil
}

func (s *fakeStore) Resource(ctx context.Context, name string) (store.ResourceRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.resources[name]
	if !ok {
		return r, pier.Errorf(pier.NotFound, "resource %q not found", name)
	}
	return r, nil
}

func (s *fakeStore) Resources(ctx context.Context) ([]store.ResourceRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.ResourceRow
	for _, r := range s.resources {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *fakeStore) PutConnection(ctx context.Context, c store.ConnectionRow) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failing("PutConnection"); err != nil {
		return err
	}
	c.Type, c.Env = "", nil // not stored: Type comes from the resource, Env is computed
	s.conns[[2]string{c.App, c.Target}] = c
	return nil
}

func (s *fakeStore) SetConnectionStatus(ctx context.Context, app, target string, status store.ConnStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{app, target}
	if c, ok := s.conns[k]; ok {
		c.Status = status
		s.conns[k] = c
	}
	return nil
}

func (s *fakeStore) DeleteConnection(ctx context.Context, app, target string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, [2]string{app, target})
	return nil
}

func (s *fakeStore) DeleteRevoked(ctx context.Context, app, target, keyID string, sealed []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{app, target}
	if c, ok := s.conns[k]; ok && c.Status == store.ConnRevoking && c.KeyID == keyID && bytes.Equal(c.Sealed, sealed) {
		delete(s.conns, k)
	}
	return nil
}

// withType is a stored connection as read: with its target's type.
func (s *fakeStore) withType(c store.ConnectionRow) store.ConnectionRow {
	c.Type = "app"
	if r, ok := s.resources[c.Target]; ok {
		c.Type = r.Type
	}
	return c
}

func (s *fakeStore) Connection(ctx context.Context, app, target string) (store.ConnectionRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.conns[[2]string{app, target}]
	if !ok {
		return c, pier.Errorf(pier.NotFound, "%s is not connected to %s", app, target)
	}
	return s.withType(c), nil
}

func (s *fakeStore) Connections(ctx context.Context, app, target string) ([]store.ConnectionRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.ConnectionRow
	for _, c := range s.conns {
		if (app == "" || c.App == app) && (target == "" || c.Target == target) {
			out = append(out, s.withType(c))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].App != out[j].App {
			return out[i].App < out[j].App
		}
		return out[i].Target < out[j].Target
	})
	return out, nil
}

func (s *fakeStore) AddBackup(ctx context.Context, b resources.Backup) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backups = append(s.backups, b)
	return nil
}

func (s *fakeStore) DeleteBackup(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backups = slices.DeleteFunc(s.backups, func(b resources.Backup) bool { return b.ID == id })
	return nil
}

func (s *fakeStore) Backups(ctx context.Context, resource string) ([]resources.Backup, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []resources.Backup
	for _, b := range s.backups {
		if b.Resource == resource {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

func (s *fakeStore) Backup(ctx context.Context, resource, id string) (resources.Backup, error) {
	bs, _ := s.Backups(ctx, resource)
	for _, b := range bs {
		if b.ID == id {
			return b, nil
		}
	}
	return resources.Backup{}, pier.Errorf(pier.NotFound, "backup %q of %s not found", id, resource)
}

func (s *fakeStore) AddEvent(ctx context.Context, subject, typ, msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, event{subject, typ, msg})
	return nil
}

// eventsOf are the recorded events of subject as "type: message".
func (s *fakeStore) eventsOf(subject string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.events {
		if e.subject == subject {
			out = append(out, e.typ+": "+e.msg)
		}
	}
	return out
}

func (s *fakeStore) connStatus(app, target string) (store.ConnStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.conns[[2]string{app, target}]
	return c.Status, ok
}

func (s *fakeStore) resourceStatus(name string) (resources.Status, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.resources[name]
	return r.Status, ok
}

// fakeDriver is a resource type whose servers are entries in a journal.
// Grant makes credentials naming the app; Revoke wants them back. fail
// makes an operation fail until cleared.
type fakeDriver struct {
	log  *controltest.Journal
	mu   sync.Mutex
	fail map[string]error // "provision", "start", "destroy", "grant", "revoke", or one of those and a resource: "grant db"
}

var (
	_ resources.Driver   = (*fakeDriver)(nil)
	_ resources.Backuper = (*fakeDriver)(nil)
)

func (d *fakeDriver) setFail(op string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		delete(d.fail, op)
	} else {
		d.fail[op] = err
	}
}

func (d *fakeDriver) failure(op, resource string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.fail[op+" "+resource]; err != nil {
		return err
	}
	return d.fail[op]
}

func (d *fakeDriver) Info() resources.TypeInfo {
	return resources.TypeInfo{Name: "kv", Access: []resources.Access{resources.ReadWrite, resources.Read}, Provides: []string{"host", "port", "user", "password", "url"},
		Conventional: map[string]string{"KV_URL": "url"},
		Schema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{
			"size_mb":{"type":"integer","minimum":8,"default":64},
			"admin_url":{"type":"string"},
			"backup_schedule":{"type":"string","enum":["none","daily"],"default":"none"},
			"backup_retention":{"type":"integer","default":7}}}`)}
}

func (d *fakeDriver) Provision(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	d.log.Add("provision %s", inst.Name)
	if err := d.failure("provision", inst.Name); err != nil {
		return nil, err
	}
	return map[string]string{"admin_password": "secret-" + inst.Name}, nil
}

func (d *fakeDriver) Start(ctx context.Context, inst resources.Instance) error {
	d.log.Add("start %s", inst.Name)
	return d.failure("start", inst.Name)
}

func (d *fakeDriver) Stop(ctx context.Context, inst resources.Instance) error {
	d.log.Add("stop %s", inst.Name)
	return nil
}

func (d *fakeDriver) Destroy(ctx context.Context, inst resources.Instance) error {
	d.log.Add("destroy %s", inst.Name)
	return d.failure("destroy", inst.Name)
}

func (d *fakeDriver) Grant(ctx context.Context, inst resources.Instance, g resources.Grant) (resources.Credentials, error) {
	d.log.Add("grant %s %s %s", inst.Name, g.App, g.Access)
	if err := d.failure("grant", inst.Name); err != nil {
		return nil, err
	}
	return resources.Credentials{"host": inst.Host, "port": strconv.Itoa(inst.Port), "user": g.App, "password": "pw-" + g.App,
		"url": "kv://" + g.App + "@" + inst.Host + ":" + strconv.Itoa(inst.Port)}, nil
}

func (d *fakeDriver) Revoke(ctx context.Context, inst resources.Instance, g resources.Grant, c resources.Credentials) error {
	if c["user"] != g.App {
		return fmt.Errorf("revoke %s: credentials of %q", g.App, c["user"])
	}
	d.log.Add("revoke %s %s", inst.Name, g.App)
	return d.failure("revoke", inst.Name)
}

func (d *fakeDriver) Backup(ctx context.Context, inst resources.Instance, w io.Writer) error {
	d.log.Add("backup %s", inst.Name)
	_, err := io.WriteString(w, "dump of "+inst.Name)
	return err
}

func (d *fakeDriver) Restore(ctx context.Context, inst resources.Instance, r io.Reader) error {
	b, err := io.ReadAll(r)
	d.log.Add("restore %s from %q", inst.Name, b)
	return err
}

// fakeApps is the apps service: Reroll records the roll, or fails.
type fakeApps struct {
	log  *controltest.Journal
	fail error
}

func (a *fakeApps) Reroll(ctx context.Context, app, desc string, out io.Writer) (*pier.Release, error) {
	a.log.Add("reroll %s: %s", app, desc)
	if a.fail != nil {
		return nil, a.fail
	}
	return &pier.Release{App: app, Version: 2, Description: desc}, nil
}

// fakeCalls is the mesh's call policy, with or without a mesh.
type fakeCalls struct {
	log     *controltest.Journal
	enabled bool
}

func (c *fakeCalls) Enabled() bool            { return c.enabled }
func (c *fakeCalls) Allow(src, dst string)    { c.log.Add("allow %s->%s", src, dst) }
func (c *fakeCalls) Deny(src, dst string)     { c.log.Add("deny %s->%s", src, dst) }
func (c *fakeCalls) RemoveService(app string) { c.log.Add("unserve %s", app) }

// env is a Service on fakes, with a real keyring and resource registry,
// its directories in a temporary one.
type env struct {
	svc    *Service
	store  *fakeStore
	driver *fakeDriver
	apps   *fakeApps
	calls  *fakeCalls
	log    *controltest.Journal
	busy   *busy.Table
}

func newEnv(t *testing.T, apps ...string) *env {
	t.Helper()
	j := &controltest.Journal{}
	d := &fakeDriver{log: j, fail: map[string]error{}}
	reg, err := resources.NewRegistry(d)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := secrets.Load(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{store: newFakeStore(apps...), driver: d, apps: &fakeApps{log: j}, calls: &fakeCalls{log: j, enabled: true}, log: j, busy: &busy.Table{}}
	dir := t.TempDir()
	e.svc = &Service{Store: e.store, Types: reg, Keys: keys, Busy: e.busy, Apps: e.apps, Calls: e.calls,
		Log:         slog.New(slog.DiscardHandler),
		ResourceDir: filepath.Join(dir, "resources"), BackupDir: filepath.Join(dir, "backups"),
		Net: ResourceNet{Listen: []string{"127.0.0.1"}, Host: "127.0.0.1"}}
	return e
}

// create makes a ready resource the way the API does.
func (e *env) create(t *testing.T, name string) {
	t.Helper()
	if _, err := e.svc.CreateResource(context.Background(), name, "kv", map[string]any{}, io.Discard); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

// connect connects app to target the way the API does.
func (e *env) connect(t *testing.T, app, target string) resources.Connection {
	t.Helper()
	c, err := e.svc.Connect(context.Background(), app, target, "", "", io.Discard)
	if err != nil {
		t.Fatalf("connect %s to %s: %v", app, target, err)
	}
	return c
}

// leave sets a resource's or connection's status as a crash would have
// left it.
func (e *env) leaveResource(name string, st resources.Status) {
	e.store.SetResourceStatus(context.Background(), name, st)
}

func (e *env) leaveConnection(app, target string, st store.ConnStatus) {
	e.store.SetConnectionStatus(context.Background(), app, target, st)
}

var errBoom = errors.New("boom")

// waitFor polls cond until it holds or a few seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// contains says whether one of list contains sub.
func contains(list []string, sub string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
}
