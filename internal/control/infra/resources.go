package infra

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// ResourceNet says where managed resource servers listen and how connected
// machines reach them.
type ResourceNet struct {
	// Listen are the addresses managed servers bind: loopback, and the
	// machines' gateway when apps run isolated.
	Listen []string
	// Host is the address apps are given.
	Host string
}

// ProvisionTimeout bounds creating one resource.
const ProvisionTimeout = 2 * time.Minute

// ResourceDetail is a resource with its connections.
type ResourceDetail struct {
	resources.Resource
	Connections []resources.Connection `json:"connections"`
}

// resourceDir is a resource's private directory.
func (s *Service) resourceDir(name string) string { return filepath.Join(s.ResourceDir, name) }

// MoveResourceDirs moves the directories of resources that still live
// under from, where earlier versions kept them, to ResourceDir. Each
// server is stopped first, since it names its paths, and StartResources
// starts it again from its new place. A move is a rename: across file
// systems it fails, naming both paths, before any server stops.
func (s *Service) MoveResourceDirs(ctx context.Context, from string) error {
	if from == s.ResourceDir {
		return nil
	}
	rows, err := s.Store.Resources(ctx)
	if err != nil {
		return err
	}
	for _, r := range rows {
		old, dst := filepath.Join(from, r.Name), s.resourceDir(r.Name)
		if _, err := os.Lstat(old); os.IsNotExist(err) {
			continue
		}
		fail := func(why string) error {
			return fmt.Errorf("move resource %s from %s to %s: %s; move it yourself (as root, keeping owners and modes: cp -a, then remove %s) and start pier again", r.Name, old, dst, why, old)
		}
		if !sameFileSystem(old, filepath.Dir(dst)) {
			return fail("they are on different file systems")
		}
		os.Remove(dst) // an empty directory a failed start may have made
		if _, err := os.Lstat(dst); err == nil {
			return fail(dst + " exists already")
		}
		if d, err := s.Types.Driver(r.Type); err == nil {
			inst, err := s.instance(r)
			if err != nil {
				return err
			}
			inst.Dir = old
			sctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
			err = d.Stop(sctx, inst)
			cancel()
			if err != nil {
				return fmt.Errorf("move resource %s: %w", r.Name, err)
			}
		}
		if err := os.Rename(old, dst); errors.Is(err, syscall.EXDEV) {
			return fail("they are on different file systems")
		} else if err != nil {
			return fail(err.Error())
		}
		s.Log.Info("moved resource out of the data dir", "resource", r.Name, "from", old, "to", dst)
	}
	return nil
}

func sameFileSystem(a, b string) bool {
	var sa, sb syscall.Stat_t
	return syscall.Stat(a, &sa) == nil && syscall.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}

// sealedResource is what a resource keeps encrypted: its secret parameters
// (admin_url holds a password) and the driver's admin credentials.
type sealedResource struct {
	Params map[string]any    `json:"params,omitempty"`
	Admin  map[string]string `json:"admin,omitempty"`
}

// secretParams are the parameters stored encrypted and shown redacted.
var secretParams = []string{"admin_url"}

// splitParams moves the secret parameters out of params: the stored params
// keep a redacted copy, the secret ones are sealed.
func splitParams(params map[string]any) (public, secret map[string]any) {
	public, secret = make(map[string]any, len(params)), map[string]any{}
	for k, v := range params {
		public[k] = v
	}
	for _, k := range secretParams {
		if v, ok := public[k]; ok {
			secret[k] = v
			if s, ok := v.(string); ok {
				public[k] = redactURL(s)
			}
		}
	}
	return public, secret
}

// instance is what a driver is given for a stored resource, its secret
// parameters and admin credentials opened.
func (s *Service) instance(r store.ResourceRow) (resources.Instance, error) {
	inst := resources.Instance{Name: r.Name, Params: map[string]any{}, Dir: s.resourceDir(r.Name), Port: r.Port,
		Listen: s.Net.Listen, Host: s.Net.Host}
	for k, v := range r.Params {
		inst.Params[k] = v
	}
	if len(r.AdminSealed) > 0 {
		plain, err := s.Keys.Open("resource/"+r.Name, "admin", r.AdminKeyID, r.AdminSealed)
		if err != nil {
			return inst, fmt.Errorf("open admin credentials of %s: %w", r.Name, err)
		}
		var sr sealedResource
		if err := json.Unmarshal([]byte(plain), &sr); err != nil {
			return inst, fmt.Errorf("admin credentials of %s: %w", r.Name, err)
		}
		inst.Admin = sr.Admin
		for k, v := range sr.Params {
			inst.Params[k] = v
		}
	}
	return inst, nil
}

func (s *Service) sealJSON(scope, name string, v any) (string, []byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", nil, err
	}
	return s.Keys.Seal(scope, name, string(b))
}

// freePort picks a TCP port free on loopback now; the resource keeps it.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ValidateResourceName checks a resource name: resources and apps share
// one namespace, with the same rules.
func ValidateResourceName(name string) error {
	if err := pier.ValidateAppName(name); err != nil {
		return pier.Errorf(pier.Invalid, "invalid resource name %q: use 1-63 lowercase letters, digits and dashes, starting with a letter and not ending with a dash", name)
	}
	return nil
}

// CreateResource provisions a resource of type typ. Parameters are checked
// before anything is created; a failed provisioning leaves nothing behind.
func (s *Service) CreateResource(ctx context.Context, name, typ string, params map[string]any, out io.Writer) (resources.Resource, error) {
	if err := ValidateResourceName(name); err != nil {
		return resources.Resource{}, err
	}
	d, err := s.Types.Driver(typ)
	if err != nil {
		return resources.Resource{}, err
	}
	params, err = s.Types.Params(typ, params)
	if err != nil {
		return resources.Resource{}, err
	}
	unlock, err := s.Busy.Lock(ctx, name, "a resource create")
	if err != nil {
		return resources.Resource{}, err
	}
	defer unlock()
	port, err := freePort()
	if err != nil {
		return resources.Resource{}, err
	}
	_, external := params["admin_url"]
	public, secret := splitParams(params)
	row := store.ResourceRow{Resource: resources.Resource{Name: name, Type: typ, Params: public, Managed: !external, Port: port,
		Status: resources.StatusCreating, CreatedAt: time.Now().UTC()}}
	// Secret parameters are sealed from the start, so a crash mid-create
	// can still clean up an external resource.
	if row.AdminKeyID, row.AdminSealed, err = s.sealJSON("resource/"+name, "admin", sealedResource{Params: secret}); err != nil {
		return resources.Resource{}, err
	}
	if err := s.Store.CreateResource(ctx, row); err != nil {
		return resources.Resource{}, err
	}
	inst, err := s.instance(row)
	if err != nil {
		s.Store.DeleteResource(context.Background(), name)
		return resources.Resource{}, err
	}
	if err := os.MkdirAll(inst.Dir, 0o700); err != nil {
		s.Store.DeleteResource(context.Background(), name)
		return resources.Resource{}, err
	}
	mode := "managed"
	if external {
		mode = "external"
	}
	fmt.Fprintf(out, "==> Creating %s %s (%s)\n", typ, name, mode)
	begin := time.Now()
	pctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
	admin, err := d.Provision(pctx, inst)
	cancel()
	if err == nil {
		var keyID string
		var sealed []byte
		if keyID, sealed, err = s.sealJSON("resource/"+name, "admin", sealedResource{Params: secret, Admin: admin}); err == nil {
			err = s.Store.ResourceReady(ctx, name, keyID, sealed)
		}
	}
	if err != nil {
		s.discard(inst, d)
		return resources.Resource{}, &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("could not create %s %s", typ, name), Err: err}
	}
	row.Status = resources.StatusReady
	fmt.Fprintf(out, "==> %s is ready (%s)\n", name, time.Since(begin).Round(10*time.Millisecond))
	s.resourceEvent(ctx, name, "resource.create", "%s %s created (%s) in %s", typ, name, mode, time.Since(begin).Round(time.Millisecond))
	return s.publicResource(row), nil
}

// discard removes a resource whose creation failed or was interrupted.
func (s *Service) discard(inst resources.Instance, d resources.Driver) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Destroy(ctx, inst); err != nil {
		s.Log.Warn("clean up resource", "resource", inst.Name, "err", err)
	}
	os.RemoveAll(inst.Dir)
	s.Store.DeleteResource(ctx, inst.Name)
}

// publicResource is what the API shows of a stored resource: its stored
// parameters are already redacted, and admin credentials are sealed apart.
func (s *Service) publicResource(r store.ResourceRow) resources.Resource {
	res := r.Resource
	if r.Managed {
		res.Host = s.Net.Host
	} else {
		res.Port = 0
	}
	return res
}

// redactURL keeps a URL's scheme, user, host and path: no password, no
// query (which may carry one too).
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return "(redacted)"
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			r.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			r.User = url.User(u.User.Username())
		}
	}
	return r.String()
}

// ListResources lists every resource.
func (s *Service) ListResources(ctx context.Context) ([]resources.Resource, error) {
	rows, err := s.Store.Resources(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]resources.Resource, 0, len(rows))
	for _, r := range rows {
		out = append(out, s.publicResource(r))
	}
	return out, nil
}

// GetResource returns a resource with its connections.
func (s *Service) GetResource(ctx context.Context, name string) (ResourceDetail, error) {
	r, err := s.Store.Resource(ctx, name)
	if err != nil {
		return ResourceDetail{}, err
	}
	conns, err := s.Connections(ctx, "", name)
	if err != nil {
		return ResourceDetail{}, err
	}
	return ResourceDetail{Resource: s.publicResource(r), Connections: conns}, nil
}

// DeleteResource destroys a resource and its data. With connections it is
// refused unless force, which disconnects every app first (revoking their
// credentials and rolling them).
func (s *Service) DeleteResource(ctx context.Context, name string, force bool, out io.Writer) error {
	r, err := s.Store.Resource(ctx, name)
	if err != nil {
		return err
	}
	conns, err := s.Store.Connections(ctx, "", name)
	if err != nil {
		return err
	}
	if r.Status == resources.StatusCreating {
		return pier.Errorf(pier.Conflict, "%s is still being created; try again when it is ready", name)
	}
	if len(conns) > 0 && !force {
		apps := make([]string, len(conns))
		for i, c := range conns {
			apps[i] = c.App
		}
		return pier.Errorf(pier.Precondition, "%s is connected to %s; disconnect them first (`pier disconnect APP %s`) or pass --force to revoke their access and delete it", name, strings.Join(apps, ", "), name)
	}
	unlock, err := s.Busy.Lock(ctx, name, "a resource delete")
	if err != nil {
		return err
	}
	defer unlock()
	// Marked first: no new connection is made to a resource being deleted.
	if err := s.Store.SetResourceStatus(ctx, name, resources.StatusDeleting); err != nil {
		return err
	}
	for _, c := range conns {
		if err := s.Disconnect(ctx, c.App, name, out); err != nil {
			s.Store.SetResourceStatus(context.Background(), name, resources.StatusReady)
			return fmt.Errorf("disconnect %s: %w", c.App, err)
		}
	}
	if left, err := s.Store.Connections(ctx, "", name); err != nil || len(left) > 0 {
		s.Store.SetResourceStatus(context.Background(), name, resources.StatusReady)
		if err == nil {
			err = pier.Errorf(pier.Conflict, "%s got a new connection while being deleted; try again", name)
		}
		return err
	}
	d, err := s.Types.Driver(r.Type)
	if err != nil {
		return err
	}
	inst, err := s.instance(r)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "==> Deleting %s %s\n", r.Type, name)
	dctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
	defer cancel()
	if err := d.Destroy(dctx, inst); err != nil {
		return &pier.Error{Kind: pier.Failed, Msg: "could not delete " + name, Err: err}
	}
	os.RemoveAll(inst.Dir)
	os.RemoveAll(s.backupDir(name))
	if err := s.Store.DeleteResource(ctx, name); err != nil {
		return err
	}
	s.resourceEvent(ctx, name, "resource.delete", "%s %s deleted", r.Type, name)
	fmt.Fprintf(out, "==> %s deleted\n", name)
	return nil
}

// ResourceTypes lists the resource types.
func (s *Service) ResourceTypes() []resources.TypeInfo { return s.Types.Types() }
