package identity

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var _ x509bundle.Source = (*Authority)(nil)

// cached is an issued certificate and the time to replace it: half its
// lifetime after it was really issued (not after the backdated NotBefore).
type cached struct {
	cert    *tls.Certificate
	renewAt time.Time
}

// Certificate returns the workload certificate for id, a SPIFFE ID of this
// trust domain: leaf and issuer in Certificate, the private key, and Leaf
// set. It is cached and replaced at half its lifetime or when the issuer
// changes, so it can back tls.Config.GetCertificate and
// GetClientCertificate. The result is shared: do not modify it.
func (a *Authority) Certificate(id spiffeid.ID) (*tls.Certificate, error) {
	now := a.opts.Now()
	a.rw.RLock()
	c := a.leaves[id]
	a.rw.RUnlock()
	if c != nil && now.Before(c.renewAt) {
		return c.cert, nil
	}
	if id.IsZero() || !id.MemberOf(a.td) {
		return nil, fmt.Errorf("certificate for %q: not a SPIFFE ID in trust domain %s", id, a.td.Name())
	}
	return issue(a, a.leaves, id, a.opts.LeafTTL, &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"pier"}},
		URIs:        []*url.URL{id.URL()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

// ServerCertificate returns a certificate for the HTTPS edge naming the
// given DNS names (wildcards such as "*.localhost" allowed) or IP
// addresses, with no SPIFFE ID. Clients verify it against AnchorsPEM. It is
// cached and renewed like Certificate; the result is shared.
func (a *Authority) ServerCertificate(names ...string) (*tls.Certificate, error) {
	norm := make([]string, 0, len(names))
	for _, n := range names {
		norm = append(norm, strings.TrimSuffix(strings.ToLower(n), "."))
	}
	slices.Sort(norm)
	norm = slices.Compact(norm)
	key := strings.Join(norm, ",")

	now := a.opts.Now()
	a.rw.RLock()
	c := a.servers[key]
	a.rw.RUnlock()
	if c != nil && now.Before(c.renewAt) {
		return c.cert, nil
	}
	if len(norm) == 0 {
		return nil, errors.New("server certificate: no names given")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"pier"}, CommonName: norm[0]},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range norm {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			continue
		}
		if !validDNSName(n) {
			return nil, fmt.Errorf("server certificate: %q is not a DNS name or IP address", n)
		}
		tmpl.DNSNames = append(tmpl.DNSNames, n)
	}
	return issue(a, a.servers, key, a.opts.ServerTTL, tmpl)
}

// issue signs tmpl with the current issuer and caches it under key, unless
// another caller did so meanwhile. It holds the write lock, so a key gets
// one certificate, never from an issuer that a rotation has just replaced;
// the lock is held for one key generation and signature, a rare event.
func issue[K comparable](a *Authority, cache map[K]*cached, key K, ttl time.Duration, tmpl *x509.Certificate) (*tls.Certificate, error) {
	a.rw.Lock()
	defer a.rw.Unlock()
	now := a.opts.Now()
	if c := cache[key]; c != nil && now.Before(c.renewAt) {
		return c.cert, nil
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	issuer := a.ca.issuer
	leaf, err := sign(issuer, tmpl, now, ttl)
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	cert := &tls.Certificate{
		Certificate: [][]byte{leaf.cert.Raw, issuer.cert.Raw},
		PrivateKey:  leaf.key,
		Leaf:        leaf.cert,
	}
	cache[key] = &cached{cert: cert, renewAt: now.Add(leaf.cert.NotAfter.Sub(now) / 2)}
	a.log.Debug("mesh CA: issued certificate", "key", key, "serial", serial(leaf.cert), "not_after", leaf.cert.NotAfter)
	return cert, nil
}

// validDNSName accepts host names made of letters, digits and hyphens,
// with an optional "*." wildcard as the first label.
func validDNSName(n string) bool {
	n = strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 {
		return false
	}
	for label := range strings.SplitSeq(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
				return false
			}
		}
	}
	return true
}

// Issued describes the cached workload certificate for id, if there is one.
func (a *Authority) Issued(id spiffeid.ID) (CertInfo, bool) {
	a.rw.RLock()
	defer a.rw.RUnlock()
	c, ok := a.leaves[id]
	if !ok {
		return CertInfo{}, false
	}
	return info(c.cert.Leaf), true
}

// Verify checks a peer's certificate chain (leaf first, as in
// tls.Config.VerifyPeerCertificate) against the anchors currently trusted
// and returns the peer's SPIFFE ID. Chains from another trust domain, from
// a pruned anchor, or that are expired, are rejected.
//
// A chain verified once is remembered while the CA state it was verified
// under is current (any rotation or prune starts afresh) and until the
// first of its certificates expires: peers present the same chain on every
// resumed handshake and every new pooled connection, and two ECDSA
// verifications per handshake were most of the cost of resuming.
func (a *Authority) Verify(rawCerts [][]byte) (spiffeid.ID, error) {
	now := a.opts.Now()
	st := a.state()
	key := chainKey(rawCerts)
	a.vmu.Lock()
	v, ok := a.verified[key]
	a.vmu.Unlock()
	if ok && v.state == st && now.Before(v.notAfter) {
		return v.id, nil
	}
	id, chains, err := x509svid.ParseAndVerify(rawCerts, a, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify peer: %w", err)
	}
	v = verifiedChain{id: id, state: st}
	for i, c := range chains[0] {
		if i == 0 || c.NotAfter.Before(v.notAfter) {
			v.notAfter = c.NotAfter
		}
	}
	a.vmu.Lock()
	if len(a.verified) >= maxVerified {
		clear(a.verified) // bounded; refilled by the peers still talking
	}
	a.verified[key] = v
	a.vmu.Unlock()
	return id, nil
}

// maxVerified bounds the verified-chain cache.
const maxVerified = 4096

// verifiedChain is a chain Verify accepted.
type verifiedChain struct {
	id       spiffeid.ID
	state    *caState  // the CA state it was verified under
	notAfter time.Time // the earliest expiry in the chain
}

// chainKey identifies a presented chain exactly.
func chainKey(rawCerts [][]byte) [32]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range rawCerts {
		binary.BigEndian.PutUint32(n[:], uint32(len(c)))
		h.Write(n[:])
		h.Write(c)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// GetX509BundleForTrustDomain makes the Authority an x509bundle.Source that
// always reflects the current anchors, for go-spiffe's tlsconfig helpers.
func (a *Authority) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != a.td {
		return nil, fmt.Errorf("trust domain %q is not trusted; this mesh is %q", td.Name(), a.td.Name())
	}
	return a.state().bundle, nil
}

// Bundle is a snapshot of the anchors currently trusted, as a go-spiffe
// bundle. Use the Authority itself as the x509bundle.Source to follow
// rotations.
func (a *Authority) Bundle() *x509bundle.Bundle { return a.state().bundle.Clone() }

// Pool is a snapshot of the anchors currently trusted.
func (a *Authority) Pool() *x509.CertPool { return a.state().pool.Clone() }
