package certs

import (
	"crypto/tls"
	"fmt"
	"strings"
)

// TLSConfig is the configuration of the edge's HTTPS listener: TLS 1.2 or
// newer, HTTP/2 or HTTP/1.1 by ALPN, and a certificate chosen by SNI.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: m.GetCertificate,
	}
}

// GetCertificate picks the certificate of a handshake: from the local CA
// for <app>.<domain> when the domain is local, from certmagic for custom
// domains, and none for anything else.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := NormalizeDomain(hello.ServerName)
	if name == "" {
		return nil, fmt.Errorf("no server name (SNI) in the TLS handshake: ask for https://<app>.%s/ or a custom domain", m.cfg.Domain)
	}
	if app, ok := m.localApp(name); ok {
		if m.cfg.LocalCA == nil {
			return nil, fmt.Errorf("no local CA to certify %s", name)
		}
		if _, err := m.cfg.Apps.App(hello.Context(), app); err != nil {
			// Certify only apps that exist: any other name would let a
			// client grow the CA's cache at will.
			return nil, fmt.Errorf("no certificate for %s: %w", name, err)
		}
		return m.cfg.LocalCA.ServerCertificate(name)
	}
	m.mu.Lock()
	_, routed := m.domains[name]
	m.mu.Unlock()
	if routed && m.magic != nil {
		return m.magic.GetCertificate(hello)
	}
	return nil, fmt.Errorf("no certificate for %s: not an app of this server (custom domains: `pier certs add`)", name)
}

// localApp returns the app of name when name is <app>.<domain> on a local
// domain.
func (m *Manager) localApp(name string) (string, bool) {
	if !IsLocalDomain(m.cfg.Domain) {
		return "", false
	}
	app, ok := strings.CutSuffix(name, "."+NormalizeDomain(m.cfg.Domain))
	if !ok || app == "" || strings.Contains(app, ".") {
		return "", false
	}
	return app, true
}
