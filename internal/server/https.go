package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/pier-dev/pier/internal/certs"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/proxy"
	"github.com/pier-dev/pier/internal/store"
)

var (
	_ certs.Store   = (*store.Store)(nil)
	_ certs.Apps    = (*store.Store)(nil)
	_ certs.Router  = (*proxy.Proxy)(nil)
	_ certs.LocalCA = (*identity.Authority)(nil)
)

// openCerts sets up the edge's custom domains and, with an HTTPS listener,
// their ACME certificates; c.LocalCA certifies the local domains.
func openCerts(ctx context.Context, c Config, st *store.Store, edge *proxy.Proxy, httpLn, httpsLn net.Listener, log *slog.Logger) (*certs.Manager, error) {
	cc := certs.Config{
		Dir: filepath.Join(c.DataDir, "certs"), Domain: c.Domain, HTTPAddr: httpLn.Addr().String(),
		ACMECA: c.ACMECA, ACMEEmail: c.ACMEEmail,
		RenewCheckInterval: c.RenewCheckInterval, RenewalWindowRatio: c.RenewalWindowRatio,
		LocalCA: c.LocalCA, Store: st, Apps: st, Router: edge, Log: log.With("component", "certs"),
	}
	if httpsLn != nil {
		cc.HTTPSPort = httpsLn.Addr().(*net.TCPAddr).Port
		if c.ACMECARoot != "" {
			pem, err := os.ReadFile(c.ACMECARoot)
			if err != nil {
				return nil, fmt.Errorf("--acme-ca-root: %w", err)
			}
			cc.ACMERoots = x509.NewCertPool()
			if !cc.ACMERoots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--acme-ca-root %s: no PEM certificate in it", c.ACMECARoot)
			}
		}
	}
	return certs.Open(ctx, cc)
}
