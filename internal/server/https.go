package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pier-dev/pier/internal/certs"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/proxy"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
)

// openCerts sets up the edge's custom domains and, with an HTTPS listener,
// their ACME certificates and the local CA for local domains. close stops
// certificate management (and the upkeep of a CA it opened).
func openCerts(ctx context.Context, c Config, st *store.Store, edge *proxy.Proxy, keys *secrets.Keyring, httpLn, httpsLn net.Listener, log *slog.Logger) (*certs.Manager, func(), error) {
	stopCA := func() {}
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
				return nil, nil, fmt.Errorf("--acme-ca-root: %w", err)
			}
			cc.ACMERoots = x509.NewCertPool()
			if !cc.ACMERoots.AppendCertsFromPEM(pem) {
				return nil, nil, fmt.Errorf("--acme-ca-root %s: no PEM certificate in it", c.ACMECARoot)
			}
		}
		if cc.LocalCA == nil && certs.IsLocalDomain(c.Domain) {
			ca, err := openLocalCA(ctx, c.DataDir, keys, log)
			if err != nil {
				return nil, nil, err
			}
			cc.LocalCA = ca
			caCtx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); maintainCA(caCtx, ca, time.Hour, log) }()
			stopCA = func() { cancel(); <-done }
		}
	}
	m, err := certs.Open(ctx, cc)
	if err != nil {
		stopCA()
		return nil, nil, err
	}
	return m, func() { m.Close(); stopCA() }, nil
}

// openLocalCA opens pier's CA (the mesh's, internal/identity), which
// certifies <app>.<domain> on local domains.
//
// When the mesh wires its own Authority into the server, pass that one as
// Config.LocalCA instead: there must be one CA, maintained in one place.
func openLocalCA(ctx context.Context, dataDir string, keys *secrets.Keyring, log *slog.Logger) (*identity.Authority, error) {
	ca, err := identity.Open(ctx, &identity.FileStore{Path: filepath.Join(dataDir, "mesh", "ca.sealed"), Sealer: keys},
		identity.Options{Log: log.With("component", "ca")})
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	return ca, nil
}

// maintainCA rotates the CA's issuer and anchors when due, until ctx is done.
func maintainCA(ctx context.Context, ca interface{ Maintain(context.Context) error }, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := ca.Maintain(ctx); err != nil && ctx.Err() == nil {
				log.Error("maintain local CA", "err", err)
			}
		}
	}
}
