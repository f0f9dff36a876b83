// Package server assembles and runs `pier server`: state store, keyring,
// builder, runtime driver, supervisor, edge proxy and API, with a graceful
// shutdown that drains traffic and stops every machine.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/auth"
	"github.com/pier-dev/pier/internal/baseimage"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/certs"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/image"
	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/proxy"
	"github.com/pier-dev/pier/internal/registry"
	"github.com/pier-dev/pier/internal/runtime/process"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
	"github.com/pier-dev/pier/internal/supervisor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is the server's configuration (the flags of `pier server`).
type Config struct {
	DataDir  string
	APIAddr  string
	HTTPAddr string
	Domain   string
	// ServersDir is the servers root under which, when pier runs as root,
	// managed resource servers (postgres, redis-server) keep their files,
	// apart from the data dir that stays root's alone (default
	// DefaultServersDir). Unused when pier is not root: servers then run
	// as pier's user, under <DataDir>/resources.
	ServersDir string
	// Runtime is "auto" (runc for apps and machines when the host can run
	// it), "runc" (required) or "process" (apps as host processes, no
	// machines API).
	Runtime string
	// Subnet and Bridge are the machines' network (runc runtime).
	Subnet, Bridge string
	// MachineDiskMB is the default size of a machine's writable layer
	// (runc runtime; 0 for the driver's default).
	MachineDiskMB int
	// ServiceSubnet holds the apps' service addresses (<app>.internal)
	// and MeshPort is the mesh's outbound port on the machines' gateway
	// (runc runtime). TrustDomain names the mesh identities
	// (spiffe://<trust domain>/app/<app>), valid for MeshCertTTL.
	ServiceSubnet string
	MeshPort      int
	TrustDomain   string
	MeshCertTTL   time.Duration
	// BaseCache holds the base images assembled from the host's packages
	// (default <DataDir>/images/bases).
	BaseCache string
	// KeepReleases is how many releases per app keep their builds and
	// images (default 10).
	KeepReleases int
	// MachineIdleTimeout is how long an app without traffic keeps API
	// machines whose service autostops (0: the default, 5m).
	MachineIdleTimeout time.Duration
	// HTTPSAddr, if set, is where the edge also serves HTTPS: custom domains
	// with ACME certificates, and <app>.<domain> on local domains with
	// certificates from pier's CA (LocalCA).
	HTTPSAddr string
	// ACMECA is the ACME directory (default: Let's Encrypt production),
	// ACMEEmail the account's contact, and ACMECARoot a PEM file of a CA
	// to trust when talking to the ACME server (a private one, like pebble).
	ACMECA, ACMEEmail, ACMECARoot string
	// RenewCheckInterval and RenewalWindowRatio tune certificate renewal
	// (0: certmagic's defaults, every 10m and at 1/3 of the lifetime left).
	RenewCheckInterval time.Duration
	RenewalWindowRatio float64
	// LocalCA certifies local domains; nil: the mesh's CA.
	LocalCA certs.LocalCA
	// SaveCredentials writes the CLI credentials file for the local user.
	SaveCredentials bool
	Log             *slog.Logger
	// Ready, if set, is called once both listeners are up.
	Ready func(apiURL string)
}

// DefaultDataDir is /var/lib/pier for root, else ~/.local/share/pier.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/pier"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "pier")
	}
	return ".pier-data"
}

// Run serves until ctx is done, then shuts down gracefully.
func Run(ctx context.Context, c Config) error {
	log := c.Log
	var err error
	// The server's heap is small and the proxy allocates per request: a
	// higher GC target trades a few MB for much less collection work
	// (bench/RESULTS.md). GOGC still overrides it.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// Absolute: the bucket gateway changes the process's working directory.
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir %s: %w", c.DataDir, err)
	}
	unlock, err := lockDataDir(c.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := privateDataDir(c.DataDir); err != nil {
		return err
	}
	resDir, err := resourceDir(c)
	if err != nil {
		return err
	}

	st, err := store.Open(ctx, filepath.Join(c.DataDir, "state.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	keys, err := secrets.Load(filepath.Join(c.DataDir, "keys"))
	if err != nil {
		return err
	}
	token, err := auth.LoadOrCreateToken(c.DataDir)
	if err != nil {
		return err
	}
	hub, err := logs.NewHub(filepath.Join(c.DataDir, "logs"))
	if err != nil {
		return err
	}
	defer hub.Close()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	edge := proxy.New(c.Domain, proxy.NewMetrics(reg), log.With("component", "proxy"))
	// Apps and machines run isolated under runc when the host allows it
	// (or --runtime runc demands it); otherwise apps run as host processes
	// and the machines API answers 503 saying what is missing.
	isolated, err := isolatedRuntime(c, log)
	if err != nil {
		return err
	}
	builder := &build.Builder{Dir: filepath.Join(c.DataDir, "builds")}
	// The mesh carries app-to-app calls between isolated machines; the
	// plane, made below, decides who may call whom.
	var plane *control.Plane
	var gateway netip.Addr
	if isolated != nil {
		gateway = isolated.Gateway()
	}
	mp, err := newMesh(ctx, c, keys, reg, gateway, func(src, dst string) bool { return plane.Allowed(src, dst) }, log)
	if err != nil {
		return err
	}
	supCfg := supervisor.Config{
		Router: edge, Recorder: st, Logs: hub, Log: log.With("component", "supervisor"),
		Artifact: func(app, id string) string { return builder.Path(app, id) }, Self: self,
	}
	if mp.mesh != nil {
		supCfg.Router, supCfg.Mesh = routers{edge, mp.mesh}, mp.mesh
	}
	// Release images, served read-only to registry clients under /v2/.
	releaseImages, err := imagestore.Open(filepath.Join(c.DataDir, "images", "oci"))
	if err != nil {
		return err
	}
	var cleaner control.Cleaner
	if isolated != nil {
		hostfs, err := supervisor.NewHostFS(filepath.Join(c.DataDir, "hostfs"), self)
		if err != nil {
			return fmt.Errorf("app machines' root filesystem: %w", err)
		}
		if hostfs.Under(c.DataDir) {
			return fmt.Errorf("data dir %s lies in a host directory that machines see read-only: choose another --data-dir, e.g. /var/lib/pier", c.DataDir)
		}
		supCfg.Driver, supCfg.HostFS, cleaner = isolated, hostfs, isolated
		// Build steps are untrusted code: they run in build machines.
		builder.Sandbox = &build.Sandbox{Machines: isolated, Root: hostfs.FS, CacheDir: filepath.Join(c.DataDir, "cache")}
		// Builds become self-contained OCI images, which machines run on.
		if c.BaseCache == "" {
			c.BaseCache = filepath.Join(c.DataDir, "images", "bases")
		}
		// Go's standard library, compiled once, seeds each Go app's cache;
		// like the bases it derives from the host's toolchain alone.
		builder.Sandbox.SeedDir = filepath.Join(c.BaseCache, "toolchains")
		builder.Images = &build.Imager{Bases: baseimage.New(c.BaseCache, log.With("component", "bases")), Store: releaseImages,
			Self: self, Dir: filepath.Join(c.DataDir, "images", "layers"),
			Unpack: &image.Store{Dir: filepath.Join(c.DataDir, "images", "releases"), Log: log.With("component", "images")}}
		supCfg.Lowers = builder.Images
	} else {
		log.Warn("builds run on the host as this server's user, without isolation: run pier server as root with runc installed (--runtime runc) to build in isolated build machines")
		pd := process.New()
		supCfg.Driver, cleaner = pd, pd
	}
	// The plane, made below, knows which resource ports each app may reach.
	var hostPorts func(app string) []int
	supCfg.HostPorts = func(app string) []int { return hostPorts(app) }
	sup := supervisor.New(supCfg)
	imgs := images{store: &image.Store{Dir: filepath.Join(c.DataDir, "images"), Log: log.With("component", "images")},
		releases: st, hostfs: supCfg.HostFS, lowers: supCfg.Lowers, artifact: supCfg.Artifact}
	var machDriver machines.Driver // a nil interface (not a nil *runc.Driver) without runc
	if isolated != nil {
		machDriver = isolated
	}
	mach := machines.New(machDriver, imgs, st, hub, log.With("component", "machines"))
	mach.Router = edge
	if mp.mesh != nil {
		// The edge proxy reaches machines only through the mesh, over
		// mutual TLS with its own identity; the mesh records the requests.
		edge.UseMesh(mp.mesh.EdgeTransport())
		mach.Router = routers{edge, mp.mesh}
	}
	if c.MachineIdleTimeout > 0 {
		mach.IdleTimeout = c.MachineIdleTimeout
	}
	// Managed resources listen on loopback, and on the machines' gateway
	// when apps run isolated; connected machines are let through to their
	// ports alone (supervisor.Config.HostPorts).
	rnet := control.ResourceNet{Listen: []string{"127.0.0.1"}, Host: "127.0.0.1"}
	if isolated != nil {
		gw := isolated.Gateway().String()
		rnet = control.ResourceNet{Listen: []string{"127.0.0.1", gw}, Host: gw}
	}
	types, closeTypes, err := resourceTypes(c.DataDir, rnet, keys, log)
	if err != nil {
		return err
	}
	defer closeTypes()
	plane = &control.Plane{Store: st, Builder: builder, Keys: keys, Supervisor: sup, Proxy: edge, Logs: hub,
		Log: log, TempDir: filepath.Join(c.DataDir, "tmp"), Resources: types, ResourceNet: rnet,
		ResourceDir: resDir, BackupDir: filepath.Join(c.DataDir, "backups"),
		CA: mp.ca, Metrics: mp.metrics}
	if err := plane.MoveResourceDirs(ctx, filepath.Join(c.DataDir, "resources")); err != nil {
		return err
	}
	if mp.mesh != nil {
		plane.Mesh, plane.ServiceSubnet = mp.mesh, mp.subnet
	}
	hostPorts = plane.HostPorts
	plane.Images, plane.KeepReleases = releaseImages, c.KeepReleases
	imageRegistry := registry.New(plane.Images, token)
	imageRegistry.Log = log.With("component", "registry")

	apiLn, err := net.Listen("tcp", c.APIAddr)
	if err != nil {
		return fmt.Errorf("API address %s: %w (is another pier server running? use --api-addr)", c.APIAddr, err)
	}
	httpLn, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("HTTP address %s: %w (use --http-addr to pick another)", c.HTTPAddr, err)
	}
	var httpsLn net.Listener
	if c.HTTPSAddr != "" {
		if httpsLn, err = net.Listen("tcp", c.HTTPSAddr); err != nil {
			apiLn.Close()
			httpLn.Close()
			return fmt.Errorf("HTTPS address %s: %w (use --https-addr to pick another)", c.HTTPSAddr, err)
		}
		defer httpsLn.Close() // Serve closes it too; this covers the early returns
	}
	if c.LocalCA == nil {
		c.LocalCA = mp.ca
	}
	certMgr, err := openCerts(ctx, c, st, edge, httpLn, httpsLn, log)
	if err != nil {
		apiLn.Close()
		httpLn.Close()
		return err
	}
	defer certMgr.Close()
	plane.AppDestroyed = certMgr.AppDestroyed
	apiURL := "http://" + dialable(apiLn.Addr())
	httpPort := httpLn.Addr().(*net.TCPAddr).Port
	appURL := func(app string) string {
		if httpPort == 80 {
			return fmt.Sprintf("http://%s.%s/", app, c.Domain)
		}
		return fmt.Sprintf("http://%s.%s:%d/", app, c.Domain, httpPort)
	}

	edge.Wake = func(app string) {
		plane.Wake(app)
		mach.Wake(app)
	}
	edge.Record = func(app, machine string, r *http.Request, code int, d time.Duration, out int64) {
		if mp.mesh != nil && machine != "" {
			return // the mesh's callee side recorded it
		}
		mp.metrics.Request(metrics.Edge{Src: metrics.FromEdge, Dst: app}, machine, metrics.Route{Method: r.Method, Path: r.URL.Path}, code, false, d, max(r.ContentLength, 0), out)
	}
	meshCtx, stopMesh := context.WithCancel(ctx)
	defer stopMesh()
	if mp.mesh != nil {
		mp.mesh.SetWake(plane.Wake)
	}
	go mp.run(meshCtx, log)

	// Resources first: apps expect their databases when they start.
	if err := plane.StartResources(ctx); err != nil {
		apiLn.Close()
		httpLn.Close()
		return fmt.Errorf("start resources: %w", err)
	}
	if err := plane.Restore(ctx, cleaner); err != nil {
		apiLn.Close()
		httpLn.Close()
		sup.Shutdown(0)
		return fmt.Errorf("restore apps: %w", err)
	}
	if isolated != nil {
		if err := mach.Restore(ctx, isolated); err != nil {
			apiLn.Close()
			httpLn.Close()
			sup.Shutdown(0)
			mach.Shutdown(0)
			return fmt.Errorf("restore machines: %w", err)
		}
	}
	apiSrv := &http.Server{
		Handler:           (&api.Server{Plane: plane, Log: log.With("component", "api"), Token: token, URL: appURL, Machines: mach, Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), Certs: certMgr, Registry: imageRegistry}).Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// Requests see the server's context, so long streams (logs -f) end
		// at shutdown instead of holding it up; deploys detach from it.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // h2c, for clients that speak it with prior knowledge
	httpSrv := &http.Server{
		Handler:           edge,
		Protocols:         &protocols,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	autostopCtx, stopAutostop := context.WithCancel(ctx)
	autostopDone := make(chan struct{})
	go func() {
		defer close(autostopDone)
		var wg sync.WaitGroup
		wg.Add(3)
		go func() { defer wg.Done(); plane.RunAutostop(autostopCtx, time.Second, edge.Idle) }()
		go func() { defer wg.Done(); plane.RunResources(autostopCtx, 5*time.Second) }()
		go func() { defer wg.Done(); mach.RunAutostop(autostopCtx, time.Second, edge.Idle) }()
		wg.Wait()
	}()
	var httpsSrv *http.Server
	if httpsLn != nil {
		// ACME challenges and force_https redirects come in over plain HTTP.
		httpSrv.Handler = certMgr.HTTPHandler(edge)
		httpsSrv = &http.Server{
			Handler:           edge,
			TLSConfig:         certMgr.TLSConfig(),
			ReadHeaderTimeout: httpSrv.ReadHeaderTimeout,
			IdleTimeout:       httpSrv.IdleTimeout,
			ErrorLog:          httpSrv.ErrorLog, // failed handshakes of scanners are no news
		}
	}
	errs := make(chan error, 3)
	go func() { errs <- serve(apiSrv, apiLn) }()
	go func() { errs <- serve(httpSrv, httpLn) }()
	if httpsSrv != nil {
		go func() { errs <- serveTLS(httpsSrv, httpsLn) }()
	}
	certMgr.Manage() // the HTTP listener serves: challenges can be answered

	if c.SaveCredentials {
		if path, err := auth.SaveCredentials(auth.Credentials{API: apiURL, Token: token}); err != nil {
			log.Warn("could not save CLI credentials; set PIER_API and PIER_TOKEN instead", "err", err)
		} else {
			log.Info("saved CLI credentials", "path", path)
		}
	}
	log.Info("pier server ready", "api", apiURL, "http", httpLn.Addr().String(), "https", c.HTTPSAddr, "domain", c.Domain, "data_dir", c.DataDir)
	if c.Ready != nil {
		c.Ready(apiURL)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	log.Info("shutting down: draining traffic and stopping machines")
	stopAutostop()
	<-autostopDone
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	httpSrv.Shutdown(shutCtx)
	if httpsSrv != nil {
		httpsSrv.Shutdown(shutCtx)
	}
	apiSrv.Shutdown(shutCtx)
	sup.Shutdown(0)
	mach.Shutdown(10 * time.Second)
	log.Info("stopped")
	return runErr
}

func serve(s *http.Server, ln net.Listener) error {
	if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func serveTLS(s *http.Server, ln net.Listener) error {
	if err := s.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// dialable turns a listen address into one a client can dial: an
// unspecified host becomes loopback.
func dialable(a net.Addr) string {
	ta := a.(*net.TCPAddr)
	host := ta.IP.String()
	if ta.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(ta.Port))
}

// lockDataDir makes sure only one server uses a data dir.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "server.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another pier server is using %s (stop it first, or pass --data-dir)", dir)
	}
	return func() { f.Close() }, nil
}
