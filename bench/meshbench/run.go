package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/identity"
)

// target is one way from the load generator to the backend.
type target struct {
	name string // "direct", "mesh", "haproxy"
	addr string // where the load generator connects
	pids []int  // the proxy's processes (the backend's for direct)
}

// bench holds one run's processes.
type bench struct {
	s       Settings
	ca      *identity.Authority
	backend *child
	mesh    *child
	haproxy *haproxyPair
	targets []target // in this run's order
}

// run makes one run of every measurement.
func run(s Settings, haproxyBin, cpuprofile string, keep bool) (rep *Report, err error) {
	dir, err := os.MkdirTemp("", "meshbench.")
	if err != nil {
		return nil, err
	}
	defer func() {
		if keep || err != nil {
			logf("temp files kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	}()

	// The mesh CA: the mesh child opens the same state, so its
	// certificates and HAProxy's chain to the same anchor.
	store := &memStore{}
	ca, err := identity.Open(context.Background(), store, identity.Options{TrustDomain: trustDomain, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("mesh CA: %w", err)
	}
	state := filepath.Join(dir, "ca.state")
	if err := os.WriteFile(state, store.data, 0o600); err != nil {
		return nil, err
	}
	if err := writePEMs(dir, ca); err != nil {
		return nil, err
	}

	b := &bench{s: s, ca: ca}
	logf("starting the backend, the mesh and HAProxy A and B (temp dir %s)", dir)
	if b.backend, err = startChild("backend", filepath.Join(dir, "backend.log"), "serve-backend", "-body", strconv.Itoa(s.Body)); err != nil {
		return nil, err
	}
	defer b.backend.stop()
	backendAddr := b.backend.addrs.Listen
	if b.mesh, err = startChild("mesh", filepath.Join(dir, "mesh.log"), "serve-mesh", "-state", state, "-backend", backendAddr); err != nil {
		return nil, err
	}
	defer b.mesh.stop()
	if b.haproxy, err = startHAProxy(haproxyBin, dir, backendAddr, ca, s.HAProxyH2); err != nil {
		return nil, err
	}
	defer b.haproxy.stop()

	all := []target{
		{"direct", backendAddr, []int{b.backend.pid()}},
		{"mesh", b.mesh.addrs.Listen, []int{b.mesh.pid()}},
		{"haproxy", b.haproxy.addrA, b.haproxy.pids()},
	}
	k := (s.Run - 1) % len(all)
	b.targets = append(all[k:], all[:k]...)
	for _, t := range b.targets {
		conns, err := dialPool(t.addr, 1, time.Now().Add(10*time.Second))
		if err != nil {
			return nil, fmt.Errorf("%s does not answer: %w", t.name, err)
		}
		closeAll(conns)
	}

	rep = &Report{Time: time.Now().UTC(), Machine: machine(haproxyBin), Settings: s}
	if rep.Conn, err = b.perConnection(); err != nil {
		return nil, err
	}
	if rep.Open, err = b.openLoops(); err != nil {
		return nil, err
	}
	if rep.Closed, err = b.closedLoops(); err != nil {
		return nil, err
	}
	if rep.TLS, err = b.handshakes(); err != nil {
		return nil, err
	}
	if cpuprofile != "" {
		if err := b.profile(cpuprofile); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// ourPIDs are every process of the benchmark, this one included.
func (b *bench) ourPIDs() []int {
	return append([]int{os.Getpid(), b.backend.pid(), b.mesh.pid()}, b.haproxy.pids()...)
}

// sample is what is read before and after a measurement.
type sample struct {
	at           time.Time
	proxy, ours  time.Duration // CPU time
	backend, all time.Duration
}

func (b *bench) sample(proxy []int) (sample, error) {
	s := sample{at: time.Now()}
	var err error
	if len(proxy) > 0 {
		if s.proxy, err = cpuTime(proxy...); err != nil {
			return s, err
		}
	}
	if s.backend, err = cpuTime(b.backend.pid()); err != nil {
		return s, err
	}
	if s.ours, err = cpuTime(b.ourPIDs()...); err != nil {
		return s, err
	}
	s.all, err = busyTime()
	return s, err
}

// proxyPIDs are the processes whose CPU counts as the proxy's: none for
// the direct path.
func proxyPIDs(t target) []int {
	if t.name == "direct" {
		return nil
	}
	return t.pids
}

// perConnection opens s.Idle idle connections through each target and
// divides the RSS growth and CPU time of its processes by their number.
// For the Go processes (the mesh, and the backend of the direct path) the
// RSS is also read after a forced GC that returns freed memory to the OS,
// before and after: with GOGC=400 the heap may hold up to 5 times its live
// data before a collection, so the plain growth includes garbage.
func (b *bench) perConnection() ([]ConnResult, error) {
	var out []ConnResult
	for _, t := range b.targets {
		logf("per connection: %d idle connections through %s", b.s.Idle, t.name)
		var gc *child
		switch t.name {
		case "direct":
			gc = b.backend
		case "mesh":
			gc = b.mesh
		}
		time.Sleep(500 * time.Millisecond)
		if gc != nil {
			if err := gc.command("free-os-memory"); err != nil {
				return nil, err
			}
		}
		rss0, err := rss(t.pids...)
		if err != nil {
			return nil, err
		}
		cpu0, err := cpuTime(t.pids...)
		if err != nil {
			return nil, err
		}
		conns, err := openIdle(t.addr, b.s.Idle, time.Now().Add(2*time.Minute))
		if err != nil {
			return nil, err
		}
		cpu1, err := cpuTime(t.pids...)
		if err != nil {
			return nil, err
		}
		time.Sleep(time.Second)
		rss1, err := rss(t.pids...)
		if err != nil {
			return nil, err
		}
		r := ConnResult{
			Target: t.name, Conns: b.s.Idle, RSSBefore: rss0, RSSAfter: rss1,
			PerConn:    float64(rss1-rss0) / float64(b.s.Idle),
			CPUPerConn: (cpu1 - cpu0) / time.Duration(b.s.Idle),
		}
		if gc != nil {
			if err := gc.command("free-os-memory"); err != nil {
				return nil, err
			}
			rss2, err := rss(t.pids...)
			if err != nil {
				return nil, err
			}
			r.PerConnAfterGC = float64(rss2-rss0) / float64(b.s.Idle)
		}
		closeAll(conns)
		out = append(out, r)
		time.Sleep(time.Second) // let the proxies close their side
	}
	return out, nil
}

// Each open- and closed-loop measurement is cut into s.Slices slices, and
// the targets take turns slice by slice (the order rotating), so that
// other work on the machine, which comes and goes, weighs on every target
// alike. Each target keeps its connections from slice to slice.

// acc adds up a target's slices.
type acc struct {
	lat, lag             []time.Duration
	sent, n, errors      int
	proxy, backend, wall time.Duration
	other                time.Duration // CPU time of processes not ours
	elapsed              time.Duration // of the closed-loop slices
}

func (a *acc) add(s0, s1 sample) {
	a.proxy += s1.proxy - s0.proxy
	a.backend += s1.backend - s0.backend
	a.wall += s1.at.Sub(s0.at)
	a.other += max(0, (s1.all-s0.all)-(s1.ours-s0.ours))
}

func (a *acc) otherLoad() float64 {
	return float64(a.other) / float64(max(1, a.wall)) / float64(runtime.NumCPU())
}

// turns calls f for every slice and target, rotating the targets' order
// from slice to slice.
func (b *bench) turns(f func(t target) error) error {
	n := len(b.targets)
	for k := range b.s.Slices {
		for j := range n {
			if err := f(b.targets[(j+k)%n]); err != nil {
				return err
			}
		}
	}
	return nil
}

// openLoops runs every rate against every target.
func (b *bench) openLoops() ([]OpenResult, error) {
	var out []OpenResult
	for _, rate := range b.s.Rates {
		rs, err := b.openLoopsAt(rate)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// openLoopsAt runs one rate against every target, each with connections
// of its own.
func (b *bench) openLoopsAt(rate int) ([]OpenResult, error) {
	slice := b.s.Duration / time.Duration(b.s.Slices)
	logf("open loop: %d requests/s, %d slices of %s per target, taking turns", rate, b.s.Slices, slice)
	pools := map[string][]*httpConn{}
	accs := map[string]*acc{}
	for _, t := range b.targets {
		conns, err := dialPool(t.addr, b.s.Conns, time.Now().Add(time.Minute))
		if err != nil {
			return nil, err
		}
		defer closeAll(conns)
		pools[t.name], accs[t.name] = conns, &acc{}
		openLoop(conns, rate, time.Second) // warm-up
	}
	err := b.turns(func(t target) error {
		s0, err := b.sample(proxyPIDs(t))
		if err != nil {
			return err
		}
		r := openLoop(pools[t.name], rate, slice)
		s1, err := b.sample(proxyPIDs(t))
		if err != nil {
			return err
		}
		a := accs[t.name]
		a.add(s0, s1)
		a.lat = append(a.lat, r.lat...)
		a.lag = append(a.lag, r.lag...)
		a.sent += r.sent
		a.errors += r.errors
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []OpenResult
	for _, t := range b.targets {
		a := accs[t.name]
		slices.Sort(a.lat)
		slices.Sort(a.lag)
		out = append(out, OpenResult{
			Target: t.name, Rate: rate, Sent: a.sent, Errors: a.errors,
			P50: percentile(a.lat, 50), P90: percentile(a.lat, 90), P99: percentile(a.lat, 99), Max: percentile(a.lat, 100),
			LagP50: percentile(a.lag, 50), LagP99: percentile(a.lag, 99),
			ProxyCPU: a.proxy, BackendCPU: a.backend, Wall: a.wall,
			OtherLoad: a.otherLoad(),
		})
	}
	return out, nil
}

// closedLoops measures each target's throughput.
func (b *bench) closedLoops() ([]ClosedResult, error) {
	slice := b.s.Duration / time.Duration(b.s.Slices)
	logf("closed loop: %d connections, %d slices of %s per target, taking turns", b.s.MaxConns, b.s.Slices, slice)
	pools := map[string][]*httpConn{}
	accs := map[string]*acc{}
	for _, t := range b.targets {
		conns, err := dialPool(t.addr, b.s.MaxConns, time.Now().Add(time.Minute))
		if err != nil {
			return nil, err
		}
		defer closeAll(conns)
		pools[t.name], accs[t.name] = conns, &acc{}
		closedLoop(conns, time.Second) // warm-up
	}
	err := b.turns(func(t target) error {
		s0, err := b.sample(proxyPIDs(t))
		if err != nil {
			return err
		}
		r := closedLoop(pools[t.name], slice)
		s1, err := b.sample(proxyPIDs(t))
		if err != nil {
			return err
		}
		a := accs[t.name]
		a.add(s0, s1)
		a.lat = append(a.lat, r.lat...)
		a.n += r.requests
		a.errors += r.errors
		a.elapsed += r.elapsed
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []ClosedResult
	for _, t := range b.targets {
		a := accs[t.name]
		slices.Sort(a.lat)
		out = append(out, ClosedResult{
			Target: t.name, Requests: a.n, Errors: a.errors,
			RPS: float64(a.n) / a.elapsed.Seconds(),
			P50: percentile(a.lat, 50), P99: percentile(a.lat, 99),
			ProxyCPU: a.proxy, BackendCPU: a.backend,
			OtherLoad: a.otherLoad(),
		})
	}
	return out, nil
}

// handshakes measures new mTLS connections per second against the mesh's
// inbound side and HAProxy B, with web's certificate.
func (b *bench) handshakes() ([]TLSResult, error) {
	web, err := b.ca.Certificate(b.ca.AppID("web"))
	if err != nil {
		return nil, err
	}
	apiID := b.ca.AppID("api")
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ServerName:   "api.internal",
		NextProtos:   []string{"http/1.1"},
		Certificates: []tls.Certificate{*web},
		// The chain and the SPIFFE ID are checked below against the mesh's
		// bundle, as pier's outbound side does.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			id, err := b.ca.Verify(raw)
			if err != nil {
				return err
			}
			if id != apiID {
				return fmt.Errorf("server is %s, not %s", id, apiID)
			}
			return nil
		},
	}
	servers := []struct {
		name, addr string
		pid        int
	}{
		{"mesh", b.mesh.addrs.Inbound, b.mesh.pid()},
		{"haproxy", b.haproxy.addrB, b.haproxy.b.Process.Pid},
	}
	if b.targets[0].name == "haproxy" {
		servers[0], servers[1] = servers[1], servers[0]
	}
	// The two servers take turns, in s.Slices slices each; a server's
	// session cache is kept across its slices.
	slice := b.s.TLSDuration / time.Duration(b.s.Slices)
	var out []TLSResult
	for _, session := range []string{"full", "resumed"} {
		for _, clients := range []int{1, runtime.GOMAXPROCS(0)} {
			logf("TLS: %s handshakes, %d client(s), %d slices of %s per server, taking turns", session, clients, b.s.Slices, slice)
			cfgs := make([]*tls.Config, len(servers))
			accs := make([]*acc, len(servers))
			var conns, resumed []int
			kex := make([]string, len(servers))
			for i := range servers {
				cfgs[i] = base.Clone()
				if session == "resumed" {
					cfgs[i].ClientSessionCache = tls.NewLRUClientSessionCache(1024)
				}
				accs[i] = &acc{}
				conns, resumed = append(conns, 0), append(resumed, 0)
			}
			for k := range b.s.Slices {
				for j := range servers {
					i := (j + k) % len(servers)
					s0, err := b.sample([]int{servers[i].pid})
					if err != nil {
						return nil, err
					}
					r := tlsConns(servers[i].addr, cfgs[i], clients, slice)
					s1, err := b.sample([]int{servers[i].pid})
					if err != nil {
						return nil, err
					}
					if r.conns == 0 {
						return nil, fmt.Errorf("no TLS connection to %s succeeded: %v", servers[i].name, r.firstErr)
					}
					if r.errors > 0 {
						logf("  %s: %d failed; the first: %v", servers[i].name, r.errors, r.firstErr)
					}
					a := accs[i]
					a.add(s0, s1)
					a.elapsed += r.elapsed
					a.errors += r.errors
					conns[i] += r.conns
					resumed[i] += r.resumed
					kex[i] = r.kex
				}
			}
			for i, srv := range servers {
				a := accs[i]
				out = append(out, TLSResult{
					Server: srv.name, Session: session, Clients: clients,
					Conns: conns[i], Resumed: resumed[i], Errors: a.errors, KeyExchange: kex[i],
					PerSec:    float64(conns[i]) / a.elapsed.Seconds(),
					ServerCPU: a.proxy, BackendCPU: a.backend,
					OtherLoad: a.otherLoad(),
				})
			}
		}
	}
	return out, nil
}

// profile runs the closed loop through the mesh once more while the mesh
// process writes a CPU profile to path.
func (b *bench) profile(path string) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	logf("CPU profile of the mesh: closed loop for %s (not in the tables)", b.s.Duration)
	var mesh target
	for _, t := range b.targets {
		if t.name == "mesh" {
			mesh = t
		}
	}
	conns, err := dialPool(mesh.addr, b.s.MaxConns, time.Now().Add(time.Minute))
	if err != nil {
		return err
	}
	defer closeAll(conns)
	closedLoop(conns, 2*time.Second)
	if err := b.mesh.command("cpuprofile-start " + path); err != nil {
		return err
	}
	r := closedLoop(conns, b.s.Duration)
	if err := b.mesh.command("cpuprofile-stop"); err != nil {
		return err
	}
	logf("  %.0f requests/s while profiling; profile in %s", float64(r.requests)/r.elapsed.Seconds(), path)
	return nil
}

// machine describes where the run happens.
func machine(haproxyBin string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if out, err := exec.Command(haproxyBin, "-v").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) > 2 {
			m.HAProxy = f[2]
		}
	}
	m.Pier = "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			m.Pier = rev[:min(len(rev), 7)]
			if modified == "true" {
				m.Pier += " + uncommitted changes"
			}
		}
	}
	return m
}
