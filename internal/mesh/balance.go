package mesh

import (
	"context"
	"math"
	"math/rand/v2"
	"net/url"
	"sync"
	"time"
)

// A pool is the machines of one app that are in traffic. Calls go to the
// cheaper of two machines drawn at random, where a machine's cost is its
// latency average (an EWMA that decays over decay, and jumps up at once to
// a slower sample: "peak EWMA") times the calls it has in flight plus one.
// Machines that answer quickly and are not busy get more calls, without
// every proxy herding onto the single fastest one.
type pool struct {
	mu       sync.Mutex
	backends []*backend
	changed  chan struct{} // closed and replaced when a backend is added
}

type backend struct {
	id  string
	url *url.URL

	mu       sync.Mutex
	inflight int
	cost     float64 // peak EWMA of latency, in nanoseconds
	stamp    time.Time
	draining bool
	idle     chan struct{} // closed when draining and inflight reaches 0
}

const (
	decay       = 10 * time.Second
	initialCost = float64(time.Millisecond) // a new machine is assumed fast, not free
)

func newPool() *pool { return &pool{changed: make(chan struct{})} }

func (m *Mesh) poolOf(app string, create bool) *pool {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pools[app]
	if p == nil && create {
		p = newPool()
		m.pools[app] = p
	}
	return p
}

// Add puts the machine id of app, listening at addr (host:port), into
// traffic.
func (m *Mesh) Add(app, id, addr string) {
	p := m.poolOf(app, true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		if b.id == id {
			return
		}
	}
	p.backends = append(p.backends, &backend{id: id, url: &url.URL{Scheme: "http", Host: addr}, cost: initialCost, stamp: time.Now()})
	close(p.changed)
	p.changed = make(chan struct{})
}

// Remove takes the machine id out of traffic at once.
func (m *Mesh) Remove(app, id string) { m.take(app, id) }

func (m *Mesh) take(app, id string) *backend {
	p := m.poolOf(app, false)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, b := range p.backends {
		if b.id == id {
			p.backends = append(p.backends[:i:i], p.backends[i+1:]...)
			return b
		}
	}
	return nil
}

// Drain takes the machine out of traffic and waits (bounded by ctx) for
// its calls in flight to finish.
func (m *Mesh) Drain(ctx context.Context, app, id string) error {
	b := m.take(app, id)
	if b == nil {
		return nil
	}
	b.mu.Lock()
	b.draining = true
	if b.inflight == 0 {
		b.mu.Unlock()
		return nil
	}
	b.idle = make(chan struct{})
	idle := b.idle
	b.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pick chooses a machine of app for one call, waiting (bounded) for one
// to enter traffic. The caller must call b.done when the call ends.
func (m *Mesh) pick(ctx context.Context, app string) (*backend, error) {
	p := m.poolOf(app, true)
	var wait <-chan time.Time
	woke := false
	for {
		p.mu.Lock()
		b := p.choose()
		changed := p.changed
		p.mu.Unlock()
		if b != nil {
			return b, nil
		}
		if !woke {
			woke = true
			if m.cfg.Wake != nil {
				go m.cfg.Wake(app)
			}
			t := time.NewTimer(m.cfg.WaitForBackend)
			defer t.Stop()
			wait = t.C
		}
		select {
		case <-changed:
		case <-wait:
			return nil, errNoBackend
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// machine returns app's machine id for one call, if it is in traffic.
// The caller must call b.done when the call ends.
func (m *Mesh) machine(app, id string) *backend {
	p := m.poolOf(app, false)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		if b.id == id {
			b.mu.Lock()
			b.inflight++
			b.mu.Unlock()
			return b
		}
	}
	return nil
}

// choose runs under p.mu.
func (p *pool) choose() *backend {
	n := len(p.backends)
	if n == 0 {
		return nil
	}
	a := p.backends[rand.IntN(n)]
	if n > 1 {
		i := rand.IntN(n - 1)
		if p.backends[i] == a {
			i = n - 1
		}
		if c := p.backends[i]; c.load() < a.load() {
			a = c
		}
	}
	a.mu.Lock()
	a.inflight++
	a.mu.Unlock()
	return a
}

func (b *backend) load() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.decayed(time.Now()) * float64(b.inflight+1)
}

// decayed is the cost as of now, relaxed towards zero since the last
// sample so a machine that was slow once is tried again. b.mu is held.
func (b *backend) decayed(now time.Time) float64 {
	dt := now.Sub(b.stamp)
	if dt <= 0 {
		return b.cost
	}
	return b.cost * math.Exp(-float64(dt)/float64(decay))
}

// done ends one call that took rtt (0 when it failed before an answer).
func (b *backend) done(rtt time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rtt > 0 {
		now := time.Now()
		if s := float64(rtt); s > b.cost {
			b.cost = s // peak: a slow answer counts at once
		} else {
			w := math.Exp(-float64(now.Sub(b.stamp)) / float64(decay))
			b.cost = b.cost*w + s*(1-w)
		}
		b.stamp = now
	}
	b.inflight--
	if b.draining && b.inflight == 0 && b.idle != nil {
		close(b.idle)
		b.idle = nil
	}
}
