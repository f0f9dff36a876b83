package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/internal/resources"
	goredis "github.com/redis/go-redis/v9"
)

// provisionExternal checks that the admin URL reaches a Redis 7+ server on
// which its user may administer ACL users, and that ACL SAVE works, so the
// users pier creates there survive a restart of that server.
func (d *Driver) provisionExternal(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	opt, err := adminOptions(inst)
	if err != nil {
		return nil, err
	}
	c := goredis.NewClient(opt)
	defer c.Close()
	fail := func(what string, err error) error {
		return fmt.Errorf("redis %s: admin_url %s: %s: %w", inst.Name, opt.Addr, what, err)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		return nil, fail("cannot log in (check address, user and password)", err)
	}
	if err := checkVersion(ctx, c); err != nil {
		return nil, fail("unsupported server", err)
	}
	if err := c.Do(ctx, "ACL", "WHOAMI").Err(); err != nil {
		return nil, fail("ACL WHOAMI failed", err)
	}
	if err := c.ACLList(ctx).Err(); err != nil {
		return nil, fail("the user may not run ACL commands (grant it +@admin or at least +acl)", err)
	}
	if err := c.Do(ctx, "ACL", "SAVE").Err(); err != nil {
		return nil, fail("ACL SAVE failed; set `aclfile` in the server's configuration so the users pier creates survive its restart", err)
	}
	d.cfg.Log.Info("redis external server checked", "resource", inst.Name, "addr", opt.Addr)
	return map[string]string{}, nil
}

// checkVersion requires Redis 7: connection users rely on its key
// permissions (%R~) and subcommand rules (-script|flush).
func checkVersion(ctx context.Context, c *goredis.Client) error {
	m, err := c.Do(ctx, "HELLO").Result()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	version := ""
	switch m := m.(type) {
	case map[any]any:
		version, _ = m["version"].(string)
	case []any: // RESP2: alternating keys and values
		for i := 0; i+1 < len(m); i += 2 {
			if k, _ := m[i].(string); k == "version" {
				version, _ = m[i+1].(string)
			}
		}
	}
	major, err := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	if err != nil {
		return fmt.Errorf("cannot tell the server's version from HELLO (%q)", version)
	}
	if major < 7 {
		return fmt.Errorf("it runs Redis %s; pier needs Redis 7 or later for per-app ACL users", version)
	}
	return nil
}

// destroyExternal removes the ACL users of this resource, ending their
// connections, and leaves everything else (keys included) alone.
func (d *Driver) destroyExternal(ctx context.Context, inst resources.Instance) error {
	opt, err := adminOptions(inst)
	if err != nil {
		return err
	}
	c := goredis.NewClient(opt)
	defer c.Close()
	users, err := c.Do(ctx, "ACL", "USERS").StringSlice()
	if err != nil {
		return fmt.Errorf("destroy redis %s: acl users on %s (is the server reachable?): %w", inst.Name, opt.Addr, err)
	}
	prefix := externalPrefix(inst)
	for _, u := range users {
		if !strings.HasPrefix(u, prefix) {
			continue
		}
		if err := deleteUser(ctx, c, u); err != nil {
			return fmt.Errorf("destroy redis %s: user %s: %w", inst.Name, u, err)
		}
	}
	if err := c.Do(ctx, "ACL", "SAVE").Err(); err != nil {
		return fmt.Errorf("destroy redis %s: acl save: %w", inst.Name, err)
	}
	d.cfg.Log.Info("redis external users removed", "resource", inst.Name, "addr", opt.Addr)
	return nil
}
