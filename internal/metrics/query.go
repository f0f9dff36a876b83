package metrics

import (
	"cmp"
	"slices"
	"time"
)

const (
	fineWindow = fineSlots * fineWidth     // longest window read at 1-second resolution
	maxWindow  = coarseSlots * coarseWidth // longest window; longer ones are clamped
)

// Stat is the golden metrics of one row of a query over a window.
type Stat struct {
	Src     string `json:"src,omitempty"`
	Dst     string `json:"dst"`
	Machine string `json:"machine,omitempty"`
	Method  string `json:"method,omitempty"` // Paths only
	Path    string `json:"path,omitempty"`   // Paths only

	Requests  int64 `json:"requests"`
	Successes int64 `json:"successes"`
	Failures  int64 `json:"failures"`
	// SuccessRate is Successes/Requests, and 0 when there were no requests:
	// check Requests and show "-" then.
	SuccessRate float64 `json:"success_rate"`
	RPS         float64 `json:"rps"` // Requests per second of the window
	// Latency percentiles in milliseconds, 0 without requests.
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`

	BytesIn   int64 `json:"bytes_in"`   // towards Dst
	BytesOut  int64 `json:"bytes_out"`  // from Dst
	TCPOpen   int64 `json:"tcp_open"`   // connections open now
	TCPOpened int64 `json:"tcp_opened"` // connections opened within the window
	TCPFailed int64 `json:"tcp_failed"` // connections that ended in an error within the window
	Denied    int64 `json:"denied"`     // attempts refused by policy

	LastSeen time.Time `json:"last_seen,omitzero"` // last event on the row's series, zero if never
}

// Point is one step of a History.
type Point struct {
	At time.Time `json:"at"` // start of the step
	Stat
}

// Apps returns one row per Dst app, all sources and machines merged, for
// apps with activity in the window or open connections, sorted by Dst.
func (r *Registry) Apps(window time.Duration) []Stat {
	rows := r.rows(r.traffic(), window, func(s *series) rowKey { return rowKey{dst: s.dst} })
	slices.SortFunc(rows, func(a, b Stat) int { return cmp.Compare(a.Dst, b.Dst) })
	return rows
}

// Edges returns one row per (Src, Dst) with activity in the window or open
// connections, sorted by Src then Dst.
func (r *Registry) Edges(window time.Duration) []Stat {
	rows := r.rows(r.traffic(), window, edgeKey)
	slices.SortFunc(rows, byEdge)
	return rows
}

// Machines returns one row per machine of Dst app with requests or
// connections in the window, sorted by Machine. Denials happen before a
// machine is chosen, so Denied is always 0 here; a request that failed
// before reaching a machine may be recorded with machine "".
func (r *Registry) Machines(app string, window time.Duration) []Stat {
	var ss []*series
	for _, s := range r.traffic() {
		if s.dst == app {
			ss = append(ss, s)
		}
	}
	rows := r.rows(ss, window, func(s *series) rowKey { return rowKey{dst: s.dst, machine: s.machine} })
	rows = slices.DeleteFunc(rows, func(st Stat) bool {
		return st.Requests == 0 && st.TCPOpen == 0 && st.TCPOpened == 0 && st.TCPFailed == 0 && st.BytesIn == 0 && st.BytesOut == 0
	})
	for i := range rows {
		rows[i].Denied = 0
	}
	slices.SortFunc(rows, func(a, b Stat) int { return cmp.Compare(a.Machine, b.Machine) })
	return rows
}

// Paths returns the busiest routes of Dst app in the window, by Requests
// descending, at most limit of them (all if limit <= 0).
func (r *Registry) Paths(app string, window time.Duration, limit int) []Stat {
	r.mu.RLock()
	var ss []*series
	if rt := r.routes[app]; rt != nil {
		for _, m := range []map[string]*series{rt.routes, rt.other} {
			for _, s := range m {
				ss = append(ss, s)
			}
		}
	}
	r.mu.RUnlock()
	rows := r.rows(ss, window, func(s *series) rowKey { return rowKey{dst: s.dst, method: s.method, path: s.path} })
	rows = slices.DeleteFunc(rows, func(st Stat) bool { return st.Requests == 0 })
	slices.SortFunc(rows, func(a, b Stat) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Path, b.Path), cmp.Compare(a.Method, b.Method))
	})
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	return rows
}

// Observed returns every (Src, Dst) edge seen within the last 24 hours, or
// with a connection open now, with totals over 24 hours: the learned
// dependency graph. Edges that only ever had denials are included.
func (r *Registry) Observed() []Stat {
	rows := r.rows(r.traffic(), maxWindow, edgeKey)
	cutoff := time.Unix(0, r.now().UnixNano()-int64(maxWindow))
	rows = slices.DeleteFunc(rows, func(st Stat) bool { return st.LastSeen.Before(cutoff) && st.TCPOpen == 0 })
	slices.SortFunc(rows, byEdge)
	return rows
}

// History returns app's metrics as a time series over window, one Point per
// step, oldest first, from traffic of src ("" for all sources). Windows up
// to 10 minutes use 1-second buckets, longer ones 1-minute buckets; step is
// rounded up to a whole number of buckets and at most the window. The last
// Point holds the current bucket; Points cover whole steps only, so with a
// step that does not divide the window the covered span is shorter. RPS is
// per second of a step; TCPOpen and LastSeen are not tracked per step and
// stay zero.
func (r *Registry) History(app, src string, window, step time.Duration) []Point {
	now := r.now().UnixNano()
	w := spanFor(window)
	width := int64(coarseWidth)
	if w.fine {
		width = int64(fineWidth)
	}
	per := min(max(ceilDiv(int64(step), width), 1), w.buckets) // buckets per point
	cur := now / width
	aggs := make([]agg, w.buckets/per)
	first := cur - int64(len(aggs))*per + 1

	for _, s := range r.traffic() {
		if s.dst != app || src != "" && s.src != src {
			continue
		}
		s.each(w.fine, now, first, cur, func(idx int64, b *bucket) { aggs[(idx-first)/per].add(idx, b) })
	}
	pts := make([]Point, len(aggs))
	for i := range aggs {
		pts[i] = Point{
			At:   time.Unix(0, (first+int64(i)*per)*width),
			Stat: aggs[i].stat(rowKey{src: src, dst: app}, time.Duration(per*width)),
		}
	}
	return pts
}

// span is a query window resolved to a ring: the newest buckets buckets of
// the fine or coarse ring.
type span struct {
	fine    bool
	buckets int64
	dur     time.Duration // the clamped window
}

func spanFor(window time.Duration) span {
	window = min(max(window, time.Second), maxWindow)
	if window <= fineWindow {
		return span{true, ceilDiv(int64(window), int64(fineWidth)), window}
	}
	return span{false, ceilDiv(int64(window), int64(coarseWidth)), window}
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

type rowKey struct{ src, dst, machine, method, path string }

func edgeKey(s *series) rowKey { return rowKey{src: s.src, dst: s.dst} }

func byEdge(a, b Stat) int { return cmp.Or(cmp.Compare(a.Src, b.Src), cmp.Compare(a.Dst, b.Dst)) }

// traffic returns every traffic series.
func (r *Registry) traffic() []*series {
	r.maybeSweep(r.now().UnixNano())
	r.mu.RLock()
	defer r.mu.RUnlock()
	ss := make([]*series, 0, len(r.series))
	for _, s := range r.series {
		ss = append(ss, s)
	}
	return ss
}

// rows merges ss over window into one Stat per key, dropping rows with no
// activity in the window and no open connection.
func (r *Registry) rows(ss []*series, window time.Duration, key func(*series) rowKey) []Stat {
	now := r.now().UnixNano()
	w := spanFor(window)
	width := int64(coarseWidth)
	if w.fine {
		width = int64(fineWidth)
	}
	cur := now / width
	groups := make(map[rowKey]*agg)
	for _, s := range ss {
		k := key(s)
		a := groups[k]
		if a == nil {
			a = new(agg)
			groups[k] = a
		}
		open, last := s.each(w.fine, now, cur-w.buckets+1, cur, a.add)
		a.open += open
		a.lastSeen = max(a.lastSeen, last)
	}
	rows := make([]Stat, 0, len(groups))
	for k, a := range groups {
		if a.active() {
			rows = append(rows, a.stat(k, w.dur))
		}
	}
	return rows
}

// agg accumulates buckets into one row.
type agg struct {
	requests, failures, opened, tcpFailed, denied uint64
	bytesIn, bytesOut                             uint64
	open, lastSeen                                int64
	hist                                          [numBins]uint64
}

func (a *agg) add(_ int64, b *bucket) {
	a.requests += uint64(b.requests)
	a.failures += uint64(b.failures)
	a.opened += uint64(b.opened)
	a.tcpFailed += uint64(b.tcpFailed)
	a.denied += uint64(b.denied)
	a.bytesIn += b.bytesIn
	a.bytesOut += b.bytesOut
	for i, c := range b.hist {
		a.hist[int(b.histLo)+i] += uint64(c)
	}
}

func (a *agg) active() bool {
	return a.requests|a.opened|a.tcpFailed|a.denied|a.bytesIn|a.bytesOut != 0 || a.open > 0
}

func (a *agg) stat(k rowKey, window time.Duration) Stat {
	st := Stat{
		Src: k.src, Dst: k.dst, Machine: k.machine, Method: k.method, Path: k.path,
		Requests:  int64(a.requests),
		Successes: int64(a.requests - a.failures),
		Failures:  int64(a.failures),
		RPS:       float64(a.requests) / window.Seconds(),
		P50:       quantile(&a.hist, a.requests, 0.50),
		P95:       quantile(&a.hist, a.requests, 0.95),
		P99:       quantile(&a.hist, a.requests, 0.99),
		BytesIn:   int64(a.bytesIn),
		BytesOut:  int64(a.bytesOut),
		TCPOpen:   a.open,
		TCPOpened: int64(a.opened),
		TCPFailed: int64(a.tcpFailed),
		Denied:    int64(a.denied),
	}
	if a.requests > 0 {
		st.SuccessRate = float64(st.Successes) / float64(a.requests)
	}
	if a.lastSeen != 0 {
		st.LastSeen = time.Unix(0, a.lastSeen)
	}
	return st
}
