// Package identity is pier's built-in certificate authority for the service
// mesh. It owns the keys, issues X.509 certificates to workloads and verifies
// the certificates peers present.
//
// The model has three levels:
//
//	trust anchor (root CA, self-signed, years)
//	  └── issuer (intermediate CA, signed by the newest anchor, days)
//	        └── leaves (one per workload identity, hours; and server
//	            certificates for the HTTPS edge's local domains)
//
// Workload leaves are SPIFFE X509-SVIDs: their only URI SAN is a SPIFFE ID
// such as spiffe://pier.internal/app/web, so peers can verify them with
// go-spiffe against Bundle, which holds every anchor currently trusted.
//
// Rotation never interrupts traffic. Rotating the issuer signs a new one with
// the current anchor; leaves from the old issuer keep verifying until they
// expire because they chain to the same anchor. Rotating the anchor adds a
// new one to the bundle and signs a new issuer with it; the old anchor stays
// trusted until every leaf signed under it has expired (LeafTTL after the
// switch, plus a margin) and Maintain then prunes it. In both cases the
// certificate cache is emptied, so the next Certificate or ServerCertificate
// call gets one from the new issuer. Maintain, which the server runs every
// minute, also rotates the issuer once it has used 2/3 of its life (the
// anchor likewise, rare at 10 years) and prunes what has expired out.
//
// Only the CA state is persisted: the anchors (the newest with its private
// key), the issuer and its key, and the certificates of retired issuers
// whose leaves may still be live. It goes through a Store, which must keep
// it confidential; FileStore seals it with the secrets keyring before it
// touches the disk. Leaves are never persisted: they are cheap to issue, are
// cached in memory and renewed at half their lifetime.
package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for Options.
const (
	DefaultTrustDomain = "pier.internal"
	DefaultLeafTTL     = 24 * time.Hour
	DefaultIssuerTTL   = 30 * 24 * time.Hour
	DefaultAnchorTTL   = 10 * 365 * 24 * time.Hour
	DefaultServerTTL   = 7 * 24 * time.Hour

	// MinTTL is the shortest lifetime accepted for leaves and server certificates.
	MinTTL = time.Minute
)

const (
	// clockSkew backdates NotBefore so a peer whose clock is slightly behind
	// accepts a fresh certificate. Renewal times use the real issuance time.
	clockSkew = time.Minute
	// overlapMargin is added to LeafTTL when deciding how long a retired
	// issuer or anchor must stay known: it covers clock skew, a leaf issued
	// while the rotation was being saved, and the Maintain interval.
	overlapMargin = 5 * time.Minute
)

// ErrTrustDomainMismatch is returned by Open when the stored CA belongs to
// another trust domain than the one configured.
var ErrTrustDomainMismatch = errors.New("stored CA belongs to another trust domain")

// Options configures an Authority. Zero fields get the documented defaults.
type Options struct {
	// TrustDomain names the mesh, e.g. "pier.internal" (default). It is the
	// host part of every SPIFFE ID issued and cannot change once the CA exists.
	TrustDomain string
	// LeafTTL is the lifetime of workload certificates: default 24h, at least
	// 1m, and at most a third of IssuerTTL so leaves never outlive their issuer.
	LeafTTL time.Duration
	// IssuerTTL is the lifetime of an issuer: default 30 days (or 3×LeafTTL
	// if that is longer). Maintain rotates it after 2/3 of that.
	IssuerTTL time.Duration
	// AnchorTTL is the lifetime of a trust anchor: default 10 years (or
	// 3×IssuerTTL if that is longer).
	AnchorTTL time.Duration
	// ServerTTL is the lifetime of ServerCertificate certificates: default 7
	// days, at least 1m. It is cut short if the issuer expires first.
	ServerTTL time.Duration
	// Now is the clock; default time.Now. Tests inject a fake one.
	Now func() time.Time
	// Log receives rotation and pruning events; default slog.Default().
	Log *slog.Logger
}

func (o Options) withDefaults() (Options, spiffeid.TrustDomain, error) {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(o.TrustDomain)
	if err != nil {
		return o, td, fmt.Errorf("trust domain %q: %w", o.TrustDomain, err)
	}
	if o.LeafTTL == 0 {
		o.LeafTTL = DefaultLeafTTL
	}
	if o.IssuerTTL == 0 {
		o.IssuerTTL = max(DefaultIssuerTTL, 3*o.LeafTTL)
	}
	if o.AnchorTTL == 0 {
		o.AnchorTTL = max(DefaultAnchorTTL, 3*o.IssuerTTL)
	}
	if o.ServerTTL == 0 {
		o.ServerTTL = DefaultServerTTL
	}
	switch {
	case o.LeafTTL < MinTTL:
		return o, td, fmt.Errorf("leaf TTL %s is too short: the minimum is %s", o.LeafTTL, MinTTL)
	case o.ServerTTL < MinTTL:
		return o, td, fmt.Errorf("server certificate TTL %s is too short: the minimum is %s", o.ServerTTL, MinTTL)
	case o.IssuerTTL < 3*o.LeafTTL:
		return o, td, fmt.Errorf("issuer TTL %s must be at least 3× the leaf TTL %s, so leaves never outlive their issuer", o.IssuerTTL, o.LeafTTL)
	case o.AnchorTTL < 3*o.IssuerTTL:
		return o, td, fmt.Errorf("anchor TTL %s must be at least 3× the issuer TTL %s", o.AnchorTTL, o.IssuerTTL)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o, td, nil
}

// Open loads the CA state from st, or creates a new anchor and issuer and
// saves them on first start. It then runs one Maintain pass, so a CA that
// was offline past its issuer's rotation time is brought up to date.
func Open(ctx context.Context, st Store, opts Options) (*Authority, error) {
	opts, td, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("mesh CA options: %w", err)
	}
	a := &Authority{
		opts:    opts,
		td:      td,
		store:   st,
		log:     opts.Log.With("trust_domain", td.Name()),
		leaves:  map[spiffeid.ID]*cached{},
		servers: map[string]*cached{}, verified: map[[32]byte]verifiedChain{},
	}
	data, err := st.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load mesh CA: %w", err)
	}
	if data == nil {
		ca, err := a.create()
		if err != nil {
			return nil, err
		}
		if err := a.save(ctx, ca); err != nil {
			return nil, err
		}
		a.ca = ca
		a.log.Info("mesh CA created", "anchor", serial(ca.anchors[0].cert), "issuer", serial(ca.issuer.cert))
	} else {
		a.ca, err = decodeState(data, td)
		if err != nil {
			return nil, err
		}
	}
	if err := a.Maintain(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// AppID is the SPIFFE ID of app in td: spiffe://<td>/app/<app>. It is the
// zero ID if app is not a valid path segment; Certificate rejects that.
func AppID(td spiffeid.TrustDomain, app string) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "app", app)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// TrustDomain is the trust domain every issued SPIFFE ID belongs to.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.td }

// AppID is the SPIFFE ID of app in this authority's trust domain.
func (a *Authority) AppID(app string) spiffeid.ID { return AppID(a.td, app) }

// CertInfo describes a certificate for status output.
type CertInfo struct {
	Subject   string    `json:"subject"`
	SPIFFEID  string    `json:"spiffe_id,omitempty"`
	Serial    string    `json:"serial"` // lowercase hex, no colons
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
}

// Status describes the CA: the anchors trusted (oldest first, the last one
// signs issuers), the current issuer and the retired issuers whose leaves
// may still be in use.
type Status struct {
	TrustDomain     string        `json:"trust_domain"`
	LeafTTL         time.Duration `json:"leaf_ttl"` // nanoseconds in JSON
	Anchors         []CertInfo    `json:"anchors"`
	Issuer          CertInfo      `json:"issuer"`
	PreviousIssuers []CertInfo    `json:"previous_issuers"`
}

// Status reports the current anchors and issuers.
func (a *Authority) Status() Status {
	ca := a.state()
	st := Status{
		TrustDomain:     a.td.Name(),
		LeafTTL:         a.opts.LeafTTL,
		Anchors:         []CertInfo{},
		Issuer:          info(ca.issuer.cert),
		PreviousIssuers: []CertInfo{},
	}
	for _, an := range ca.anchors {
		st.Anchors = append(st.Anchors, info(an.cert))
	}
	for _, is := range ca.previous {
		st.PreviousIssuers = append(st.PreviousIssuers, info(is.cert))
	}
	return st
}
