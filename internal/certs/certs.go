// Package certs is the HTTPS side of the edge proxy: custom domains of apps
// with certificates obtained and renewed over ACME (through certmagic),
// certificates for the server's local domains (localhost, *.test) from
// pier's own CA, the TLS configuration of the HTTPS listener, and the
// plain-HTTP handler that answers ACME HTTP-01 challenges and redirects apps
// that force HTTPS.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/pier-dev/pier/internal/pier"
)

// DefaultACMECA is the ACME directory used unless configured otherwise:
// Let's Encrypt's production one.
const DefaultACMECA = certmagic.LetsEncryptProductionCA

// Store keeps the custom domains and the event history; *store.Store is one.
type Store interface {
	CreateCert(ctx context.Context, c pier.Cert) error
	DeleteCert(ctx context.Context, domain string) error
	Certs(ctx context.Context) ([]pier.Cert, error)
	AddEvent(ctx context.Context, app, typ, msg string) error
}

// Apps tells which apps exist and which release each runs; *store.Store is
// one.
type Apps interface {
	App(ctx context.Context, name string) (pier.App, error)
	Release(ctx context.Context, app string, version int) (pier.Release, error)
}

// Router is the part of the edge proxy that maps hosts to apps.
type Router interface {
	// SetDomains replaces the custom domain -> app routes.
	SetDomains(map[string]string)
	// App returns the app a Host header names, or "".
	App(host string) string
}

// LocalCA issues the certificates of the server's local domains. It caches
// and renews them itself, so it is asked on every TLS handshake.
type LocalCA interface {
	ServerCertificate(names ...string) (*tls.Certificate, error)
	// AnchorsPEM is what clients must trust to accept those certificates.
	AnchorsPEM() []byte
}

// Config configures a Manager. Zero fields get the documented defaults.
type Config struct {
	// Dir is certmagic's storage: the ACME account, and the certificates
	// and private keys of custom domains. It is created mode 0700.
	Dir string
	// Domain is the server's --domain: apps are <app>.<Domain>.
	Domain string
	// HTTPSPort is the port of the HTTPS listener; 0 means the server has
	// none, so custom domains are routed over HTTP but get no certificate.
	HTTPSPort int
	// HTTPAddr is the address of the edge's plain-HTTP listener, which
	// answers ACME HTTP-01 challenges (HTTPHandler).
	HTTPAddr string
	// ACMECA is the ACME directory URL (default: Let's Encrypt production).
	ACMECA string
	// ACMEEmail is the contact address of the ACME account (optional).
	ACMEEmail string
	// ACMERoots, if set, are the CAs trusted when talking to the ACME
	// server (a private one, like pebble); default: the system's.
	ACMERoots *x509.CertPool
	// RenewCheckInterval is how often certificates are checked for
	// renewal (default: certmagic's, 10 minutes).
	RenewCheckInterval time.Duration
	// RenewalWindowRatio is the share of a certificate's lifetime left
	// when it is renewed (default: certmagic's, 1/3).
	RenewalWindowRatio float64
	// LocalCA certifies <app>.<Domain> when Domain is local (IsLocalDomain);
	// without one, those names get no certificate.
	LocalCA LocalCA

	Store  Store
	Apps   Apps
	Router Router
	Log    *slog.Logger
}

// Manager keeps the custom domains: it routes each to its app and has
// certmagic obtain and renew its certificate.
type Manager struct {
	cfg Config
	log *slog.Logger
	// magic, cache and issuer are nil without an HTTPS listener.
	magic  *certmagic.Config
	cache  *certmagic.Cache
	issuer *certmagic.ACMEIssuer

	// opMu serialises Add and Remove, so the store and the maps agree.
	opMu    sync.Mutex
	mu      sync.Mutex
	domains map[string]*domain

	force forceCache
}

type domain struct {
	app     string
	created time.Time
	cancel  context.CancelFunc // stops obtaining (and its retries); nil if not managed
	err     string             // the latest failure to obtain or renew
}

// Open loads the stored custom domains and routes them. Certificates are
// obtained once Manage is called, when the HTTP listener serves.
func Open(ctx context.Context, c Config) (*Manager, error) {
	m := &Manager{cfg: c, log: c.Log, domains: map[string]*domain{}}
	m.force.apps = c.Apps
	if c.HTTPSPort != 0 {
		if err := m.setupACME(); err != nil {
			return nil, err
		}
	}
	stored, err := c.Store.Certs(ctx)
	if err != nil {
		m.Close()
		return nil, err
	}
	for _, sc := range stored {
		m.domains[sc.Domain] = &domain{app: sc.App, created: sc.CreatedAt}
	}
	m.route()
	return m, nil
}

func (m *Manager) setupACME() error {
	c := m.cfg
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("certificate storage %s: %w", c.Dir, err)
	}
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return fmt.Errorf("certificate storage %s: %w", c.Dir, err)
	}
	zl := zapLogger(m.log)
	// The cache asks which config manages a certificate; there is one.
	var magic atomic.Pointer[certmagic.Config]
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return magic.Load(), nil },
		RenewCheckInterval: c.RenewCheckInterval,
		Logger:             zl,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage:            &certmagic.FileStorage{Path: c.Dir},
		RenewalWindowRatio: c.RenewalWindowRatio,
		OnEvent:            m.onEvent,
		// Let's Encrypt no longer runs OCSP; stapling would only add
		// requests that fail.
		OCSP:   certmagic.OCSPConfig{DisableStapling: true},
		Logger: zl,
	})
	magic.Store(m.magic)
	host, port, err := net.SplitHostPort(c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP address %q: %w", c.HTTPAddr, err)
	}
	httpPort, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("HTTP address %q: bad port", c.HTTPAddr)
	}
	ca := c.ACMECA
	if ca == "" {
		ca = DefaultACMECA
	}
	m.issuer = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:     ca,
		Email:  c.ACMEEmail,
		Agreed: true,
		// HTTP-01 only, answered by the edge's own HTTP listener: pointing
		// the solver at that address makes certmagic find it taken and
		// leave the answer to HTTPHandler.
		DisableTLSALPNChallenge: true,
		ListenHost:              host,
		AltHTTPPort:             httpPort,
		TrustedRoots:            c.ACMERoots,
		Logger:                  zl,
	})
	m.magic.Issuers = []certmagic.Issuer{m.issuer}
	return nil
}

// Manage starts obtaining (or loading, and renewing) the certificate of
// every custom domain, in the background.
func (m *Manager) Manage() {
	if m.magic == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, d := range m.domains {
		m.manageLocked(name, d)
	}
}

func (m *Manager) manageLocked(name string, d *domain) {
	if d.cancel != nil {
		return
	}
	// Its own context, so that removing the domain stops the retries of a
	// failing obtain.
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if err := m.magic.ManageAsync(ctx, []string{name}); err != nil {
		d.err = err.Error()
		m.log.Error("manage certificate", "domain", name, "err", err)
	}
}

// Close stops obtaining and renewing certificates.
func (m *Manager) Close() {
	m.mu.Lock()
	for _, d := range m.domains {
		if d.cancel != nil {
			d.cancel()
			d.cancel = nil
		}
	}
	m.mu.Unlock()
	if m.cache != nil {
		m.cache.Stop()
	}
}

// route hands the current domain -> app map to the edge proxy.
func (m *Manager) route() {
	m.mu.Lock()
	routes := make(map[string]string, len(m.domains))
	for name, d := range m.domains {
		routes[name] = d.app
	}
	m.mu.Unlock()
	m.cfg.Router.SetDomains(routes)
}

// Add makes domain a custom domain of app: the edge routes it to the app and
// obtains its certificate in the background (List shows the progress).
func (m *Manager) Add(ctx context.Context, app, name string) (pier.Cert, error) {
	name = NormalizeDomain(name)
	if err := ValidateDomain(name, m.cfg.Domain); err != nil {
		return pier.Cert{}, err
	}
	if m.magic == nil {
		return pier.Cert{}, pier.Errorf(pier.Precondition, "this server does not serve HTTPS: restart `pier server` with --https-addr (e.g. :443) to use custom domains")
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	c := pier.Cert{Domain: name, App: app, CreatedAt: time.Now().UTC()}
	if err := m.cfg.Store.CreateCert(ctx, c); err != nil {
		return pier.Cert{}, err
	}
	m.mu.Lock()
	d := &domain{app: app, created: c.CreatedAt}
	m.domains[name] = d
	m.manageLocked(name, d)
	m.mu.Unlock()
	m.route()
	m.event(ctx, app, "cert.add", "custom domain %s added; obtaining its certificate from %s", name, m.issuer.CA)
	return m.status(c), nil
}

// Remove stops routing domain and drops its certificate and key.
func (m *Manager) Remove(ctx context.Context, name string) error {
	name = NormalizeDomain(name)
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	d := m.domains[name]
	m.mu.Unlock()
	if err := m.cfg.Store.DeleteCert(ctx, name); err != nil {
		return err
	}
	m.forget(ctx, name)
	if d != nil {
		m.event(ctx, d.app, "cert.remove", "custom domain %s removed with its certificate", name)
	}
	return nil
}

// AppDestroyed forgets the domains of an app that is gone (the store drops
// their rows with the app).
func (m *Manager) AppDestroyed(app string) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	var names []string
	for name, d := range m.domains {
		if d.app == app {
			names = append(names, name)
		}
	}
	m.mu.Unlock()
	for _, name := range names {
		m.forget(context.Background(), name)
	}
}

// forget unroutes a domain, stops managing its certificate and deletes it
// from storage: a domain nobody serves keeps no private key around.
func (m *Manager) forget(ctx context.Context, name string) {
	m.mu.Lock()
	d := m.domains[name]
	delete(m.domains, name)
	m.mu.Unlock()
	m.route()
	if d == nil || m.magic == nil {
		return
	}
	if d.cancel != nil {
		d.cancel()
	}
	m.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: name}})
	if err := m.magic.Storage.Delete(ctx, certmagic.StorageKeys.CertsSitePrefix(m.issuer.IssuerKey(), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("delete certificate", "domain", name, "err", err)
	}
}

// List returns every custom domain with the state of its certificate.
func (m *Manager) List(ctx context.Context) ([]pier.Cert, error) {
	stored, err := m.cfg.Store.Certs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]pier.Cert, 0, len(stored))
	for _, c := range stored {
		out = append(out, m.status(c))
	}
	return out, nil
}

// status fills in the state of c's certificate: issued when certmagic
// serves one, else an error if obtaining failed, else pending.
func (m *Manager) status(c pier.Cert) pier.Cert {
	c.Status = pier.CertPending
	if m.magic == nil {
		c.Error = "the server has no HTTPS listener (start it with --https-addr)"
		return c
	}
	m.mu.Lock()
	if d := m.domains[c.Domain]; d != nil {
		c.Error = d.err
	}
	m.mu.Unlock()
	if leaf := m.leaf(c.Domain); leaf != nil && time.Now().Before(leaf.NotAfter) {
		c.Status = pier.CertIssued
		c.NotAfter = leaf.NotAfter.UTC()
		c.Issuer = leaf.Issuer.CommonName
		c.Serial = fmt.Sprintf("%x", leaf.SerialNumber)
	} else if c.Error != "" {
		c.Status = pier.CertError
	}
	return c
}

// leaf is the newest certificate certmagic holds for exactly name.
func (m *Manager) leaf(name string) *x509.Certificate {
	var best *x509.Certificate
	for _, cert := range m.cache.AllMatchingCertificates(name) {
		if cert.Leaf == nil || !hasName(cert.Names, name) {
			continue
		}
		if best == nil || cert.Leaf.NotAfter.After(best.NotAfter) {
			best = cert.Leaf
		}
	}
	return best
}

func hasName(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// onEvent follows certmagic's progress: it keeps the latest failure for
// List and records issuance, renewal and failures in the app's history.
func (m *Manager) onEvent(ctx context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	var msg string
	switch event {
	case "cert_obtained":
	case "cert_failed":
		msg = "unknown error"
		if err, ok := data["error"].(error); ok {
			msg = err.Error()
		}
	default:
		return nil
	}
	m.mu.Lock()
	d := m.domains[name]
	if d != nil {
		d.err = msg
	}
	m.mu.Unlock()
	if d == nil {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	switch {
	case event == "cert_obtained" && renewal:
		m.event(ctx, d.app, "cert.renew", "certificate of %s renewed", name)
	case event == "cert_obtained":
		m.event(ctx, d.app, "cert.issue", "certificate of %s issued", name)
	case renewal:
		m.event(ctx, d.app, "cert.error", "renewing the certificate of %s failed (the current one is served until it expires; retrying): %s", name, msg)
	default:
		m.event(ctx, d.app, "cert.error", "obtaining a certificate for %s failed (retrying with backoff): %s", name, msg)
	}
	return nil
}

func (m *Manager) event(ctx context.Context, app, typ, format string, args ...any) {
	if err := m.cfg.Store.AddEvent(ctx, app, typ, fmt.Sprintf(format, args...)); err != nil {
		m.log.Error("record event", "app", app, "err", err)
	}
}

// CAPEM returns the certificates clients must trust for the local domains'
// certificates (`pier certs trust`).
func (m *Manager) CAPEM() ([]byte, error) {
	if m.cfg.LocalCA == nil {
		return nil, pier.Errorf(pier.Unavailable, "this server has no local CA: it certifies apps when started with --https-addr on a local --domain (localhost, *.localhost or *.test)")
	}
	return m.cfg.LocalCA.AnchorsPEM(), nil
}
