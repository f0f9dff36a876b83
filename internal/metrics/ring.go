package metrics

import (
	"sync"
	"time"
)

// History resolutions. A series keeps fineSlots 1-second buckets and
// coarseSlots 1-minute buckets in rings indexed by unix time.
const (
	fineWidth   = time.Second
	coarseWidth = time.Minute
	fineSlots   = 600  // 10 minutes
	coarseSlots = 1440 // 24 hours
	chunkLen    = 60   // buckets allocated together; both ring sizes are multiples
)

// bucket is one time bucket of one series: 64 bytes plus its histogram's
// backing array.
type bucket struct {
	requests, failures uint32
	opened, tcpFailed  uint32
	denied             uint32
	histLo             uint32 // bin of hist[0]
	bytesIn, bytesOut  uint64
	hist               []uint32
}

// delta is one event's contribution to a bucket.
type delta struct {
	requests, failures uint32
	opened, tcpFailed  uint32
	denied             uint32
	bytesIn, bytesOut  uint64
	bin                int   // latency bin, or -1
	open               int64 // change of open connections: +1, -1 or 0
}

func (b *bucket) add(d delta) {
	b.requests += d.requests
	b.failures += d.failures
	b.opened += d.opened
	b.tcpFailed += d.tcpFailed
	b.denied += d.denied
	b.bytesIn += d.bytesIn
	b.bytesOut += d.bytesOut
	if d.bin >= 0 {
		b.observe(d.bin)
	}
}

func (b *bucket) empty() bool {
	return b.requests|b.opened|b.tcpFailed|b.denied == 0 && b.bytesIn|b.bytesOut == 0
}

// reset empties b, keeping its histogram's capacity for reuse.
func (b *bucket) reset() {
	*b = bucket{hist: b.hist[:0]}
}

// chunk is chunkLen consecutive buckets of a ring. Chunks are allocated on
// first write and released once all their data has expired, so a quiet
// series costs a few KB rather than a full day of buckets.
type chunk struct {
	last    int64 // newest bucket index written here
	buckets [chunkLen]bucket
}

// ring holds the buckets with index (unix ns / width) in (head-len, head].
// Invariant: every bucket holds only data for the index in that range that
// maps to its slot; advance resets slots as head moves past them.
type ring struct {
	width  int64 // bucket width in ns
	head   int64
	chunks []*chunk
}

func newRing(width time.Duration, slots int, now int64) ring {
	return ring{width: int64(width), head: now / int64(width), chunks: make([]*chunk, slots/chunkLen)}
}

func (r *ring) len() int64 { return int64(len(r.chunks)) * chunkLen }

// advance moves head forward to idx, resetting the slots it passes over and
// releasing chunks whose newest data has fallen out of the ring.
func (r *ring) advance(idx int64) {
	if idx <= r.head {
		return
	}
	n := r.len()
	for i := max(r.head+1, idx-n+1); i <= idx; i++ {
		if c := r.chunks[(i%n)/chunkLen]; c != nil {
			c.buckets[i%chunkLen].reset()
		}
	}
	r.head = idx
	for j, c := range r.chunks {
		if c != nil && c.last <= idx-n {
			r.chunks[j] = nil
		}
	}
}

// at returns the bucket for idx, or nil when idx is outside the ring.
// Callers advance to idx first.
func (r *ring) at(idx int64) *bucket {
	n := r.len()
	if idx > r.head || idx <= r.head-n {
		return nil
	}
	slot := idx % n
	c := r.chunks[slot/chunkLen]
	if c == nil {
		c = new(chunk)
		r.chunks[slot/chunkLen] = c
	}
	c.last = max(c.last, idx)
	return &c.buckets[slot%chunkLen]
}

// each calls f for every non-empty bucket with index in [from, to].
func (r *ring) each(from, to int64, f func(idx int64, b *bucket)) {
	n := r.len()
	from, to = max(from, r.head-n+1), min(to, r.head)
	for i := from; i <= to; i++ {
		c := r.chunks[(i%n)/chunkLen]
		if c == nil {
			continue
		}
		if b := &c.buckets[i%chunkLen]; !b.empty() {
			f(i, b)
		}
	}
}

// series is the history of one traffic key (src, dst, machine) or one
// route of a dst app. Identity fields are immutable; the rest is guarded
// by mu.
type series struct {
	src, dst, machine string    // traffic series; denials use machine ""
	method, path      string    // route series
	prom              *promEdge // nil for route series

	mu       sync.Mutex
	fine     ring
	coarse   ring
	lastSeen int64 // unix ns, 0 if never
	open     int64 // TCP connections open now
}

func newSeries(now int64) *series {
	return &series{
		fine:   newRing(fineWidth, fineSlots, now),
		coarse: newRing(coarseWidth, coarseSlots, now),
	}
}

// record adds d at time now and returns the number of connections open
// before it.
func (s *series) record(now int64, d delta) (openBefore int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastSeen = max(s.lastSeen, now)
	for _, r := range [...]*ring{&s.fine, &s.coarse} {
		idx := now / r.width
		r.advance(idx)
		if b := r.at(idx); b != nil {
			b.add(d)
		}
	}
	openBefore = s.open
	s.open = max(s.open+d.open, 0)
	return openBefore
}

// each calls f for every non-empty bucket of the fine or coarse ring with
// index in [from, to], after advancing that ring to now. It returns the
// series' open connections and last-seen time.
func (s *series) each(fine bool, now, from, to int64, f func(idx int64, b *bucket)) (open, lastSeen int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &s.coarse
	if fine {
		r = &s.fine
	}
	r.advance(now / r.width)
	r.each(from, to, f)
	return s.open, s.lastSeen
}

// idle reports whether s can be dropped: nothing seen since cutoff and no
// connection open.
func (s *series) idle(cutoff int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSeen < cutoff && s.open == 0
}
