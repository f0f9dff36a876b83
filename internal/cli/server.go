package cli

import (
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/server"
	"github.com/spf13/cobra"
)

func (e *env) serverCmd() *cobra.Command {
	c := server.Config{SaveCredentials: true}
	var debug bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the platform: API, state store, supervisor and edge proxy",
		Long: `Run pier on this machine: the API (for the CLI), the state store, the
supervisor that runs apps' machines, and the edge proxy that serves app X at
http://X.<domain>:<http port>/.

On first start it creates an admin token in the data dir (mode 0600) and saves
CLI credentials for the local user, so other pier commands just work. State
survives restarts: apps are served again when the server comes back. Stop it
with Ctrl-C or SIGTERM: traffic drains and every machine stops.

Run as root with runc installed, apps and machines are isolated (own
namespaces, cgroup limits, an address on the --bridge); otherwise apps run as
host processes and the machines API is unavailable (see --runtime).

Isolated apps call each other through the mesh at http://<app>.internal once
connected (pier connect web api): mutual TLS with per-app identities from the
server's own CA, policy from connections, metrics in pier stat.`,
		Example: `  pier server
  pier server --http-addr :80 --domain apps.example.com
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
			return server.Run(ctx, c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.DataDir, "data-dir", server.DefaultDataDir(), "where state, builds, logs and keys live")
	f.StringVar(&c.APIAddr, "api-addr", "127.0.0.1:4280", "address of the API")
	f.StringVar(&c.HTTPAddr, "http-addr", ":8080", "address of the edge proxy that serves apps")
	f.StringVar(&c.Domain, "domain", "localhost", "apps are served at <app>.<domain>")
	f.StringVar(&c.Runtime, "runtime", "auto", "where apps and machines run: auto (isolated under runc when root with runc installed), runc (required) or process (apps as host processes, no machines API)")
	f.StringVar(&c.Subnet, "subnet", "100.96.0.0/16", "address range of machines (runc runtime)")
	f.StringVar(&c.Bridge, "bridge", "pier0", "Linux bridge machines attach to (runc runtime)")
	f.StringVar(&c.ServiceSubnet, "service-subnet", "100.126.0.0/16", "service addresses of apps, <app>.internal inside machines (runc runtime); not routed anywhere")
	f.IntVar(&c.MeshPort, "mesh-port", 15001, "port on the machines' gateway where the mesh takes app-to-app calls (runc runtime)")
	f.StringVar(&c.TrustDomain, "trust-domain", "pier.internal", "SPIFFE trust domain of the mesh identities (spiffe://<trust-domain>/app/<app>); fixed when the mesh CA is created")
	f.DurationVar(&c.MeshCertTTL, "mesh-cert-ttl", 24*time.Hour, "lifetime of the mesh's app certificates (at least 1m); they are renewed at half-life")
	f.DurationVar(&c.MachineIdleTimeout, "machine-idle-timeout", 5*time.Minute, "how long an app without traffic keeps machines whose service has autostop")
	f.BoolVar(&debug, "debug", false, "log debug detail")
	return cmd
}
