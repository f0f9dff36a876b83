package mesh

import (
	"context"
	"fmt"

	"github.com/pier-dev/pier/internal/identity"
)

// Identity is an app's mesh identity and the certificate its machines'
// calls carry (all machines of an app share it: the mesh proxy holds it
// for them, and no key enters a machine).
type Identity struct {
	App         string            `json:"app"`
	SPIFFEID    string            `json:"spiffe_id"`
	Certificate identity.CertInfo `json:"certificate"`
	TrustDomain string            `json:"trust_domain"`
	Machines    []IdentityMachine `json:"machines"`
	Mesh        bool              `json:"mesh"` // false: this server's runtime has no mesh data plane
	Authority   identity.Status   `json:"authority"`
}

// IdentityMachine is one machine that carries an identity.
type IdentityMachine struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// Identity returns app's identity, issuing its certificate if none is
// current.
func (s *Service) Identity(ctx context.Context, app string) (Identity, error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return Identity{}, err
	}
	id := s.CA.AppID(app)
	if _, err := s.CA.Certificate(id); err != nil {
		return Identity{}, fmt.Errorf("certificate of %s: %w", app, err)
	}
	info, _ := s.CA.Issued(id)
	out := Identity{App: app, SPIFFEID: id.String(), Certificate: info, TrustDomain: s.CA.TrustDomain().String(),
		Mesh: s.Data != nil, Authority: s.CA.Status(), Machines: []IdentityMachine{}}
	for _, m := range s.Fleet.Machines(app) {
		out.Machines = append(out.Machines, IdentityMachine{ID: m.ID, State: m.State})
	}
	return out, nil
}

// Authority describes the mesh's certificate authority.
func (s *Service) Authority() identity.Status { return s.CA.Status() }

// Rotate rotates the issuer, or the trust anchor (which also makes a new
// issuer) when anchor is set. Calls go on without a failure: new
// handshakes use new certificates, and the previous anchor stays trusted
// until every certificate under it has expired.
func (s *Service) Rotate(ctx context.Context, anchor bool) (identity.Status, error) {
	var err error
	what := "issuer"
	if anchor {
		what = "trust anchor"
		err = s.CA.RotateAnchor(ctx)
	} else {
		err = s.CA.RotateIssuer(ctx)
	}
	if err != nil {
		return identity.Status{}, fmt.Errorf("rotate the mesh %s: %w", what, err)
	}
	st := s.CA.Status()
	s.event(ctx, "mesh", "mesh.rotate", "rotated the %s; issuer is now %s", what, st.Issuer.Serial)
	return st, nil
}
