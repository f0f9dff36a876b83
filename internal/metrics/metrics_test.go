package metrics

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

// clock is a fake clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTest(t *testing.T) (*Registry, *clock) {
	t.Helper()
	clk := newClock()
	return New(nil, Options{Now: clk.Now}), clk
}

func ok(r *Registry, e Edge, n int) {
	for range n {
		r.Request(e, "m1", Route{"GET", "/"}, 200, false, time.Millisecond, 0, 0)
	}
}

// only returns the single row of rows, failing otherwise.
func only(t *testing.T, rows []Stat) Stat {
	t.Helper()
	if len(rows) != 1 {
		t.Fatalf("got %d rows, want 1: %+v", len(rows), rows)
	}
	return rows[0]
}

func TestStatusClass(t *testing.T) {
	tests := []struct {
		status     int
		grpcFailed bool
		class      string
		ok         bool
	}{
		{101, false, "1xx", true},
		{200, false, "2xx", true},
		{304, false, "3xx", true},
		{404, false, "4xx", true},
		{500, false, "5xx", false},
		{503, true, "5xx", false},
		{0, false, "error", false},
		{0, true, "error", false},
		{42, false, "error", false},
		{600, false, "error", false},
		{200, true, "grpc_error", false},
	}
	for _, tt := range tests {
		class, ok := statusClass(tt.status, tt.grpcFailed)
		if classNames[class] != tt.class || ok != tt.ok {
			t.Errorf("statusClass(%d, %v) = %s, %v; want %s, %v", tt.status, tt.grpcFailed, classNames[class], ok, tt.class, tt.ok)
		}
	}
}

func TestExactCounts(t *testing.T) {
	r, _ := newTest(t)
	e := Edge{"web", "api"}
	for i := range 100 {
		status := 200
		switch {
		case i < 13:
			status = 500
		case i < 15:
			status = 0
		}
		r.Request(e, "m1", Route{"GET", "/"}, status, false, time.Millisecond, 10, 20)
	}
	st := only(t, r.Apps(time.Minute))
	want := Stat{Dst: "api", Requests: 100, Successes: 85, Failures: 15, SuccessRate: 0.85, RPS: 100.0 / 60, BytesIn: 1000, BytesOut: 2000}
	if st.Requests != want.Requests || st.Successes != want.Successes || st.Failures != want.Failures ||
		st.SuccessRate != want.SuccessRate || math.Abs(st.RPS-want.RPS) > 1e-9 ||
		st.BytesIn != want.BytesIn || st.BytesOut != want.BytesOut || st.Dst != want.Dst {
		t.Errorf("Apps = %+v, want %+v", st, want)
	}
	if got := only(t, r.Apps(10*time.Second)).RPS; got != 10 {
		t.Errorf("RPS over 10s = %v, want 10", got)
	}

	r.Request(Edge{"web", "grpc"}, "m1", Route{"POST", "/pkg.S/M"}, 200, true, time.Millisecond, 0, 0)
	r.Request(Edge{"web", "grpc"}, "m1", Route{"POST", "/pkg.S/M"}, 200, false, time.Millisecond, 0, 0)
	if st := r.Apps(time.Minute)[1]; st.Dst != "grpc" || st.Failures != 1 || st.SuccessRate != 0.5 {
		t.Errorf("gRPC row = %+v, want 1 failure of 2", st)
	}
}

func TestPercentiles(t *testing.T) {
	r, _ := newTest(t)
	e := Edge{"web", "api"}
	for i := 1; i <= 1000; i++ {
		r.Request(e, "m1", Route{"GET", "/"}, 200, false, time.Duration(i)*time.Millisecond, 0, 0)
	}
	st := only(t, r.Apps(time.Minute))
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"p50", st.P50, 500}, {"p95", st.P95, 950}, {"p99", st.P99, 990}} {
		if math.Abs(c.got-c.want)/c.want > 0.05 {
			t.Errorf("%s = %vms, want %vms ±5%%", c.name, c.got, c.want)
		}
	}
	if !(st.P50 <= st.P95 && st.P95 <= st.P99) {
		t.Errorf("percentiles out of order: %v %v %v", st.P50, st.P95, st.P99)
	}

	// A long tail: 90% at 10ms, 5% at 100ms, 5% at 1s.
	r, _ = newTest(t)
	for i := range 100 {
		d := 10 * time.Millisecond
		switch {
		case i >= 95:
			d = time.Second
		case i >= 90:
			d = 100 * time.Millisecond
		}
		r.Request(e, "m1", Route{"GET", "/"}, 200, false, d, 0, 0)
	}
	st = only(t, r.Apps(time.Minute))
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"p50", st.P50, 10}, {"p95", st.P95, 100}, {"p99", st.P99, 1000}} {
		if math.Abs(c.got-c.want)/c.want > 0.05 {
			t.Errorf("long tail: %s = %vms, want %vms ±5%%", c.name, c.got, c.want)
		}
	}
}

func TestWindows(t *testing.T) {
	r, clk := newTest(t)
	e := Edge{"web", "api"}
	requests := func(window time.Duration) int64 {
		t.Helper()
		rows := r.Apps(window)
		if len(rows) == 0 {
			return 0
		}
		return only(t, rows).Requests
	}

	ok(r, e, 10) // at t0 = 12:00:00
	clk.Add(30 * time.Second)
	ok(r, e, 5) // at t0+30s
	tests := []struct {
		at     time.Duration // since t0
		window time.Duration
		want   int64
	}{
		{30 * time.Second, time.Minute, 15},
		{30 * time.Second, 10 * time.Second, 5},
		{30 * time.Second, 31 * time.Second, 15},
		{30 * time.Second, 30 * time.Second, 5}, // 1s buckets t0+1s … t0+30s
		{30 * time.Second, 0, 5},                // raised to 1s: the current bucket
		{61 * time.Second, time.Minute, 5},
		{10*time.Minute + time.Second, 10 * time.Minute, 5},  // 1s buckets: t0 is out
		{10*time.Minute + time.Second, 11 * time.Minute, 15}, // 1m buckets: t0's minute is in
		{10*time.Minute + 30*time.Second, 10 * time.Minute, 0},
		{23*time.Hour + 59*time.Minute, 24 * time.Hour, 15},
		{23*time.Hour + 59*time.Minute, 48 * time.Hour, 15}, // clamped to 24h
		{24 * time.Hour, 48 * time.Hour, 0},                 // t0's minute has left the 24h ring
	}
	start := clk.Now().Add(-30 * time.Second)
	for _, tt := range tests {
		clk.Add(start.Add(tt.at).Sub(clk.Now()))
		if got := requests(tt.window); got != tt.want {
			t.Errorf("at t0+%v, window %v: %d requests, want %d", tt.at, tt.window, got, tt.want)
		}
	}
	if n := len(r.Apps(24 * time.Hour)); n != 0 {
		t.Errorf("Apps after 24h has %d rows, want none", n)
	}
}

func TestClampedRPS(t *testing.T) {
	r, _ := newTest(t)
	ok(r, Edge{"web", "api"}, 864)
	if got := only(t, r.Apps(72*time.Hour)).RPS; got != 0.01 {
		t.Errorf("RPS over a clamped window = %v, want 864/86400", got)
	}
}

func TestEdgesAppsMachines(t *testing.T) {
	r, _ := newTest(t)
	for _, c := range []struct {
		src, dst, machine string
		n                 int
	}{{"web", "api", "m1", 10}, {"edge", "api", "m2", 5}, {"web", "api", "m2", 2}, {"web", "db", "d1", 3}} {
		for range c.n {
			r.Request(Edge{c.src, c.dst}, c.machine, Route{"GET", "/"}, 200, false, time.Millisecond, 0, 0)
		}
	}
	type row struct {
		src, dst, machine string
		n                 int64
	}
	rowsOf := func(ss []Stat) []row {
		var out []row
		for _, s := range ss {
			out = append(out, row{s.Src, s.Dst, s.Machine, s.Requests})
		}
		return out
	}
	tests := []struct {
		name string
		got  []Stat
		want []row
	}{
		{"Apps", r.Apps(time.Minute), []row{{"", "api", "", 17}, {"", "db", "", 3}}},
		{"Edges", r.Edges(time.Minute), []row{{"edge", "api", "", 5}, {"web", "api", "", 12}, {"web", "db", "", 3}}},
		{"Machines", r.Machines("api", time.Minute), []row{{"", "api", "m1", 10}, {"", "api", "m2", 7}}},
		{"Machines of unknown", r.Machines("nope", time.Minute), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rowsOf(tt.got); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTCP(t *testing.T) {
	r, clk := newTest(t)
	e := Edge{"worker", "db"}
	for range 3 {
		r.ConnOpened(e, "d1")
	}
	r.ConnClosed(e, "d1", time.Second, 100, 2000, false)
	r.ConnClosed(e, "d1", time.Second, 1, 0, true)

	st := only(t, r.Edges(time.Minute))
	if st.TCPOpen != 1 || st.TCPOpened != 3 || st.TCPFailed != 1 || st.BytesIn != 101 || st.BytesOut != 2000 || st.Requests != 0 {
		t.Errorf("Edges = %+v", st)
	}
	if st := only(t, r.Machines("db", time.Minute)); st.Machine != "d1" || st.TCPOpen != 1 {
		t.Errorf("Machines = %+v", st)
	}

	// An open connection keeps its edge visible after its window has passed.
	clk.Add(time.Hour)
	if st := only(t, r.Apps(time.Minute)); st.TCPOpen != 1 || st.TCPOpened != 0 {
		t.Errorf("an hour later: %+v", st)
	}
	r.ConnClosed(e, "d1", time.Hour, 0, 0, false)
	r.ConnClosed(e, "d1", time.Hour, 0, 0, false) // unmatched: the count stays at 0
	if st := only(t, r.Apps(2*time.Hour)); st.TCPOpen != 0 || st.TCPOpened != 3 {
		t.Errorf("after closing all: %+v", st)
	}
	if got := r.Apps(time.Minute); len(got) != 0 {
		t.Errorf("closing without bytes or errors shows as activity: %+v", got)
	}
}

func TestDeniedAndObserved(t *testing.T) {
	r, clk := newTest(t)
	ok(r, Edge{"old", "api"}, 1)
	clk.Add(time.Hour)
	r.Denied(Edge{"web", "admin"})
	r.Denied(Edge{"web", "admin"})
	ok(r, Edge{"web", "api"}, 4)

	if st := r.Apps(time.Minute)[0]; st.Dst != "admin" || st.Denied != 2 || st.Requests != 0 {
		t.Errorf("Apps[0] = %+v, want admin with 2 denials", st)
	}
	if got := r.Machines("admin", time.Minute); len(got) != 0 {
		t.Errorf("Machines of a denial-only app = %+v, want none", got)
	}

	clk.Add(23*time.Hour + 30*time.Minute) // old was last seen 24h30m ago
	got := r.Observed()
	if len(got) != 2 {
		t.Fatalf("Observed = %+v, want web→admin and web→api", got)
	}
	now := clk.Now()
	want := []Stat{
		{Src: "web", Dst: "admin", Denied: 2, LastSeen: now.Add(-23*time.Hour - 30*time.Minute)},
		{Src: "web", Dst: "api", Requests: 4, Successes: 4, LastSeen: now.Add(-23*time.Hour - 30*time.Minute)},
	}
	for i, w := range want {
		g := got[i]
		if g.Src != w.Src || g.Dst != w.Dst || g.Denied != w.Denied || g.Requests != w.Requests || g.Successes != w.Successes || !g.LastSeen.Equal(w.LastSeen) {
			t.Errorf("Observed[%d] = %+v, want %+v", i, g, w)
		}
	}
}

func TestHistory(t *testing.T) {
	r, clk := newTest(t)
	clk.Add(45 * time.Second) // 12:00:45
	for i := range 5 {
		ok(r, Edge{"web", "api"}, i+1) // 1…5 requests at 12:00:45 … 12:00:49
		r.Request(Edge{"edge", "api"}, "m1", Route{"GET", "/"}, 500, false, time.Millisecond, 0, 0)
		clk.Add(time.Second)
	}
	clk.Add(-time.Second) // now 12:00:49

	pts := r.History("api", "", 10*time.Second, 2*time.Second)
	if len(pts) != 5 {
		t.Fatalf("got %d points, want 5", len(pts))
	}
	// Steps of 2s ending with the current bucket: [40,41] [42,43] [44,45] [46,47] [48,49].
	wantReq := []int64{0, 0, 2, 7, 11}
	for i, p := range pts {
		if want := clk.Now().Add(time.Duration(i*2-9) * time.Second); !p.At.Equal(want) {
			t.Errorf("point %d at %v, want %v", i, p.At, want)
		}
		if p.Requests != wantReq[i] || p.Dst != "api" {
			t.Errorf("point %d: %d requests, want %d", i, p.Requests, wantReq[i])
		}
	}
	if p := pts[4]; p.RPS != 5.5 || p.Failures != 2 {
		t.Errorf("last point = %+v, want 5.5 rps and 2 failures", p.Stat)
	}
	if p := r.History("api", "edge", 10*time.Second, 2*time.Second)[4]; p.Requests != 2 || p.Src != "edge" {
		t.Errorf("last point from edge = %+v, want 2 requests", p.Stat)
	}

	// Longer windows use minute buckets: all 20 requests fall in the 12:00 minute.
	pts = r.History("api", "", time.Hour, 15*time.Minute)
	if len(pts) != 4 || pts[3].Requests != 20 || !pts[3].At.Equal(clk.Now().Add(-14*time.Minute-49*time.Second)) {
		t.Errorf("hourly history = %+v", pts)
	}
	if pts := r.History("api", "", 24*time.Hour, time.Second); len(pts) != 1440 {
		t.Errorf("24h at 1s steps: %d points, want 1440 (step raised to 1m)", len(pts))
	}
	if pts := r.History("api", "", time.Minute, time.Hour); len(pts) != 1 || pts[0].Requests != 20 {
		t.Errorf("step longer than window = %+v", pts)
	}
}

func TestForget(t *testing.T) {
	r, _ := newTest(t)
	ok(r, Edge{"web", "api"}, 1)
	ok(r, Edge{"api", "db"}, 1)
	ok(r, Edge{"web", "db"}, 1)
	r.Denied(Edge{"api", "admin"})
	r.Forget("api")

	if got := r.Edges(time.Minute); len(got) != 1 || got[0].Src != "web" || got[0].Dst != "db" {
		t.Errorf("Edges after Forget = %+v", got)
	}
	if got := r.Paths("api", time.Minute, 0); len(got) != 0 {
		t.Errorf("Paths after Forget = %+v", got)
	}
	if got := r.Observed(); len(got) != 1 {
		t.Errorf("Observed after Forget = %+v", got)
	}
	ok(r, Edge{"web", "api"}, 1) // a new app of the same name starts from zero
	if st := r.Apps(time.Minute)[0]; st.Dst != "api" || st.Requests != 1 {
		t.Errorf("Apps after recreating = %+v", st)
	}
}

func TestSweep(t *testing.T) {
	r, clk := newTest(t)
	ok(r, Edge{"web", "api"}, 1)
	r.ConnOpened(Edge{"web", "db"}, "d1")
	clk.Add(25 * time.Hour)
	ok(r, Edge{"web", "other"}, 1) // creating a series sweeps

	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.series[seriesKey{"web", "api", "m1"}]; ok {
		t.Error("idle series not swept")
	}
	if _, ok := r.series[seriesKey{"web", "db", "d1"}]; !ok {
		t.Error("series with an open connection swept")
	}
	if _, ok := r.routes["api"]; ok {
		t.Error("idle routes not swept")
	}
}

func TestConcurrent(t *testing.T) {
	r, clk := newTest(t)
	const workers, each = 8, 2000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				e := Edge{fmt.Sprintf("src%d", w%3), fmt.Sprintf("dst%d", i%4)}
				r.Request(e, fmt.Sprintf("m%d", i%2), Route{"GET", fmt.Sprintf("/p/%d/x%d", i, i%7)}, 200+i%400, i%9 == 0, time.Duration(i)*time.Microsecond, 1, 1)
				if i%100 == 0 {
					r.ConnOpened(e, "m0")
					r.ConnClosed(e, "m0", time.Second, 1, 1, false)
					r.Denied(e)
				}
			}
		})
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			r.Apps(time.Minute)
			r.Edges(time.Hour)
			r.Machines("dst1", time.Minute)
			r.Paths("dst2", time.Minute, 10)
			r.Observed()
			r.History("dst3", "", 5*time.Minute, 10*time.Second)
			r.Forget("nobody")
			if i < 3000 { // stay within the 10-minute window counted below
				clk.Add(100 * time.Millisecond)
			}
		}
	})
	wg.Wait()
	close(done)
	readers.Wait()

	var total int64
	for _, st := range r.Apps(10 * time.Minute) {
		total += st.Requests
	}
	if total != workers*each {
		t.Errorf("counted %d requests, want %d", total, workers*each)
	}
}

// TestRequestDoesNotAllocate checks the steady state: a warm series keeps
// recording through ring laps without allocating.
func TestRequestDoesNotAllocate(t *testing.T) {
	r, clk := newTest(t)
	e, route := Edge{"web", "api"}, Route{"GET", "/users/42?full=1"}
	i := 0
	req := func() {
		r.Request(e, "m1", route, 200, false, time.Duration(1+i%5)*time.Millisecond, 100, 1000)
		i++
		clk.Add(time.Second)
	}
	for range 25 * 3600 { // more than a lap of both rings
		req()
	}
	if n := testing.AllocsPerRun(2000, req); n != 0 {
		t.Errorf("Request allocates %v times per call", n)
	}
}
