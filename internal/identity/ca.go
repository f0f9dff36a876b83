package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Authority is the mesh CA. It is safe for concurrent use.
type Authority struct {
	opts  Options
	td    spiffeid.TrustDomain
	store Store
	log   *slog.Logger

	// mu serializes changes to the CA state. A change is built on a copy,
	// saved, and only then published, so a failed save changes nothing and
	// no leaf is ever signed by an issuer that is not on disk.
	mu sync.Mutex

	rw      sync.RWMutex // guards the fields below
	ca      *caState     // never modified once published; replaced whole
	leaves  map[spiffeid.ID]*cached
	servers map[string]*cached // key: normalized names joined by ","

	vmu      sync.Mutex
	verified map[[32]byte]verifiedChain // see Verify
}

// caState is one version of the CA. The trust material derived from the
// anchors (bundle, pool) is built once per version.
type caState struct {
	anchors  []*authority // oldest first; the last one signs issuers
	issuer   *authority   // signs leaves
	previous []*authority // retired issuers whose leaves may be live; no keys
	bundle   *x509bundle.Bundle
	pool     *x509.CertPool
}

// authority is one CA certificate. key is nil once it no longer signs;
// until is zero while it is in use and, once retired, the time after which
// nothing it signed can still be valid.
type authority struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	until time.Time
}

func (a *Authority) state() *caState {
	a.rw.RLock()
	defer a.rw.RUnlock()
	return a.ca
}

// finish derives the trust material from the anchors.
func (s *caState) finish(td spiffeid.TrustDomain) *caState {
	certs := make([]*x509.Certificate, len(s.anchors))
	s.pool = x509.NewCertPool()
	for i, an := range s.anchors {
		certs[i] = an.cert
		s.pool.AddCert(an.cert)
	}
	s.bundle = x509bundle.FromX509Authorities(td, certs)
	return s
}

func (a *Authority) create() (*caState, error) {
	now := a.opts.Now()
	anchor, err := a.newCA(nil, now)
	if err != nil {
		return nil, err
	}
	issuer, err := a.newCA(anchor, now)
	if err != nil {
		return nil, err
	}
	return (&caState{anchors: []*authority{anchor}, issuer: issuer}).finish(a.td), nil
}

// RotateIssuer signs a new issuer with the current anchor and uses it for
// every certificate issued from now on. Leaves from the old issuer keep
// verifying until they expire.
func (a *Authority) RotateIssuer(ctx context.Context) error {
	return a.change(ctx, func(s *caState, now time.Time) (bool, error) {
		return true, a.rotateIssuer(s, now)
	})
}

// RotateAnchor adds a new trust anchor, signs a new issuer with it and uses
// that for every certificate issued from now on. The old anchor stays in the
// bundle until everything signed under it has expired; Maintain prunes it.
// Clients that trust AnchorsPEM (browsers, for the HTTPS edge) must be given
// the new anchor.
func (a *Authority) RotateAnchor(ctx context.Context) error {
	return a.change(ctx, func(s *caState, now time.Time) (bool, error) {
		return true, a.rotateAnchor(s, now)
	})
}

// Maintain runs one pass of upkeep: it rotates the issuer after 2/3 of its
// life (and the anchor after 2/3 of its own), prunes retired issuers and
// anchors once nothing they signed can still be valid, and drops expired
// certificates from the cache. It saves the state if it changed it.
func (a *Authority) Maintain(ctx context.Context) error {
	err := a.change(ctx, func(s *caState, now time.Time) (bool, error) {
		retiredOut := func(c *authority) bool { return !c.until.IsZero() && !now.Before(c.until) }
		for _, an := range s.anchors {
			if retiredOut(an) {
				a.log.Info("mesh CA: pruned retired trust anchor", "anchor", serial(an.cert))
			}
		}
		n := len(s.anchors) + len(s.previous)
		s.anchors = slices.DeleteFunc(s.anchors, retiredOut)
		s.previous = slices.DeleteFunc(s.previous, retiredOut)
		changed := len(s.anchors)+len(s.previous) != n
		switch {
		case due(s.anchors[len(s.anchors)-1].cert, now):
			a.log.Warn("mesh CA: trust anchor has used 2/3 of its life; rotating it: clients that trust the old anchor by hand must be given the new one")
			return true, a.rotateAnchor(s, now)
		case due(s.issuer.cert, now):
			return true, a.rotateIssuer(s, now)
		}
		return changed, nil
	})
	if err != nil {
		return err
	}
	now := a.opts.Now()
	a.rw.Lock()
	defer a.rw.Unlock()
	for k, c := range a.leaves {
		if !now.Before(c.cert.Leaf.NotAfter) {
			delete(a.leaves, k)
		}
	}
	for k, c := range a.servers {
		if !now.Before(c.cert.Leaf.NotAfter) {
			delete(a.servers, k)
		}
	}
	return nil
}

// due reports whether a CA certificate has used 2/3 of its lifetime.
func due(c *x509.Certificate, now time.Time) bool {
	start := c.NotBefore.Add(clockSkew)
	return !now.Before(start.Add(c.NotAfter.Sub(start) * 2 / 3))
}

// change applies f to a copy of the state and, if f changed it, saves and
// publishes the copy. Publishing a new issuer empties the certificate caches.
func (a *Authority) change(ctx context.Context, f func(s *caState, now time.Time) (bool, error)) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.state()
	next := &caState{
		anchors:  make([]*authority, len(cur.anchors)),
		issuer:   cur.issuer,
		previous: slices.Clone(cur.previous),
	}
	for i, an := range cur.anchors { // copied: rotation retires one in place
		c := *an
		next.anchors[i] = &c
	}
	changed, err := f(next, a.opts.Now())
	if err != nil || !changed {
		return err
	}
	next.finish(a.td)
	if err := a.save(ctx, next); err != nil {
		return err
	}
	a.rw.Lock()
	defer a.rw.Unlock()
	a.ca = next
	if next.issuer != cur.issuer {
		clear(a.leaves)
		clear(a.servers)
	}
	return nil
}

func (a *Authority) retire(c *authority, now time.Time) {
	c.key = nil
	c.until = now.Add(a.opts.LeafTTL + overlapMargin)
}

func (a *Authority) rotateIssuer(s *caState, now time.Time) error {
	issuer, err := a.newCA(s.anchors[len(s.anchors)-1], now)
	if err != nil {
		return err
	}
	old := *s.issuer
	a.retire(&old, now)
	s.previous = append(s.previous, &old)
	s.issuer = issuer
	a.log.Info("mesh CA: rotated issuer", "issuer", serial(issuer.cert), "previous", serial(old.cert))
	return nil
}

func (a *Authority) rotateAnchor(s *caState, now time.Time) error {
	anchor, err := a.newCA(nil, now)
	if err != nil {
		return err
	}
	old := s.anchors[len(s.anchors)-1] // already a copy, see change
	a.retire(old, now)
	s.anchors = append(s.anchors, anchor)
	a.log.Info("mesh CA: rotated trust anchor", "anchor", serial(anchor.cert), "previous", serial(old.cert), "trusted_until", old.until)
	return a.rotateIssuer(s, now)
}

// newCA makes a trust anchor if parent is nil, else an issuer signed by parent.
func (a *Authority) newCA(parent *authority, now time.Time) (*authority, error) {
	sn, err := newSerial()
	if err != nil {
		return nil, err
	}
	kind, ttl := "CA", a.opts.AnchorTTL
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	if parent != nil {
		kind, ttl = "issuer", a.opts.IssuerTTL
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
	}
	// A distinct name per certificate keeps trust stores that list CAs by
	// name (browsers, keychains) readable across rotations.
	tmpl.Subject = pkix.Name{
		Organization:       []string{"pier"},
		OrganizationalUnit: []string{a.td.Name()},
		CommonName:         fmt.Sprintf("pier mesh %s %.8s", kind, serial(tmpl)),
	}
	return sign(parent, tmpl, now, ttl)
}

// sign makes a P-256 key and a certificate for it from tmpl, valid from now
// (backdated by clockSkew) for ttl but never past its parent, signed by
// parent or, if parent is nil, self-signed.
func sign(parent *authority, tmpl *x509.Certificate, now time.Time, ttl time.Duration) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if tmpl.SerialNumber == nil {
		if tmpl.SerialNumber, err = newSerial(); err != nil {
			return nil, err
		}
	}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-clockSkew), now.Add(ttl)
	parentCert, parentKey := tmpl, key
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.key
		tmpl.NotAfter = earliest(tmpl.NotAfter, parent.cert.NotAfter)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new certificate: %w", err)
	}
	return &authority{cert: cert, key: key}, nil
}

var serialMax = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))

// newSerial is a random 128-bit serial number, never zero.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, serialMax)
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func serial(c *x509.Certificate) string { return fmt.Sprintf("%032x", c.SerialNumber) }

func info(c *x509.Certificate) CertInfo {
	ci := CertInfo{
		Subject:   c.Subject.String(),
		Serial:    serial(c),
		NotBefore: c.NotBefore,
		NotAfter:  c.NotAfter,
	}
	if len(c.URIs) == 1 {
		ci.SPIFFEID = c.URIs[0].String()
	}
	return ci
}

// AnchorsPEM is the PEM encoding of every anchor currently trusted, for
// clients told to "trust this CA".
func (a *Authority) AnchorsPEM() []byte {
	var out []byte
	for _, an := range a.state().anchors {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: an.cert.Raw})...)
	}
	return out
}
