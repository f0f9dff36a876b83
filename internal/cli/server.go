package cli

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/certs"
	"github.com/pier-dev/pier/internal/runtime/runc"
	"github.com/pier-dev/pier/internal/server"
	"github.com/spf13/cobra"
)

func (e *env) serverCmd() *cobra.Command {
	c := server.Config{SaveCredentials: true}
	var debug bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the platform: API, state store, machine manager and edge proxy",
		Long: `Run pier on this machine: the API (for the CLI), the state store, the
machine manager that runs every machine (apps' and the machines API's), and
the edge proxy that serves app X at http://X.<domain>:<http port>/.

On first start it creates an admin token in the data dir (mode 0600) and saves
CLI credentials for the local user, so other pier commands just work. State
survives restarts. Stop it with Ctrl-C or SIGTERM: isolated machines (runc)
keep running, with their output kept by a small monitor process each, and
the next pier server adopts them without a restart, so restarting or
upgrading pier is no outage for apps (--stop-machines-on-exit stops them
instead). Apps run as host processes are stopped and started again.

kill -HUP restarts the server gracefully, e.g. after replacing the pier
binary: a new server, from the binary now at the same path with the same
flags, takes over the listening sockets, and the old one finishes the
requests in flight and exits. Connections that arrive meanwhile wait in the
sockets' backlog (the mesh's port and the machines' name server are handed
over too): no request is refused. The new server writes its pid to
<data-dir>/server.pid.

Run as root with runc installed, apps and machines are isolated (own
namespaces, cgroup limits, an address on the --bridge); otherwise apps run as
host processes and the machines API is unavailable (see --runtime).

Isolated apps call each other through the mesh at http://<app>.internal once
connected (pier connect web api): mutual TLS with per-app identities from the
server's own CA, policy from connections, metrics in pier stat.

With --https-addr the edge serves HTTPS too (TLS 1.2+, HTTP/2): custom
domains added with 'pier certs add' get certificates from an ACME CA (Let's
Encrypt unless --acme-ca says otherwise; HTTP-01 challenges are answered on
--http-addr, which the CA must reach on port 80), and on a local --domain
(localhost, *.localhost, *.test) https://X.<domain>/ gets a certificate from
pier's own CA ('pier certs trust' prints it). Certificates and their private
keys live in <data-dir>/certs.`,
		Example: `  pier server
  pier server --http-addr :80 --domain apps.example.com
  pier server --http-addr :80 --https-addr :443 --acme-email ops@example.com
  pier server --https-addr :8443     # https://X.localhost:8443/ with pier's CA
  pier server --data-dir /tmp/pier --api-addr 127.0.0.1:5280`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			c.Log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			restart := make(chan struct{})
			go func() {
				for range hup {
					select {
					case restart <- struct{}{}:
					case <-ctx.Done():
						return
					}
				}
			}()
			c.Restart = restart
			return server.Run(ctx, c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.DataDir, "data-dir", server.DefaultDataDir(), "where state, builds, logs and keys live")
	f.StringVar(&c.ServersDir, "servers-dir", server.DefaultServersDir, "as root: where managed resource servers keep their files (<servers-dir>/<id of the data dir>/<resource>), outside the data dir, which stays root's alone; only root may write it and its parents")
	f.StringVar(&c.APIAddr, "api-addr", "127.0.0.1:4280", "address of the API")
	f.StringVar(&c.HTTPAddr, "http-addr", ":8080", "address of the edge proxy that serves apps")
	f.StringVar(&c.Domain, "domain", "localhost", "apps are served at <app>.<domain>")
	f.StringVar(&c.Runtime, "runtime", "auto", "where apps and machines run: auto (isolated under runc when root with runc installed), runc (required) or process (apps as host processes, no machines API)")
	f.StringVar(&c.Subnet, "subnet", "100.96.0.0/16", "address range of machines (runc runtime)")
	f.StringVar(&c.Bridge, "bridge", "pier0", "Linux bridge machines attach to (runc runtime)")
	f.IntVar(&c.MachineDiskMB, "machine-disk-mb", runc.DefaultDiskMB, "what a machine may write to its own root filesystem, in MB (runc runtime; machines API: guest.rootfs_size_mb)")
	f.StringVar(&c.ServiceSubnet, "service-subnet", "100.125.0.0/16", "service addresses of apps, <app>.internal inside machines (runc runtime); not routed anywhere")
	f.IntVar(&c.MeshPort, "mesh-port", 15001, "port on the machines' gateway where the mesh takes app-to-app calls (runc runtime)")
	f.StringVar(&c.TrustDomain, "trust-domain", "pier.internal", "SPIFFE trust domain of the mesh identities (spiffe://<trust-domain>/app/<app>); fixed when the mesh CA is created")
	f.DurationVar(&c.MeshCertTTL, "mesh-cert-ttl", 24*time.Hour, "lifetime of the mesh's app certificates (at least 1m); they are renewed at half-life")
	f.StringVar(&c.BaseCache, "base-cache", "", "where base images assembled from the host's Debian packages are kept (default: <data-dir>/images/bases); servers you trust may share one")
	f.IntVar(&c.KeepReleases, "keep-releases", 10, "how many releases per app keep their build and image; older ones are collected (the current one always stays)")
	f.DurationVar(&c.MachineIdleTimeout, "machine-idle-timeout", 5*time.Minute, "how long an app without traffic keeps machines whose service has autostop")
	f.BoolVar(&c.StopMachinesOnExit, "stop-machines-on-exit", false, "stop every machine when the server exits (default: isolated machines run on, and the next server adopts them)")
	f.StringVar(&c.HTTPSAddr, "https-addr", "", "address of the edge's HTTPS listener (default: none, HTTP only)")
	f.StringVar(&c.ACMECA, "acme-ca", certs.DefaultACMECA, "ACME directory URL that issues custom domains' certificates")
	f.StringVar(&c.ACMEEmail, "acme-email", "", "contact email of the ACME account (expiry and problem notices)")
	f.StringVar(&c.ACMECARoot, "acme-ca-root", "", "PEM file of a CA to trust when talking to the ACME server (for a private one, e.g. pebble)")
	// Renewal timing, for tests of renewal with short-lived certificates.
	f.DurationVar(&c.RenewCheckInterval, "cert-renew-check-interval", 0, "how often certificates are checked for renewal (default 10m)")
	f.Float64Var(&c.RenewalWindowRatio, "cert-renewal-window-ratio", 0, "renew a certificate when this share of its lifetime is left (default 1/3)")
	f.MarkHidden("cert-renew-check-interval")
	f.MarkHidden("cert-renewal-window-ratio")
	f.BoolVar(&debug, "debug", false, "log debug detail")
	return cmd
}
