package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// storedState is the persisted CA. Certificates and keys are DER (keys
// PKCS#8); the whole document goes to the Store, which keeps it confidential.
type storedState struct {
	Version         int               `json:"version"`
	TrustDomain     string            `json:"trust_domain"`
	Anchors         []storedAuthority `json:"anchors"` // oldest first
	Issuer          storedAuthority   `json:"issuer"`
	PreviousIssuers []storedAuthority `json:"previous_issuers,omitempty"`
}

type storedAuthority struct {
	Cert  []byte    `json:"cert"`
	Key   []byte    `json:"key,omitempty"` // only while it signs
	Until time.Time `json:"until,omitzero"`
}

const stateVersion = 1

func (a *Authority) save(ctx context.Context, s *caState) error {
	st := storedState{Version: stateVersion, TrustDomain: a.td.Name()}
	var err error
	if st.Issuer, err = encode(s.issuer); err == nil {
		if st.Anchors, err = encodeAll(s.anchors); err == nil {
			st.PreviousIssuers, err = encodeAll(s.previous)
		}
	}
	if err != nil {
		return err
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode mesh CA: %w", err)
	}
	if err := a.store.Save(ctx, data); err != nil {
		return fmt.Errorf("save mesh CA: %w", err)
	}
	return nil
}

func encode(c *authority) (storedAuthority, error) {
	sa := storedAuthority{Cert: c.cert.Raw, Until: c.until}
	if c.key != nil {
		k, err := x509.MarshalPKCS8PrivateKey(c.key)
		if err != nil {
			return sa, fmt.Errorf("encode CA key: %w", err)
		}
		sa.Key = k
	}
	return sa, nil
}

func encodeAll(cs []*authority) ([]storedAuthority, error) {
	out := make([]storedAuthority, 0, len(cs))
	for _, c := range cs {
		sa, err := encode(c)
		if err != nil {
			return nil, err
		}
		out = append(out, sa)
	}
	return out, nil
}

func decodeState(data []byte, td spiffeid.TrustDomain) (*caState, error) {
	var st storedState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("stored mesh CA is damaged: %w", err)
	}
	switch {
	case st.Version != stateVersion:
		return nil, fmt.Errorf("stored mesh CA has format version %d; this pier reads version %d", st.Version, stateVersion)
	case st.TrustDomain != td.Name():
		return nil, fmt.Errorf("%w: the CA was created for %q but the trust domain is configured as %q: set it back, or remove the stored CA to create a new one (every workload then gets new certificates)", ErrTrustDomainMismatch, st.TrustDomain, td.Name())
	case len(st.Anchors) == 0:
		return nil, errors.New("stored mesh CA has no trust anchor")
	}
	s := &caState{}
	var err error
	if s.issuer, err = decode(st.Issuer, true); err != nil {
		return nil, err
	}
	for i, sa := range st.Anchors {
		an, err := decode(sa, i == len(st.Anchors)-1) // the newest anchor signs
		if err != nil {
			return nil, err
		}
		s.anchors = append(s.anchors, an)
	}
	for _, sa := range st.PreviousIssuers {
		is, err := decode(sa, false)
		if err != nil {
			return nil, err
		}
		s.previous = append(s.previous, is)
	}
	return s.finish(td), nil
}

func decode(sa storedAuthority, needKey bool) (*authority, error) {
	cert, err := x509.ParseCertificate(sa.Cert)
	if err != nil {
		return nil, fmt.Errorf("stored mesh CA certificate: %w", err)
	}
	c := &authority{cert: cert, until: sa.Until}
	if !needKey {
		return c, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(sa.Key)
	if err != nil {
		return nil, fmt.Errorf("stored mesh CA key for %s: %w", serial(cert), err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("stored mesh CA key for %s does not match its certificate", serial(cert))
	}
	c.key = key
	return c, nil
}
