package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// Settings are one run's knobs (the flags).
type Settings struct {
	Duration, TLSDuration       time.Duration
	Rates                       []int
	Conns, MaxConns, Idle, Body int
	Slices                      int
	Run                         int
	HAProxyH2                   bool
}

// Machine says where a run happened.
type Machine struct {
	CPU                       string
	Cores, GOMAXPROCS         int
	Kernel, Go, HAProxy, Pier string
}

// Report is one run's results (or the medians over runs).
type Report struct {
	Time     time.Time
	Machine  Machine
	Settings Settings
	Runs     int `json:",omitempty"` // > 1: the numbers are medians over this many runs
	Conn     []ConnResult
	Open     []OpenResult
	Closed   []ClosedResult
	TLS      []TLSResult
}

// ConnResult is the cost of idle connections through one target.
type ConnResult struct {
	Target              string
	Conns               int
	RSSBefore, RSSAfter int64
	PerConn             float64       // bytes of RSS per connection
	PerConnAfterGC      float64       // the same after a forced GC (Go processes; 0 for HAProxy)
	CPUPerConn          time.Duration // opening a connection and its first request
}

// OpenResult is one fixed-rate run through one target.
type OpenResult struct {
	Target               string
	Rate, Sent, Errors   int
	P50, P90, P99, Max   time.Duration // from the scheduled send time
	LagP50, LagP99       time.Duration // the load generator's dispatch lag
	ProxyCPU, BackendCPU time.Duration
	Wall                 time.Duration
	OtherLoad            float64
}

// ClosedResult is one back-to-back run through one target.
type ClosedResult struct {
	Target               string
	Requests, Errors     int
	RPS                  float64
	P50, P99             time.Duration
	ProxyCPU, BackendCPU time.Duration
	OtherLoad            float64
}

// TLSResult is one run of new mTLS connections against one server.
type TLSResult struct {
	Server, Session        string
	KeyExchange            string // of the last connection
	Clients                int
	Conns, Resumed, Errors int
	PerSec                 float64
	ServerCPU, BackendCPU  time.Duration
	OtherLoad              float64
}

var targetNames = map[string]string{"direct": "direct", "mesh": "**pier mesh**", "haproxy": "HAProxy pair"}

func (r *Report) open(target string, rate int) *OpenResult {
	for i := range r.Open {
		if r.Open[i].Target == target && r.Open[i].Rate == rate {
			return &r.Open[i]
		}
	}
	return nil
}

func (r *Report) closed(target string) *ClosedResult {
	for i := range r.Closed {
		if r.Closed[i].Target == target {
			return &r.Closed[i]
		}
	}
	return nil
}

// Markdown renders the report as tables ready to paste into RESULTS.md.
func (r *Report) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	s, m := r.Settings, r.Machine
	if r.Runs > 1 {
		p("### Medians over %d runs\n\n", r.Runs)
	} else {
		p("### Run %d (%s)\n\n", s.Run, r.Time.Format("2006-01-02 15:04 UTC"))
	}
	hop := "HTTP/1.1"
	if s.HAProxyH2 {
		hop = "HTTP/2"
	}
	p("Machine: %s, %d cores (mesh GOMAXPROCS %d), Linux %s, %s, HAProxy %s (nbthread 1 each, A→B %s over TLS 1.3), pier %s. Backend: Go net/http, %d-byte body. All on loopback.\n\n",
		m.CPU, m.Cores, m.GOMAXPROCS, m.Kernel, m.Go, m.HAProxy, hop, m.Pier, s.Body)

	p("**Open loop at fixed rates** (%d keep-alive connections, %s per target after a 1 s warm-up, in %d slices taken in turns; latency from each request's scheduled send time; added = target − direct at the same percentile):\n\n", s.Conns, secs(s.Duration), s.Slices)
	p("| rate | target | p50 | p90 | p99 | max | added p50 | added p99 | proxy CPU/req | proxy CPU | errors | dispatch lag p99 | other load |\n")
	p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, rate := range s.Rates {
		d := r.open("direct", rate)
		for _, t := range []string{"direct", "mesh", "haproxy"} {
			o := r.open(t, rate)
			if o == nil {
				continue
			}
			added50, added99, cpuReq, cpuShare := "-", "-", "-", "-"
			if t != "direct" && d != nil {
				added50, added99 = signedMS(o.P50-d.P50), signedMS(o.P99-d.P99)
				cpuReq = us(o.ProxyCPU / time.Duration(max(1, o.Sent)))
				cpuShare = fmt.Sprintf("%.0f%% of a core", 100*o.ProxyCPU.Seconds()/o.Wall.Seconds())
			}
			p("| %d/s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %.0f%% |\n",
				rate, targetNames[t], ms(o.P50), ms(o.P90), ms(o.P99), ms(o.Max), bold(t, added50), bold(t, added99),
				cpuReq, cpuShare, o.Errors, ms(o.LagP99), 100*o.OtherLoad)
		}
	}
	p("\n")

	h := r.closed("haproxy")
	p("**Maximum throughput, closed loop** (%d keep-alive connections sending back to back, %s per target after a 1 s warm-up, in %d slices taken in turns; the load generator, backend and proxies share the %d cores):\n\n", s.MaxConns, secs(s.Duration), s.Slices, m.Cores)
	p("| target | req/s | p50 | p99 | proxy CPU per 10k req | backend CPU per 10k req | req/s vs HAProxy pair | CPU/req vs HAProxy pair | errors | other load |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, t := range []string{"direct", "mesh", "haproxy"} {
		c := r.closed(t)
		if c == nil {
			continue
		}
		cpu, vsRPS, vsCPU := "-", "-", "-"
		if t != "direct" {
			cpu = per10k(c.ProxyCPU, c.Requests)
		}
		if h != nil && h.RPS > 0 {
			vsRPS = fmt.Sprintf("%.2fx", c.RPS/h.RPS)
			if t != "direct" && h.ProxyCPU > 0 {
				vsCPU = fmt.Sprintf("%.2fx", perReq(c.ProxyCPU, c.Requests)/perReq(h.ProxyCPU, h.Requests))
			}
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %d | %.0f%% |\n", targetNames[t], bold(t, fmt.Sprintf("%.0f", c.RPS)), ms(c.P50), ms(c.P99),
			cpu, per10k(c.BackendCPU, c.Requests), bold(t, vsRPS), vsCPU, c.Errors, 100*c.OtherLoad)
	}
	p("\n")

	if len(r.Conn) > 0 {
		p("**Per proxied connection** (%d keep-alive connections opened 16 at a time, each sends one request and stays idle; growth of the processes' RSS (for the Go processes also after a forced GC, before and after), and their CPU time while opening, divided by %d):\n\n", s.Idle, s.Idle)
		p("| target | processes | RSS before | RSS after | RSS per connection | after a forced GC | CPU per new connection (+ 1 request) |\n")
		p("|---|---|---:|---:|---:|---:|---:|\n")
		procs := map[string]string{"direct": "backend (for reference)", "mesh": "mesh (both sides)", "haproxy": "A + B"}
		for _, t := range []string{"direct", "mesh", "haproxy"} {
			for _, c := range r.Conn {
				if c.Target == t {
					gc := "-"
					if c.PerConnAfterGC != 0 {
						gc = fmt.Sprintf("%.1f KiB", c.PerConnAfterGC/1024)
					}
					p("| %s | %s | %.1f MiB | %.1f MiB | %.1f KiB | %s | %s |\n", targetNames[t], procs[t],
						float64(c.RSSBefore)/(1<<20), float64(c.RSSAfter)/(1<<20), c.PerConn/1024, gc, us(c.CPUPerConn))
				}
			}
		}
		p("\n")
	}

	if len(r.TLS) > 0 {
		p("**New mTLS connections per second** (TCP connect, TLS 1.3 handshake presenting web's certificate, one HTTP/1.1 request with `Connection: close`; \"full\": no session cache, \"resumed\": one client session cache shared by the clients; %s per server, in %d slices taken in turns):\n\n", secs(s.TLSDuration), s.Slices)
		p("| server | session | clients | conns/s | resumed | key exchange | server CPU/conn | errors | other load |\n")
		p("|---|---|---:|---:|---:|---|---:|---:|---:|\n")
		servers := map[string]string{"mesh": "**pier mesh inbound**", "haproxy": "HAProxy B"}
		for _, srv := range []string{"mesh", "haproxy"} {
			for _, t := range r.TLS {
				if t.Server == srv {
					p("| %s | %s | %d | %.0f | %.0f%% | %s | %s | %d | %.0f%% |\n", servers[srv], t.Session, t.Clients, t.PerSec,
						100*float64(t.Resumed)/float64(max(1, t.Conns)), t.KeyExchange, us(t.ServerCPU/time.Duration(max(1, t.Conns))), t.Errors, 100*t.OtherLoad)
				}
			}
		}
		p("\n")
	}

	p("```\n%s```\n", r.targets())
	return b.String()
}

// targets states the two targets against this report.
func (r *Report) targets() string {
	var b strings.Builder
	verdict := func(ok bool) string {
		if ok {
			return "MET"
		}
		return "MISSED"
	}
	rate := 500
	if !slices.Contains(r.Settings.Rates, rate) && len(r.Settings.Rates) > 0 {
		rate = r.Settings.Rates[0]
	}
	d, mo, ho := r.open("direct", rate), r.open("mesh", rate), r.open("haproxy", rate)
	if d != nil && mo != nil && ho != nil {
		added := mo.P99 - d.P99
		fmt.Fprintf(&b, "Target 1 (added p99 under 1 ms at %d req/s): mesh %s, HAProxy pair %s -> %s\n",
			rate, signedMS(added), signedMS(ho.P99-d.P99), verdict(added < time.Millisecond && mo.Errors == 0))
	}
	mc, hc := r.closed("mesh"), r.closed("haproxy")
	if mc != nil && hc != nil && hc.RPS > 0 {
		fmt.Fprintf(&b, "Target 2 (throughput no worse than the HAProxy pair): mesh %.0f req/s vs %.0f (%.2fx), CPU/req %.2fx -> %s\n",
			mc.RPS, hc.RPS, mc.RPS/hc.RPS, perReq(mc.ProxyCPU, mc.Requests)/perReq(hc.ProxyCPU, hc.Requests), verdict(mc.RPS >= hc.RPS))
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", d.Seconds()*1000) }

func signedMS(d time.Duration) string { return fmt.Sprintf("%+.3f ms", d.Seconds()*1000) }

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

func secs(d time.Duration) string { return fmt.Sprintf("%g s", d.Seconds()) }

func perReq(cpu time.Duration, n int) float64 { return cpu.Seconds() / float64(max(1, n)) }

func per10k(cpu time.Duration, n int) string {
	return fmt.Sprintf("%.2f s", perReq(cpu, n)*10000)
}

func bold(target, s string) string {
	if target == "mesh" && s != "-" {
		return "**" + s + "**"
	}
	return s
}

func writeJSON(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// summarize prints, for the runs' JSON files, one line per run with the
// headline numbers and then the medians over the runs as tables.
func summarize(files []string) error {
	if len(files) == 0 {
		return fmt.Errorf("summarize: name the JSON files of the runs")
	}
	var reps []*Report
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		r := &Report{}
		if err := json.Unmarshal(b, r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		reps = append(reps, r)
	}
	fmt.Print(headlines(reps))
	fmt.Println()
	fmt.Print(medians(reps).Markdown())
	return nil
}

// headlines is one table row per run: added p50/p99 per rate and the
// closed-loop throughput, mesh and HAProxy pair side by side.
func headlines(reps []*Report) string {
	var b strings.Builder
	rates := reps[0].Settings.Rates
	b.WriteString("| run |")
	sep := "|---:|"
	for _, rate := range rates {
		fmt.Fprintf(&b, " %d/s added p50 mesh / HAProxy | %d/s added p99 mesh / HAProxy |", rate, rate)
		sep += "---:|---:|"
	}
	b.WriteString(" max req/s mesh / HAProxy (ratio) | proxy CPU per 10k req mesh / HAProxy |\n" + sep + "---:|---:|\n")
	for _, r := range reps {
		fmt.Fprintf(&b, "| %d |", r.Settings.Run)
		for _, rate := range rates {
			d, mo, ho := r.open("direct", rate), r.open("mesh", rate), r.open("haproxy", rate)
			if d == nil || mo == nil || ho == nil {
				b.WriteString(" - | - |")
				continue
			}
			fmt.Fprintf(&b, " %s / %s | %s / %s |", signedMS(mo.P50-d.P50), signedMS(ho.P50-d.P50), signedMS(mo.P99-d.P99), signedMS(ho.P99-d.P99))
		}
		mc, hc := r.closed("mesh"), r.closed("haproxy")
		if mc != nil && hc != nil {
			fmt.Fprintf(&b, " %.0f / %.0f (%.2fx) | %s / %s |\n", mc.RPS, hc.RPS, mc.RPS/hc.RPS, per10k(mc.ProxyCPU, mc.Requests), per10k(hc.ProxyCPU, hc.Requests))
		} else {
			b.WriteString(" - | - |\n")
		}
	}
	return b.String()
}

// medians is a report whose every number is the median over reps (the
// lower one for an even count), taken number by number.
func medians(reps []*Report) *Report {
	out := *reps[0]
	out.Runs = len(reps)
	out.Conn = slices.Clone(out.Conn)
	out.Open = slices.Clone(out.Open)
	out.Closed = slices.Clone(out.Closed)
	out.TLS = slices.Clone(out.TLS)
	for i := range out.Conn {
		c := &out.Conn[i]
		var xs []ConnResult
		for _, r := range reps {
			for _, x := range r.Conn {
				if x.Target == c.Target {
					xs = append(xs, x)
				}
			}
		}
		c.RSSBefore = med(xs, func(x ConnResult) int64 { return x.RSSBefore })
		c.RSSAfter = med(xs, func(x ConnResult) int64 { return x.RSSAfter })
		c.PerConn = med(xs, func(x ConnResult) float64 { return x.PerConn })
		c.PerConnAfterGC = med(xs, func(x ConnResult) float64 { return x.PerConnAfterGC })
		c.CPUPerConn = med(xs, func(x ConnResult) time.Duration { return x.CPUPerConn })
	}
	for i := range out.Open {
		o := &out.Open[i]
		var xs []OpenResult
		for _, r := range reps {
			if x := r.open(o.Target, o.Rate); x != nil {
				xs = append(xs, *x)
			}
		}
		o.Sent = med(xs, func(x OpenResult) int { return x.Sent })
		o.Errors = med(xs, func(x OpenResult) int { return x.Errors })
		o.P50 = med(xs, func(x OpenResult) time.Duration { return x.P50 })
		o.P90 = med(xs, func(x OpenResult) time.Duration { return x.P90 })
		o.P99 = med(xs, func(x OpenResult) time.Duration { return x.P99 })
		o.Max = med(xs, func(x OpenResult) time.Duration { return x.Max })
		o.LagP50 = med(xs, func(x OpenResult) time.Duration { return x.LagP50 })
		o.LagP99 = med(xs, func(x OpenResult) time.Duration { return x.LagP99 })
		o.ProxyCPU = med(xs, func(x OpenResult) time.Duration { return x.ProxyCPU })
		o.BackendCPU = med(xs, func(x OpenResult) time.Duration { return x.BackendCPU })
		o.Wall = med(xs, func(x OpenResult) time.Duration { return x.Wall })
		o.OtherLoad = med(xs, func(x OpenResult) float64 { return x.OtherLoad })
	}
	for i := range out.Closed {
		c := &out.Closed[i]
		var xs []ClosedResult
		for _, r := range reps {
			if x := r.closed(c.Target); x != nil {
				xs = append(xs, *x)
			}
		}
		c.Requests = med(xs, func(x ClosedResult) int { return x.Requests })
		c.Errors = med(xs, func(x ClosedResult) int { return x.Errors })
		c.RPS = med(xs, func(x ClosedResult) float64 { return x.RPS })
		c.P50 = med(xs, func(x ClosedResult) time.Duration { return x.P50 })
		c.P99 = med(xs, func(x ClosedResult) time.Duration { return x.P99 })
		// CPU as the median CPU per request, scaled to the median count.
		perReq := med(xs, func(x ClosedResult) float64 { return x.ProxyCPU.Seconds() / float64(max(1, x.Requests)) })
		c.ProxyCPU = time.Duration(perReq * float64(c.Requests) * 1e9)
		perReq = med(xs, func(x ClosedResult) float64 { return x.BackendCPU.Seconds() / float64(max(1, x.Requests)) })
		c.BackendCPU = time.Duration(perReq * float64(c.Requests) * 1e9)
		c.OtherLoad = med(xs, func(x ClosedResult) float64 { return x.OtherLoad })
	}
	for i := range out.TLS {
		t := &out.TLS[i]
		var xs []TLSResult
		for _, r := range reps {
			for _, x := range r.TLS {
				if x.Server == t.Server && x.Session == t.Session && x.Clients == t.Clients {
					xs = append(xs, x)
				}
			}
		}
		t.Conns = med(xs, func(x TLSResult) int { return x.Conns })
		t.Resumed = med(xs, func(x TLSResult) int { return x.Resumed })
		t.Errors = med(xs, func(x TLSResult) int { return x.Errors })
		t.PerSec = med(xs, func(x TLSResult) float64 { return x.PerSec })
		perConn := med(xs, func(x TLSResult) float64 { return x.ServerCPU.Seconds() / float64(max(1, x.Conns)) })
		t.ServerCPU = time.Duration(perConn * float64(t.Conns) * 1e9)
		t.OtherLoad = med(xs, func(x TLSResult) float64 { return x.OtherLoad })
	}
	return &out
}

// med is the lower median of f over xs.
func med[T any, N int | int64 | float64 | time.Duration](xs []T, f func(T) N) N {
	if len(xs) == 0 {
		return 0
	}
	v := make([]N, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	return v[(len(v)-1)/2]
}
