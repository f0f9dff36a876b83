package machines

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func newLease(ttl int, description string) Lease {
	b := make([]byte, 16)
	rand.Read(b)
	return Lease{Nonce: hex.EncodeToString(b), ExpiresAt: time.Now().Add(time.Duration(ttl) * time.Second).Unix(),
		Owner: "pier-admin", Description: description, Version: newInstanceID()}
}

// activeLease returns the unexpired lease, if any; e.mu must be held.
func (e *entry) activeLease() *Lease {
	if e.m.Lease == nil || time.Now().Unix() >= e.m.Lease.ExpiresAt {
		return nil
	}
	return e.m.Lease
}

// checkLease allows a change when the machine is not leased or the caller
// presents the lease's nonce.
func (e *entry) checkLease(nonce string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.activeLease()
	if l == nil || l.Nonce == nonce {
		return nil
	}
	return pier.Errorf(pier.Conflict, "machine %s is leased (%s) until %s: send its nonce in the fly-machine-lease-nonce header, or wait",
		e.m.ID, l.Description, time.Unix(l.ExpiresAt, 0).UTC().Format(time.RFC3339))
}

// LeaseRequest is the body of a lease acquisition.
type LeaseRequest struct {
	TTL         int    `json:"ttl,omitempty"` // seconds, default 30
	Description string `json:"description,omitempty"`
}

// AcquireLease takes (or, with the current nonce, extends) a machine's lease.
func (mg *Manager) AcquireLease(ctx context.Context, app, id, nonce string, req LeaseRequest) (Lease, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return Lease{}, err
	}
	if req.TTL < 0 || req.TTL > 24*3600 {
		return Lease{}, pier.Errorf(pier.Invalid, "invalid ttl %d (1 to 86400 seconds)", req.TTL)
	}
	if req.TTL == 0 {
		req.TTL = 30
	}
	e.mu.Lock()
	cur := e.activeLease()
	if cur != nil && cur.Nonce != nonce {
		e.mu.Unlock()
		return Lease{}, pier.Errorf(pier.Conflict, "machine %s already has a lease (%s) until %s", id, cur.Description, time.Unix(cur.ExpiresAt, 0).UTC().Format(time.RFC3339))
	}
	l := newLease(req.TTL, req.Description)
	if cur != nil {
		l.Nonce = cur.Nonce // extending keeps the nonce the holder knows
	}
	e.m.Lease = &l
	e.mu.Unlock()
	return l, mg.persist(ctx, e)
}

// GetLease returns the machine's active lease; NotFound when there is none.
func (mg *Manager) GetLease(app, id string) (Lease, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return Lease{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.activeLease()
	if l == nil {
		return Lease{}, pier.Errorf(pier.NotFound, "machine %s has no active lease", id)
	}
	out := *l
	out.Nonce = "" // only the holder knows it
	return out, nil
}

// ReleaseLease drops the lease; the caller must present its nonce.
func (mg *Manager) ReleaseLease(ctx context.Context, app, id, nonce string) error {
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	e.mu.Lock()
	l := e.activeLease()
	if l != nil && l.Nonce != nonce {
		e.mu.Unlock()
		return pier.Errorf(pier.Conflict, "wrong lease nonce for machine %s", id)
	}
	e.m.Lease = nil
	e.mu.Unlock()
	return mg.persist(ctx, e)
}

// Metadata returns a machine's metadata.
func (mg *Manager) Metadata(app, id string) (map[string]string, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for k, v := range e.m.Config.Metadata {
		out[k] = v
	}
	return out, nil
}

// SetMetadata sets (value != nil) or deletes one metadata key.
func (mg *Manager) SetMetadata(ctx context.Context, app, id, nonce, key string, value *string) error {
	if key == "" || len(key) > 128 {
		return pier.Errorf(pier.Invalid, "invalid metadata key %q (1 to 128 characters)", key)
	}
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	if err := e.checkLease(nonce); err != nil {
		return err
	}
	e.mu.Lock()
	if value == nil {
		if _, ok := e.m.Config.Metadata[key]; !ok {
			e.mu.Unlock()
			return pier.Errorf(pier.NotFound, "machine %s has no metadata key %q", id, key)
		}
		delete(e.m.Config.Metadata, key)
	} else {
		if e.m.Config.Metadata == nil {
			e.m.Config.Metadata = map[string]string{}
		}
		e.m.Config.Metadata[key] = *value
	}
	e.mu.Unlock()
	return mg.persist(ctx, e)
}

func splitHost(addr string) (string, string, error) { return net.SplitHostPort(addr) }
