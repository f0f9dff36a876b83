// Command meshbench is the measuring half of bench/mesh.sh: it measures what
// one mesh hop costs (pier's caller-side proxy, mTLS, pier's callee-side
// proxy) against calling the backend directly and against a pair of HAProxy
// instances doing the same mTLS hop, all on loopback.
//
//	meshbench [flags]                  one run of every measurement; Markdown on stdout
//	meshbench summarize FILE.json...   medians over runs written with -json
//
// One run starts, as child processes so that CPU time and RSS can be read
// from /proc the same way for every proxy:
//
//   - a backend: a Go HTTP/1.1 server answering every request at once with
//     a fixed body (`meshbench serve-backend`);
//   - pier's mesh, built with internal/mesh as `pier server` builds it (the
//     real identity CA, Prometheus metrics, GC target 400), in one process
//     (`meshbench serve-mesh`). A front listener hands each accepted
//     connection to Mesh.Carry as a call from app web to app api. In
//     production that listener sits behind an iptables DNAT and identifies
//     the caller by address and SO_ORIGINAL_DST; here it is a plain loopback
//     listener, so the DNAT and the two lookups are not measured;
//   - two HAProxy processes (nbthread 1 each): A takes plain HTTP and
//     forwards it over TLS 1.3 with web's certificate to B, which requires
//     and verifies a client certificate against the mesh's anchors, sets
//     X-Forwarded-Client-Cert like pier's inbound side does, and forwards
//     plain HTTP/1.1 to the backend. Both reuse their server-side
//     connections (http-reuse always, keep-alive). A sends no SNI and does
//     not check B's identity, only its chain (see haproxyConf for why).
//
// The certificates are the mesh CA's own: the parent opens the CA, hands
// its state to the mesh child, and writes web's and api's leaves and the
// anchors as PEM files for HAProxy.
//
// Then it measures, for each target (direct to the backend, mesh, HAProxy
// pair):
//
//   - per connection: -idle keep-alive connections are opened through the
//     proxy, each sends one request and then stays idle; the proxy
//     processes' RSS growth and CPU time are divided by their number (for
//     the Go processes, the RSS also after a forced GC);
//   - open loop: requests are sent at a fixed rate (each of -rates) for
//     -duration over -conns keep-alive connections, after a 1 s warm-up.
//     Each request's latency runs from the time it was scheduled to be
//     sent, so a stalled proxy is charged for the requests queued behind it
//     (no coordinated omission). The added latency of a proxy is its
//     percentile minus the direct path's;
//   - closed loop: -max-conns connections send requests back to back for
//     -duration after a 1 s warm-up; requests/s and CPU per request;
//   - TLS: new mTLS connections per second against the mesh's inbound side
//     and against HAProxy B, with web's certificate, each doing its
//     handshake and one HTTP/1.1 request (Connection: close) — with a new
//     session each time (full handshakes) and with a shared client session
//     cache (TLS 1.3 resumption), from one client goroutine and from
//     GOMAXPROCS of them, for -tls-duration each.
//
// The machine may be shared, and other work comes and goes. So the open-
// loop, closed-loop and TLS measurements are cut into -slices slices, and
// the targets take turns slice by slice (the order rotating; -run rotates
// it too), keeping their connections; every figure is reported with the
// share of the machine other processes used meanwhile ("other load").
//
// With -cpuprofile, one more closed-loop run through the mesh is made (not
// part of the tables) while the mesh process writes a CPU profile.
//
// Flags:
//
//	-duration 10s      each open-loop and closed-loop measurement
//	-rates 500,2000    open-loop request rates (requests/s)
//	-conns 32          keep-alive connections of the open-loop client
//	-max-conns 64      connections of the closed-loop client
//	-idle 1000         idle connections for the per-connection figures
//	-tls-duration 3s   each TLS measurement
//	-body 100          response body size in bytes
//	-slices 5          cut each open-loop, closed-loop and TLS measurement into
//	                   this many slices, the targets taking turns slice by slice
//	-run 1             run number: printed, and rotates the order of targets
//	-haproxy haproxy   the HAProxy binary
//	-haproxy-h2        HAProxy A talks HTTP/2 to B (default HTTP/1.1; pier's hop is HTTP/2)
//	-json FILE         also write the results as JSON (for summarize)
//	-cpuprofile FILE   write a CPU profile of the mesh process under closed-loop load
//	-keep              keep the temp dir (configs, PEM files, logs)
//	-pier REV          pier's revision, to print (default: from the build info)
//
// Everything listens on and connects to 127.0.0.1 only, every measurement
// has a fixed duration and every I/O a deadline, and the child processes
// die with the parent (PR_SET_PDEATHSIG).
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("meshbench: ")
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		var err error
		switch os.Args[1] {
		case "serve-backend":
			err = serveBackend(os.Args[2:])
		case "serve-mesh":
			err = serveMesh(os.Args[2:])
		case "summarize":
			err = summarize(os.Args[2:])
		default:
			err = fmt.Errorf("unknown subcommand %q: use summarize, or flags only", os.Args[1])
		}
		if err != nil {
			log.Fatal(err)
		}
		return
	}

	var s Settings
	var rates, jsonOut string
	flag.DurationVar(&s.Duration, "duration", 10*time.Second, "each open-loop and closed-loop measurement")
	flag.StringVar(&rates, "rates", "500,2000", "open-loop request rates, requests/s")
	flag.IntVar(&s.Conns, "conns", 32, "keep-alive connections of the open-loop client")
	flag.IntVar(&s.MaxConns, "max-conns", 64, "connections of the closed-loop client")
	flag.IntVar(&s.Idle, "idle", 1000, "idle connections for the per-connection figures")
	flag.DurationVar(&s.TLSDuration, "tls-duration", 3*time.Second, "each TLS measurement")
	flag.IntVar(&s.Body, "body", 100, "response body size in bytes")
	flag.IntVar(&s.Slices, "slices", 5, "cut each open- and closed-loop measurement into this many slices, the targets taking turns")
	flag.IntVar(&s.Run, "run", 1, "run number: printed, and rotates the order of targets")
	haproxy := flag.String("haproxy", "haproxy", "the HAProxy binary")
	flag.BoolVar(&s.HAProxyH2, "haproxy-h2", false, "HAProxy A talks HTTP/2 to B (default HTTP/1.1)")
	flag.StringVar(&jsonOut, "json", "", "also write the results as JSON here")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the mesh process under closed-loop load here")
	keep := flag.Bool("keep", false, "keep the temp dir")
	pierRev := flag.String("pier", "", "pier's revision, to print (default: from the build info)")
	flag.Parse()
	for f := range strings.SplitSeq(rates, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			log.Fatalf("-rates %q: want positive integers separated by commas", rates)
		}
		s.Rates = append(s.Rates, r)
	}
	slices.Sort(s.Rates)
	if s.Duration < time.Second || s.TLSDuration < 500*time.Millisecond || s.Conns < 1 || s.MaxConns < 1 || s.Idle < 1 || s.Body < 0 || s.Slices < 1 {
		log.Fatal("bad flags: -duration must be at least 1s, -tls-duration 500ms, the counts at least 1")
	}

	rep, err := run(s, *haproxy, *cpuprofile, *keep)
	if err != nil {
		log.Fatal(err)
	}
	if *pierRev != "" {
		rep.Machine.Pier = *pierRev
	}
	if jsonOut != "" {
		if err := writeJSON(jsonOut, rep); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Print(rep.Markdown())
}

// logf reports progress on stderr; stdout is the Markdown.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "  %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
