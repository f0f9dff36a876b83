package redis

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/pier-dev/pier/internal/resources"
	goredis "github.com/redis/go-redis/v9"
)

// Command rules of a connection user, after "-@all". Both levels end with
// the same denials, -@admin -@dangerous last, so whatever a category above
// brings in, FLUSHALL, FLUSHDB, CONFIG, DEBUG, SHUTDOWN, MONITOR, KEYS, INFO,
// ACL and CLIENT KILL/LIST stay out.
//
// Commands that see the whole keyspace without being checked against key or
// channel patterns are denied too, as they would show an app other apps'
// key and channel names or sizes: SCAN, RANDOMKEY, DBSIZE, PUBSUB
// (CHANNELS, NUMSUB, ...) and CLIENT TRACKING (in BCAST mode it reports
// invalidations of any key; client-side caching is therefore off). SELECT
// is denied so every app stays in db 0, the one in its URL.
//
// Scripting (EVAL, EVALSHA, SCRIPT LOAD) is allowed to readwrite: Redis 7
// checks every command a script runs, and its keys, against the caller's
// ACL, and many libraries (locks, rate limiters, job queues) need it.
// FUNCTION and SCRIPT FLUSH/KILL are denied: functions and the script cache
// are shared by all users of the server, so one app could break another's;
// SCRIPT DEBUG is denied because its SYNC mode blocks the server.
var (
	readRules = []string{"-@all", "+@read", "+@connection"}

	readWriteRules = []string{
		"-@all", "+@read", "+@write", "+@keyspace", "+@string", "+@hash", "+@list",
		"+@set", "+@sortedset", "+@stream", "+@bitmap", "+@hyperloglog", "+@geo",
		"+@transaction", "+@connection", "+@pubsub",
		"+@scripting", "-function", "-script|flush", "-script|kill", "-script|debug",
	}

	denyRules = []string{
		"-select", "-scan", "-randomkey", "-dbsize", "-pubsub", "-client|tracking",
		"-@admin", "-@dangerous",
	}
)

// appName is what pier accepts as an app name. Checked again here because it
// ends up in key and channel patterns, where "*" or "?" would widen them.
var appName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// aclRules returns the ACL SETUSER rules of a connection of app with access a.
func aclRules(app string, a resources.Access, password string) ([]string, error) {
	if !appName.MatchString(app) {
		return nil, fmt.Errorf("app name %q cannot name redis keys: use lowercase letters, digits and dashes", app)
	}
	prefix := app + ":"
	rules := []string{"reset", "on", ">" + password, "resetchannels", "&" + prefix + "*"}
	switch a {
	case resources.Read:
		// %R: even a command that slipped into the list could not write.
		rules = append(rules, "%R~"+prefix+"*")
		rules = append(rules, readRules...)
	case resources.ReadWrite:
		rules = append(rules, "~"+prefix+"*")
		rules = append(rules, readWriteRules...)
	default:
		return nil, fmt.Errorf("redis has no %q access: ask for readwrite or read", a)
	}
	return append(rules, denyRules...), nil
}

// Grant creates (or resets) the ACL user of g.App with a new password.
func (d *Driver) Grant(ctx context.Context, inst resources.Instance, g resources.Grant) (resources.Credentials, error) {
	password, err := randomPassword()
	if err != nil {
		return nil, err
	}
	rules, err := aclRules(g.App, g.Access, password)
	if err != nil {
		return nil, fmt.Errorf("grant %s on redis %s: %w", g.App, inst.Name, err)
	}
	opt, err := adminOptions(inst)
	if err != nil {
		return nil, err
	}
	name := userName(inst, g.App)
	c := goredis.NewClient(opt)
	defer c.Close()
	if err := c.ACLSetUser(ctx, name, rules...).Err(); err != nil {
		return nil, fmt.Errorf("grant %s on redis %s: acl setuser: %w", g.App, inst.Name, err)
	}
	if err := c.Do(ctx, "ACL", "SAVE").Err(); err != nil {
		return nil, fmt.Errorf("grant %s on redis %s: acl save: %w", g.App, inst.Name, err)
	}
	d.cfg.Log.Info("redis access granted", "resource", inst.Name, "app", g.App, "access", g.Access, "user", name)
	return credentials(inst, opt, name, password, g.App), nil
}

// credentials are what an app gets: the address apps use (inst.Host for a
// managed server, the admin URL's host for an external one).
func credentials(inst resources.Instance, admin *goredis.Options, user, password, app string) resources.Credentials {
	host, port, scheme, db := inst.Host, strconv.Itoa(inst.Port), "redis", 0
	if isExternal(inst) {
		host, port, _ = net.SplitHostPort(admin.Addr)
		db = admin.DB
		if admin.TLSConfig != nil {
			scheme = "rediss"
		}
	}
	u := url.URL{
		Scheme: scheme,
		User:   url.UserPassword(user, password),
		Host:   net.JoinHostPort(host, port),
		Path:   "/" + strconv.Itoa(db),
	}
	return resources.Credentials{
		"host":       host,
		"port":       port,
		"user":       user,
		"password":   password,
		"url":        u.String(),
		"key_prefix": app + ":",
	}
}

// Revoke deletes the ACL user of g.App and ends its connections. It is a
// no-op for a user that is gone.
func (d *Driver) Revoke(ctx context.Context, inst resources.Instance, g resources.Grant, _ resources.Credentials) error {
	opt, err := adminOptions(inst)
	if err != nil {
		return err
	}
	c := goredis.NewClient(opt)
	defer c.Close()
	name := userName(inst, g.App)
	if err := deleteUser(ctx, c, name); err != nil {
		return fmt.Errorf("revoke %s on redis %s: %w", g.App, inst.Name, err)
	}
	if err := c.Do(ctx, "ACL", "SAVE").Err(); err != nil {
		return fmt.Errorf("revoke %s on redis %s: acl save: %w", g.App, inst.Name, err)
	}
	d.cfg.Log.Info("redis access revoked", "resource", inst.Name, "app", g.App, "user", name)
	return nil
}

// deleteUser switches the user off first, so no new session can start
// between killing its connections and deleting it.
func deleteUser(ctx context.Context, c *goredis.Client, name string) error {
	err := c.Do(ctx, "ACL", "GETUSER", name).Err()
	if errors.Is(err, goredis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("acl getuser: %w", err)
	}
	if err := c.ACLSetUser(ctx, name, "off").Err(); err != nil {
		return fmt.Errorf("acl setuser off: %w", err)
	}
	if err := c.ClientKillByFilter(ctx, "USER", name).Err(); err != nil {
		return fmt.Errorf("client kill: %w", err)
	}
	if err := c.ACLDelUser(ctx, name).Err(); err != nil {
		return fmt.Errorf("acl deluser: %w", err)
	}
	return nil
}

// userName is the ACL user of app's connection. A managed server belongs to
// one resource; on an external server the name carries the resource too
// ("." cannot occur in pier names), so Destroy finds exactly its own users.
func userName(inst resources.Instance, app string) string {
	if isExternal(inst) {
		return externalPrefix(inst) + app
	}
	return "app-" + app
}

func externalPrefix(inst resources.Instance) string { return "pier-" + inst.Name + "." }

// adminOptions are the client options of the resource's admin: pier-admin
// on the loopback address of a managed server, or the admin URL.
func adminOptions(inst resources.Instance) (*goredis.Options, error) {
	if !isExternal(inst) {
		return managedAdminOptions(inst), nil
	}
	s, _ := inst.Params["admin_url"].(string)
	opt, err := goredis.ParseURL(s)
	if err != nil {
		return nil, fmt.Errorf("redis %s: admin_url: %w (expected redis://user:password@host:port)", inst.Name, err)
	}
	opt.DisableIdentity = true
	opt.DialTimeout = 5 * time.Second
	return opt, nil
}

func managedAdminOptions(inst resources.Instance) *goredis.Options {
	addr := ""
	if len(inst.Listen) > 0 {
		addr = net.JoinHostPort(inst.Listen[0], strconv.Itoa(inst.Port))
	}
	return &goredis.Options{
		Addr:            addr,
		Username:        adminUser,
		Password:        inst.Admin["password"],
		DisableIdentity: true,
		DialTimeout:     2 * time.Second,
		PoolSize:        2,
	}
}

// ping opens a fresh connection and PINGs: a pooled client would back off
// after failed dials while the server is still starting. A plain TCP dial
// goes first so that a server not yet listening does not make go-redis log
// its dial retries.
func ping(ctx context.Context, opt *goredis.Options) error {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", opt.Addr)
	if err != nil {
		return err
	}
	conn.Close()
	o := *opt
	o.MaxRetries = -1
	o.DialerRetries = 1
	o.PoolSize = 1
	// Short: whatever listens on the port must answer at once.
	o.ReadTimeout, o.WriteTimeout = time.Second, time.Second
	c := goredis.NewClient(&o)
	defer c.Close()
	return c.Ping(ctx).Err()
}

// randomPassword returns 256 random bits, URL-safe (43 characters).
func randomPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// passwordHash is the form of a password in an ACL file ("#<hash>").
func passwordHash(p string) string {
	h := sha256.Sum256([]byte(p))
	return hex.EncodeToString(h[:])
}
