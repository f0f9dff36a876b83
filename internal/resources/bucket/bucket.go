// Package bucket is the bucket resource type: S3-compatible buckets served
// by one embedded versitygw gateway (POSIX backend) per pier server.
//
// The Driver owns the gateway. It starts on first use (Open, or any Driver
// method) on the configured addresses and port and runs until Close; if it
// dies, the next call (pier calls Start every few seconds) starts it again.
// versitygw allows one gateway per process, so there is one Driver per
// process at a time.
//
// Buckets belong to the gateway's root account, which only pier uses. A
// connection gets an IAM account of its own (role "user", never admin) and a
// statement in the bucket's policy naming that account's access key, with
// exactly the actions of its access level. Accounts live in memory and are
// persisted through the caller's AccountStore, so their secrets are stored
// the way the caller stores secrets (encrypted, in pier); versitygw's own
// plaintext IAM file is not used.
//
// Process-wide side effect: versitygw's POSIX backend changes the working
// directory to Dir/data when the gateway starts and resolves bucket paths
// relative to it. Nothing else in the process may call os.Chdir, and
// relative paths must not be used after the gateway has started.
package bucket

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pier-dev/pier/internal/resources"
)

// ErrClosed is returned by every method once Close has been called.
var ErrClosed = errors.New("bucket gateway closed")

// Config configures the gateway. Dir, Listen, RootAccess, RootSecret and
// Accounts are required.
type Config struct {
	// Dir holds the gateway's data: bucket contents under Dir/data, old
	// object versions under Dir/versions, the admin socket and the chosen
	// port. Created with mode 0700; made absolute.
	Dir string
	// Listen are the addresses the gateway listens on, nowhere else:
	// loopback first (the driver administers through it), then the
	// machines' gateway IP when apps run in isolated machines.
	Listen []string
	// Port is the gateway's TCP port on every Listen address. 0 picks a
	// free one on first start and keeps it in Dir/port.
	Port int
	// Host is the address apps use to reach the gateway. Defaults to
	// Listen[0].
	Host string
	// Region is the region clients must sign requests for. Defaults to
	// us-east-1.
	Region string
	// RootAccess and RootSecret are the gateway's root (admin) key pair.
	// pier generates and stores them; they never reach a connection.
	RootAccess, RootSecret string
	// Accounts persists the IAM accounts of connections.
	Accounts AccountStore
	// Log receives the driver's logs. versitygw's own logging is off.
	Log *slog.Logger
}

// Driver is the bucket resource type and the owner of the gateway.
type Driver struct {
	cfg   Config
	log   *slog.Logger
	port  int
	iam   *iamService
	admin *s3.Client // root client, through Listen[0]

	mu     sync.Mutex // guards gw, closed and wd
	gw     *gateway
	closed bool
	wd     string // working directory before the first gateway start

	// policyMu serialises read-modify-write of bucket policies and the
	// accounts they name.
	policyMu sync.Mutex
}

var _ resources.Driver = (*Driver)(nil)

// New checks cfg, fills in defaults, creates Dir and settles the port. It
// does not start the gateway.
func New(cfg Config) (*Driver, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create gateway directory: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create gateway directory: %w", err)
	}
	port, err := resolvePort(cfg)
	if err != nil {
		return nil, err
	}
	d := &Driver{
		cfg:  cfg,
		log:  cfg.Log,
		port: port,
		iam:  newIAMService(cfg.Accounts, cfg.RootAccess, cfg.RootSecret),
	}
	d.admin = s3.New(s3.Options{
		Region:       cfg.Region,
		BaseEndpoint: aws.String("http://" + net.JoinHostPort(cfg.Listen[0], strconv.Itoa(port))),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(cfg.RootAccess, cfg.RootSecret, ""),
	})
	return d, nil
}

func (c *Config) setDefaults() error {
	switch {
	case c.Dir == "":
		return errors.New("bucket gateway: Dir is required")
	case len(c.Listen) == 0:
		return errors.New("bucket gateway: Listen is required")
	case c.RootAccess == "" || c.RootSecret == "":
		return errors.New("bucket gateway: RootAccess and RootSecret are required")
	case c.Accounts == nil:
		return errors.New("bucket gateway: Accounts is required")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return fmt.Errorf("bucket gateway directory: %w", err)
	}
	c.Dir = dir
	c.Listen = append([]string(nil), c.Listen...)
	if c.Host == "" {
		c.Host = c.Listen[0]
	}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Endpoint is the URL apps use: http://Host:Port.
func (d *Driver) Endpoint() string {
	return "http://" + net.JoinHostPort(d.cfg.Host, strconv.Itoa(d.port))
}

// Port is the gateway's TCP port.
func (d *Driver) Port() int { return d.port }

// Open starts the gateway unless it is running. It is cheap when it runs,
// and restarts a gateway that has died.
func (d *Driver) Open(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.gw != nil {
		if !d.gw.exited() {
			return nil
		}
		d.log.Error("bucket gateway stopped; restarting", "err", d.gw.err)
		d.gw = nil
	}
	if d.wd == "" {
		d.wd, _ = os.Getwd()
	}
	gw, err := d.startGateway(ctx)
	if err != nil {
		return err
	}
	d.gw = gw
	return nil
}

// Close stops the gateway, waits until it has released its ports and
// embedgw's one-per-process slot, and changes back to the working directory
// the process had before the gateway started. The Driver is unusable
// afterwards.
func (d *Driver) Close() error {
	d.mu.Lock()
	d.closed = true
	gw, wd := d.gw, d.wd
	d.gw = nil
	d.mu.Unlock()
	if gw == nil {
		return nil
	}
	gw.stop()
	d.log.Info("bucket gateway stopped")
	// Undo the posix backend's chdir, so the process does not sit in a
	// directory its owner may delete.
	if wd != "" {
		if err := os.Chdir(wd); err != nil {
			return fmt.Errorf("restore working directory: %w", err)
		}
	}
	return nil
}

// Info describes the bucket type.
func (d *Driver) Info() resources.TypeInfo {
	return resources.TypeInfo{
		Name:        "bucket",
		Description: "S3-compatible object storage bucket, served by pier's built-in gateway",
		Schema:      json.RawMessage(schema),
		Provides: []string{"host", "port", "user", "password", "url", "bucket",
			"access_key_id", "secret_access_key", "endpoint", "region"},
		Access: []resources.Access{resources.ReadWrite, resources.Read},
		Conventional: map[string]string{
			"AWS_ACCESS_KEY_ID":     "access_key_id",
			"AWS_SECRET_ACCESS_KEY": "secret_access_key",
			"AWS_ENDPOINT_URL_S3":   "endpoint",
			"AWS_REGION":            "region",
			"BUCKET_NAME":           "bucket",
		},
	}
}

const schema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "bucket_name": {
      "type": "string",
      "description": "S3 name of the bucket; defaults to the resource name (prefixed with pier- when shorter than 3 characters)",
      "minLength": 3,
      "maxLength": 63,
      "pattern": "^[a-z0-9][a-z0-9.-]*[a-z0-9]$"
    },
    "versioning": {
      "type": "boolean",
      "description": "keep every version of overwritten and deleted objects",
      "default": false
    }
  }
}`

// bucketRE is the S3 naming rule the gateway enforces, minus its special
// cases (IP-like names, reserved prefixes), which it rejects itself.
var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// bucketName is the bucket_name parameter, or the resource's name.
func bucketName(inst resources.Instance) (string, error) {
	name, _ := inst.Params["bucket_name"].(string)
	if name == "" {
		name = inst.Name
		if len(name) < 3 {
			name = "pier-" + name
		}
	}
	if !bucketRE.MatchString(name) || strings.Contains(name, "..") {
		return "", fmt.Errorf("bucket name %q breaks S3 naming rules (3-63 lowercase letters, digits, dots and dashes, starting and ending with a letter or digit): set bucket_name", name)
	}
	return name, nil
}

// Provision creates the bucket, owned by the root account and tagged with
// the resource's name. It returns the bucket name and the endpoint.
func (d *Driver) Provision(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	name, err := bucketName(inst)
	if err != nil {
		return nil, err
	}
	if err := d.Open(ctx); err != nil {
		return nil, err
	}
	created, err := d.createBucket(ctx, name, inst.Name)
	if err != nil {
		return nil, err
	}
	if err := d.configureBucket(ctx, name, inst); err != nil {
		if created {
			if derr := d.deleteBucket(ctx, name); derr != nil {
				d.log.Error("remove half-provisioned bucket", "bucket", name, "err", derr)
			}
		}
		return nil, err
	}
	d.log.Info("bucket provisioned", "resource", inst.Name, "bucket", name)
	return map[string]string{"bucket": name, "endpoint": d.Endpoint()}, nil
}

// Start makes sure the gateway runs; every bucket is served by it.
func (d *Driver) Start(ctx context.Context, _ resources.Instance) error {
	return d.Open(ctx)
}

// Stop does nothing: the gateway serves all buckets and stops with Close.
// A stopped bucket's credentials keep working.
func (d *Driver) Stop(context.Context, resources.Instance) error { return nil }

// Destroy deletes every object, version and pending upload of the bucket,
// the bucket itself and the accounts granted on it. A bucket tagged as
// another resource's is left alone.
func (d *Driver) Destroy(ctx context.Context, inst resources.Instance) error {
	name, err := bucketName(inst)
	if err != nil {
		return nil // never provisioned
	}
	if err := d.Open(ctx); err != nil {
		return err
	}
	d.policyMu.Lock()
	defer d.policyMu.Unlock()
	owner, exists, err := d.bucketOwner(ctx, name)
	if err != nil {
		return err
	}
	if exists && owner != "" && owner != inst.Name {
		return nil
	}
	if exists {
		if err := d.emptyBucket(ctx, name); err != nil {
			return err
		}
		if err := d.deleteBucket(ctx, name); err != nil {
			return err
		}
	}
	if err := d.iam.remove(ctx, func(a Account) bool { return a.Bucket == name }); err != nil {
		return fmt.Errorf("destroy bucket %s: %w", name, err)
	}
	d.log.Info("bucket destroyed", "resource", inst.Name, "bucket", name)
	return nil
}

// Grant creates an account for g.App with g.Access on the bucket alone. A
// second grant for the same app replaces the first (its keys stop working),
// which also cleans up after a Grant interrupted by a crash.
func (d *Driver) Grant(ctx context.Context, inst resources.Instance, g resources.Grant) (resources.Credentials, error) {
	if g.Access != resources.Read && g.Access != resources.ReadWrite {
		return nil, fmt.Errorf("bucket access %q: use read or readwrite", g.Access)
	}
	name, err := bucketName(inst)
	if err != nil {
		return nil, err
	}
	if err := d.Open(ctx); err != nil {
		return nil, err
	}
	d.policyMu.Lock()
	defer d.policyMu.Unlock()

	acct := Account{AccessKeyID: newAccessKeyID(), Secret: newSecret(), Role: "user",
		Bucket: name, App: g.App, Access: string(g.Access)}
	if err := d.iam.add(ctx, acct); err != nil {
		return nil, fmt.Errorf("grant %s on bucket %s: %w", g.App, name, err)
	}
	old := d.iam.find(func(a Account) bool {
		return a.Bucket == name && a.App == g.App && a.AccessKeyID != acct.AccessKeyID
	})
	if err := d.updatePolicy(ctx, name, func(p policy) (policy, error) {
		return p.without(statementID(g.App), accessKeys(old)...).with(grantStatement(name, g.App, acct.AccessKeyID, g.Access))
	}); err != nil {
		if rerr := d.iam.remove(ctx, func(a Account) bool { return a.AccessKeyID == acct.AccessKeyID }); rerr != nil {
			d.log.Error("remove account of failed grant", "app", g.App, "bucket", name, "err", rerr)
		}
		return nil, fmt.Errorf("grant %s on bucket %s: %w", g.App, name, err)
	}
	if err := d.removeAccounts(ctx, old); err != nil {
		return nil, fmt.Errorf("grant %s on bucket %s: %w", g.App, name, err)
	}
	return d.credentials(name, acct), nil
}

// Revoke removes the app's statement from the bucket policy and deletes its
// accounts; their keys get InvalidAccessKeyId from then on.
func (d *Driver) Revoke(ctx context.Context, inst resources.Instance, g resources.Grant, c resources.Credentials) error {
	name, err := bucketName(inst)
	if err != nil {
		return nil
	}
	if err := d.Open(ctx); err != nil {
		return err
	}
	d.policyMu.Lock()
	defer d.policyMu.Unlock()

	accts := d.iam.find(func(a Account) bool {
		return a.Bucket == name && (a.App == g.App || a.AccessKeyID == c["access_key_id"])
	})
	// The policy goes first: the gateway rejects a policy naming an
	// account that does not exist.
	if err := d.updatePolicy(ctx, name, func(p policy) (policy, error) {
		return p.without(statementID(g.App), append(accessKeys(accts), c["access_key_id"])...), nil
	}); err != nil && !isCode(err, "NoSuchBucket") {
		return fmt.Errorf("revoke %s on bucket %s: %w", g.App, name, err)
	}
	if err := d.removeAccounts(ctx, accts); err != nil {
		return fmt.Errorf("revoke %s on bucket %s: %w", g.App, name, err)
	}
	return nil
}

func (d *Driver) removeAccounts(ctx context.Context, accts []Account) error {
	keys := accessKeys(accts)
	return d.iam.remove(ctx, func(a Account) bool {
		for _, k := range keys {
			if a.AccessKeyID == k {
				return true
			}
		}
		return false
	})
}

func accessKeys(accts []Account) []string {
	keys := make([]string, len(accts))
	for i, a := range accts {
		keys[i] = a.AccessKeyID
	}
	return keys
}

// credentials are the artifact fields of one connection.
func (d *Driver) credentials(bucket string, a Account) resources.Credentials {
	endpoint := d.Endpoint()
	return resources.Credentials{
		"host":              d.cfg.Host,
		"port":              strconv.Itoa(d.port),
		"user":              a.AccessKeyID,
		"password":          a.Secret,
		"url":               endpoint + "/" + bucket,
		"bucket":            bucket,
		"access_key_id":     a.AccessKeyID,
		"secret_access_key": a.Secret,
		"endpoint":          endpoint,
		"region":            d.cfg.Region,
	}
}

// newAccessKeyID returns 20 characters in AWS's style: "PIER" and 16 random
// base32 characters (80 bits).
func newAccessKeyID() string { return "PIER" + rand.Text()[:16] }

// newSecret returns 40 random base32 characters (200 bits).
func newSecret() string { return (rand.Text() + rand.Text())[:40] }
