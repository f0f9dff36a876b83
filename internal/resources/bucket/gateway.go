package bucket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/versity/versitygw/backend/meta"
	"github.com/versity/versitygw/backend/posix"
	"github.com/versity/versitygw/embedgw"
	"github.com/versity/versitygw/s3api"
)

// Layout of Config.Dir. The posix backend refuses versioning and sidecar
// directories inside its root, hence the siblings.
const (
	dataDir     = "data"       // posix backend root: one directory per bucket
	versionsDir = "versions"   // old object versions of versioned buckets
	metaDir     = "meta"       // object metadata when the filesystem lacks user xattrs
	adminSocket = "admin.sock" // the gateway's admin API, kept off the TCP port
	portFile    = "port"       // the port chosen when Config.Port is 0
)

// gateway is one run of the embedded versitygw server. done is closed when
// RunVersityGW returns; err is its result and is set before done closes.
type gateway struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (g *gateway) exited() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// stop ends the run and waits for the gateway's shutdown to finish, which
// releases embedgw's one-per-process slot and the listening ports.
func (g *gateway) stop() {
	g.cancel()
	<-g.done
}

// startGateway starts versitygw and returns once it accepts connections.
// It runs on a context of its own: ctx bounds only the wait for readiness.
func (d *Driver) startGateway(ctx context.Context) (*gateway, error) {
	if err := d.iam.load(ctx); err != nil {
		return nil, err
	}
	be, err := d.newBackend()
	if err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	cfg := d.gatewayConfig(func() { close(ready) })

	runCtx, cancel := context.WithCancel(context.Background())
	gw := &gateway{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(gw.done)
		gw.err = embedgw.RunVersityGW(runCtx, be, cfg)
	}()

	select {
	case <-ready:
		d.log.Info("bucket gateway started", "endpoint", d.Endpoint(), "listen", cfg.Ports)
		return gw, nil
	case <-gw.done:
		cancel()
		// RunVersityGW shuts the backend down only on its normal exit
		// path; closing it again is harmless.
		be.Shutdown()
		return nil, fmt.Errorf("start bucket gateway: %w", gw.err)
	case <-ctx.Done():
		gw.stop()
		return nil, fmt.Errorf("start bucket gateway: %w", ctx.Err())
	}
}

// gatewayConfig is the embedgw configuration: S3 on the configured
// addresses, the admin API on a unix socket in Dir, our IAM service, and
// nothing printed.
func (d *Driver) gatewayConfig(onListen func()) *embedgw.Config {
	ports := make([]string, len(d.cfg.Listen))
	for i, addr := range d.cfg.Listen {
		ports[i] = net.JoinHostPort(addr, strconv.Itoa(d.port))
	}
	return &embedgw.Config{
		RootUserAccess:      d.cfg.RootAccess,
		RootUserSecret:      d.cfg.RootSecret,
		Region:              d.cfg.Region,
		Ports:               ports,
		AdminPorts:          []string{filepath.Join(d.cfg.Dir, adminSocket)},
		SocketPerm:          "0600",
		MaxConnections:      250000, // versitygw's own defaults
		MaxRequests:         100000,
		AdminMaxConnections: 64,
		AdminMaxRequests:    64,
		MultipartMaxParts:   10000,
		KeepAlive:           true,
		Quiet:               true,
		IAMService:          d.iam,
		S3Options:           []s3api.Option{s3api.WithOnListen(onListen)},
	}
}

// newBackend opens the posix backend on Dir/data.
//
// Beware: posix.New changes the process's working directory to its root
// and resolves bucket paths relative to it from then on. Nothing else in
// the process may call os.Chdir, and relative paths mean Dir/data once the
// gateway has started.
func (d *Driver) newBackend() (*posix.Posix, error) {
	root := filepath.Join(d.cfg.Dir, dataDir)
	versions := filepath.Join(d.cfg.Dir, versionsDir)
	for _, dir := range []string{root, versions} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create gateway directory: %w", err)
		}
	}
	store, err := d.metadataStore(root)
	if err != nil {
		return nil, err
	}
	opts := posix.PosixOpts{VersioningDir: versions, ValidateBucketNames: true}
	opts.SetNewDirPerm(0o700)
	opts.SetNewFilePerm(0o600)
	be, err := posix.New(root, store, opts)
	if err != nil {
		return nil, fmt.Errorf("open gateway backend: %w", err)
	}
	return be, nil
}

// metadataStore keeps object metadata in user xattrs where the filesystem
// has them (ext4, xfs, btrfs) and in sidecar files elsewhere.
func (d *Driver) metadataStore(root string) (meta.MetadataStorer, error) {
	if err := (meta.XattrMeta{}).Test(root); err == nil {
		return meta.XattrMeta{}, nil
	}
	dir := filepath.Join(d.cfg.Dir, metaDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create gateway metadata directory: %w", err)
	}
	sc, err := meta.NewSideCar(dir)
	if err != nil {
		return nil, fmt.Errorf("open gateway metadata directory: %w", err)
	}
	d.log.Info("bucket gateway: no user xattrs on this filesystem, keeping metadata in sidecar files", "dir", dir)
	return sc, nil
}

// resolvePort returns the configured port, or the one chosen on an earlier
// run, or picks one that is free on every listen address and remembers it.
func resolvePort(cfg Config) (int, error) {
	if cfg.Port != 0 {
		return cfg.Port, nil
	}
	path := filepath.Join(cfg.Dir, portFile)
	b, err := os.ReadFile(path)
	if err == nil {
		port, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || port <= 0 || port > 65535 {
			return 0, fmt.Errorf("read gateway port from %s: bad content %q", path, b)
		}
		return port, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("read gateway port: %w", err)
	}
	port, err := freePort(cfg.Listen)
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(port)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("save gateway port: %w", err)
	}
	return port, nil
}

// freePort asks the kernel for a port on the first address and checks that
// the others can bind it too.
func freePort(addrs []string) (int, error) {
	var lastErr error
	for range 10 {
		port, err := tryPort(addrs)
		if err == nil {
			return port, nil
		}
		lastErr = err
	}
	return 0, fmt.Errorf("find a free gateway port on %v: %w", addrs, lastErr)
}

func tryPort(addrs []string) (int, error) {
	first, err := net.Listen("tcp", net.JoinHostPort(addrs[0], "0"))
	if err != nil {
		return 0, err
	}
	defer first.Close()
	port := first.Addr().(*net.TCPAddr).Port
	for _, addr := range addrs[1:] {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		if err != nil {
			return 0, err
		}
		l.Close()
	}
	return port, nil
}
