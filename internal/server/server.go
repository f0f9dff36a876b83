// Package server assembles and runs `pier server`: state store, keyring,
// builder, runtime driver, machine manager, edge proxy and API, with a graceful
// shutdown that drains traffic and stops every machine.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
	"github.com/pier-dev/pier/internal/appspec"
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
	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/proxy"
	"github.com/pier-dev/pier/internal/registry"
	"github.com/pier-dev/pier/internal/rollout"
	"github.com/pier-dev/pier/internal/runtime/process"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
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
	// StopMachinesOnExit stops every machine when the server exits.
	// Without it, isolated machines run on under their monitors and the
	// next server adopts them: restarting or upgrading pier restarts no
	// app.
	StopMachinesOnExit bool
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
	// Restart, when it delivers, hands the server over to a new one: the
	// binary now at the path this one was started from, with the same
	// arguments (SIGHUP; see handoff.go).
	Restart <-chan struct{}
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

// OperationsDrain is how long a stopping server waits for the operations
// under way (a deploy, a backup) before it exits and leaves them to the
// next server to settle. It is short: while it waits, the edge's sockets
// are closed (or, on a graceful restart, wait in the new server's backlog).
const OperationsDrain = 10 * time.Second

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
	// A server taking over from another (a graceful restart) holds the
	// listening sockets first, so the old one can stop accepting; then it
	// waits for the data dir.
	in := inheritedListeners()
	defer in.close()
	var lns *listeners
	var unlock func()
	if upgrading() {
		if lns, err = openListeners(c, in); err != nil {
			return err
		}
		handedOver()
		unlock, err = lockDataDirWaiting(ctx, c.DataDir)
	} else {
		unlock, err = lockDataDir(c.DataDir)
	}
	if err != nil {
		if lns != nil {
			lns.close()
		}
		return err
	}
	defer unlock()
	os.WriteFile(filepath.Join(c.DataDir, "server.pid"), fmt.Appendf(nil, "%d\n", os.Getpid()), 0o600)
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
	mp, err := newMesh(ctx, c, keys, reg, gateway, func(src, dst string) bool { return plane.Allowed(src, dst) }, in, log)
	if err != nil {
		return err
	}
	// App machines' runtime specs: host processes in their build's
	// directory, or (isolated, below) the release's image or the host's
	// system directories with the release at /app.
	specs := &appspec.Builder{Artifact: func(app, id string) string { return builder.Path(app, id) }, Self: self}
	var router machines.Router = edge
	if mp.mesh != nil {
		router = routers{edge, mp.mesh}
	}
	// Release images, served read-only to registry clients under /v2/.
	releaseImages, err := imagestore.Open(filepath.Join(c.DataDir, "images", "oci"))
	if err != nil {
		return err
	}
	var cleaner control.Cleaner
	var driver machines.Driver
	if isolated != nil {
		hostfs, err := appspec.NewHostFS(filepath.Join(c.DataDir, "hostfs"), self)
		if err != nil {
			return fmt.Errorf("app machines' root filesystem: %w", err)
		}
		if hostfs.Under(c.DataDir) {
			return fmt.Errorf("data dir %s lies in a host directory that machines see read-only: choose another --data-dir, e.g. /var/lib/pier", c.DataDir)
		}
		driver, specs.HostFS, cleaner = isolated, hostfs, isolated
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
		specs.Lowers = builder.Images
	} else {
		log.Warn("builds run on the host as this server's user, without isolation: run pier server as root with runc installed (--runtime runc) to build in isolated build machines")
		pd := process.New()
		driver, cleaner = pd, pd
	}
	imgs := images{store: &image.Store{Dir: filepath.Join(c.DataDir, "images"), Log: log.With("component", "images")},
		releases: st, hostfs: specs.HostFS, lowers: specs.Lowers, artifact: specs.Artifact}
	// One machine manager runs every machine: apps' (through rollout) and
	// the machines API's, which refuses to run any without isolation.
	mach := machines.New(driver, imgs, st, hub, log.With("component", "machines"))
	mach.Router = router
	if mp.mesh != nil {
		// The edge proxy reaches machines only through the mesh, over
		// mutual TLS with its own identity; the mesh records the requests.
		edge.UseMesh(mp.mesh.EdgeTransport())
		mach.Mesh = mp.mesh
	}
	mach.Events = func(app, typ, msg string) {
		if err := st.AddEvent(context.Background(), app, typ, msg); err != nil {
			log.Error("record event", "app", app, "err", err)
		}
	}
	if c.MachineIdleTimeout > 0 {
		mach.IdleTimeout = c.MachineIdleTimeout
	}
	// Managed resources listen on loopback, and on the machines' gateway
	// when apps run isolated; connected machines are let through to their
	// ports alone (Plane.ReleaseSpec sets them).
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
	plane = &control.Plane{Store: st, Builder: builder, Keys: keys, Proxy: edge, Logs: hub,
		Rollout: &rollout.Rollout{Fleet: mach, Logs: hub, Log: log.With("component", "rollout")}, Specs: specs,
		Log: log, TempDir: filepath.Join(c.DataDir, "tmp"), Resources: types, ResourceNet: rnet,
		ResourceDir: resDir, BackupDir: filepath.Join(c.DataDir, "backups"),
		CA: mp.ca, Metrics: mp.metrics}
	if err := plane.MoveResourceDirs(ctx, filepath.Join(c.DataDir, "resources")); err != nil {
		return err
	}
	if mp.mesh != nil {
		plane.Mesh, plane.ServiceSubnet = mp.mesh, mp.subnet
	}
	mach.Releases = plane
	plane.Images, plane.KeepReleases = releaseImages, c.KeepReleases
	imageRegistry := registry.New(plane.Images, token)
	imageRegistry.Log = log.With("component", "registry")

	if lns == nil {
		if lns, err = openListeners(c, in); err != nil {
			return err
		}
	}
	apiLn, httpLn, httpsLn := lns.api, lns.http, lns.https
	if httpsLn != nil {
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

	edge.Wake = mach.Wake
	edge.Record = func(app, machine string, r *http.Request, code int, d time.Duration, out int64) {
		if mp.mesh != nil && machine != "" {
			return // the mesh's callee side recorded it
		}
		mp.metrics.Request(metrics.Edge{Src: metrics.FromEdge, Dst: app}, machine, metrics.Route{Method: r.Method, Path: r.URL.Path}, code, false, d, max(r.ContentLength, 0), out)
	}
	meshCtx, stopMesh := context.WithCancel(ctx)
	defer stopMesh()
	if mp.mesh != nil {
		mp.mesh.SetWake(mach.Wake)
	}
	go mp.run(meshCtx, log)

	// What a graceful restart hands to the next server: the listeners,
	// the mesh's port and the machines' name server.
	handover := lns.byName()
	if mp.outbound != nil {
		if t, ok := mp.outbound.(*net.TCPListener); ok {
			handover["mesh"] = t
		}
	}
	if isolated != nil {
		dnsCtx, stopDNS := context.WithCancel(ctx)
		defer stopDNS()
		socks, err := machineDNS(dnsCtx, isolated, names{mesh: mp.mesh, mach: mach}, in, log.With("component", "dns"))
		if err != nil {
			apiLn.Close()
			httpLn.Close()
			return err
		}
		maps.Copy(handover, socks)
	}

	// Resources first: apps expect their databases when they start.
	if err := plane.StartResources(ctx); err != nil {
		apiLn.Close()
		httpLn.Close()
		return fmt.Errorf("start resources: %w", err)
	}
	// Machines first: those a previous server left running are adopted
	// before anything cleans up what no one knows.
	if err := mach.Restore(ctx, cleaner); err != nil {
		apiLn.Close()
		httpLn.Close()
		mach.Shutdown(0)
		return fmt.Errorf("restore machines: %w", err)
	}
	if err := plane.Restore(ctx, cleaner); err != nil {
		apiLn.Close()
		httpLn.Close()
		mach.Shutdown(0)
		return fmt.Errorf("restore apps: %w", err)
	}
	if err := plane.Reconcile(ctx); err != nil {
		apiLn.Close()
		httpLn.Close()
		mach.Shutdown(0)
		return fmt.Errorf("restore apps: %w", err)
	}
	// Operations last: what the last server left running is settled from
	// the state the steps above left.
	operations := &ops.Manager{Store: st, Log: log.With("component", "ops")}
	if err := operations.Recover(ctx, plane.Settle); err != nil {
		apiLn.Close()
		httpLn.Close()
		mach.Shutdown(0)
		return fmt.Errorf("settle operations: %w", err)
	}
	apiSrv := &http.Server{
		Handler:           (&api.Server{Plane: plane, Ops: operations, Log: log.With("component", "api"), Token: token, URL: appURL, Machines: mach, Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), Certs: certMgr, Registry: imageRegistry}).Handler(),
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
		wg.Add(2)
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
	var fresh unread
	for _, srv := range []*http.Server{apiSrv, httpSrv, httpsSrv} {
		if srv != nil {
			srv.ConnState = fresh.track
		}
	}
	errs := make(chan error, 3)
	var serving sync.WaitGroup
	serving.Add(2)
	go func() { defer serving.Done(); errs <- serve(apiSrv, apiLn) }()
	go func() { defer serving.Done(); errs <- serve(httpSrv, httpLn) }()
	if httpsSrv != nil {
		serving.Add(1)
		go func() { defer serving.Done(); errs <- serveTLS(httpsSrv, httpsLn) }()
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
	handedOff := false
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case runErr = <-errs:
			break wait
		case <-c.Restart:
			log.Info("graceful restart: handing over to a new server", "binary", self)
			if err := handOff(self, handover, log); err != nil {
				log.Error("graceful restart failed; serving on", "err", err)
				continue
			}
			handedOff = true
			break wait
		}
	}
	log.Info("shutting down")
	stopAutostop()
	<-autostopDone
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	servers := []*http.Server{httpSrv, apiSrv}
	if httpsSrv != nil {
		servers = append(servers, httpsSrv)
	}
	// No new connections (after a graceful restart, the new server takes
	// them from the sockets' backlog); those accepted get to send their
	// request before Shutdown, which would drop it unanswered.
	lns.close()
	serving.Wait()
	fresh.wait(5 * time.Second)
	// Operations under way get a short while to finish; the next server
	// settles those that do not (finished or rolled back).
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), OperationsDrain)
	if !operations.Drain(drainCtx) {
		log.Warn("operations still running at exit; the next pier server settles them", "waited", OperationsDrain)
	}
	cancelDrain()
	for _, srv := range servers {
		srv.Shutdown(shutCtx)
	}
	if (handedOff || !c.StopMachinesOnExit) && mach.Detach() {
		log.Info("machines left running; the next pier server adopts them (--stop-machines-on-exit stops them)")
	} else {
		mach.Shutdown(10 * time.Second)
	}
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

// listeners are the server's listening sockets.
type listeners struct{ api, http, https net.Listener }

// openListeners listens on the API, HTTP and HTTPS addresses, or takes
// the sockets a previous server handed over.
func openListeners(c Config, in inherited) (*listeners, error) {
	var l listeners
	var err error
	if l.api, err = in.listen("api", c.APIAddr); err != nil {
		return nil, fmt.Errorf("API address %s: %w (is another pier server running? use --api-addr)", c.APIAddr, err)
	}
	if l.http, err = in.listen("http", c.HTTPAddr); err != nil {
		l.close()
		return nil, fmt.Errorf("HTTP address %s: %w (use --http-addr to pick another)", c.HTTPAddr, err)
	}
	if c.HTTPSAddr != "" {
		if l.https, err = in.listen("https", c.HTTPSAddr); err != nil {
			l.close()
			return nil, fmt.Errorf("HTTPS address %s: %w (use --https-addr to pick another)", c.HTTPSAddr, err)
		}
	}
	return &l, nil
}

func (l *listeners) close() {
	for _, ln := range []net.Listener{l.api, l.http, l.https} {
		if ln != nil {
			ln.Close()
		}
	}
}

func (l *listeners) byName() map[string]filer {
	m := map[string]filer{}
	for name, ln := range map[string]net.Listener{"api": l.api, "http": l.http, "https": l.https} {
		if t, ok := ln.(*net.TCPListener); ok {
			m[name] = t
		}
	}
	return m
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
