package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/mesh"
	"github.com/pier-dev/pier/internal/metrics"
)

// The child processes. Each prints one JSON line (childAddrs) on stdout
// once it listens, then serves until its stdin reaches EOF (the parent
// closed it or died) or it gets SIGTERM. Lines on stdin are commands:
// "cpuprofile-start PATH", "cpuprofile-stop" and "free-os-memory" (a
// forced GC that also returns the freed memory to the OS), each answered
// by one line ("ok" or "error: ...").

// childAddrs is what a child tells the parent once it listens.
type childAddrs struct {
	Listen  string `json:"listen"`            // where the load goes
	Inbound string `json:"inbound,omitempty"` // the mesh's inbound (mTLS) side
}

const trustDomain = "bench.pier"

// serveBackend is the app behind every proxy: HTTP/1.1 with keep-alive,
// a fixed body, no work.
func serveBackend(args []string) error {
	fs := flag.NewFlagSet("serve-backend", flag.ExitOnError)
	size := fs.Int("body", 100, "response body size in bytes")
	fs.Parse(args)
	body := bytes.Repeat([]byte("x"), *size)
	length := []string{strconv.Itoa(len(body))}
	ctype := []string{"text/plain"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h["Content-Type"] = ctype
			h["Content-Length"] = length
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(slog.NewTextHandler(os.Stderr, nil), slog.LevelWarn),
	}
	go srv.Serve(ln)
	defer srv.Close()
	return childLoop(childAddrs{Listen: ln.Addr().String()})
}

// serveMesh runs pier's mesh data plane as `pier server` sets it up
// (internal/server: newMesh, Run), with apps web and api, api's one machine
// being the backend and web allowed to call api. Its front listener stands
// for the outbound listener: every connection it accepts is a call from
// web to api.
func serveMesh(args []string) error {
	fs := flag.NewFlagSet("serve-mesh", flag.ExitOnError)
	state := fs.String("state", "", "file with the CA state the parent made")
	backend := fs.String("backend", "", "host:port of api's machine")
	fs.Parse(args)
	if *state == "" || *backend == "" {
		return fmt.Errorf("serve-mesh: -state and -backend are required")
	}
	// As internal/server.Run does for the whole server process.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	data, err := os.ReadFile(*state)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ca, err := identity.Open(ctx, &memStore{data: data}, identity.Options{TrustDomain: trustDomain, Log: quiet})
	if err != nil {
		return err
	}
	m := mesh.New(mesh.Config{
		Identities: ca,
		Policy:     allowAll{},
		Metrics:    metrics.New(prometheus.NewRegistry(), metrics.Options{}),
		Log:        quiet.With("component", "mesh"),
	})
	m.SetService("web", netip.MustParseAddr("100.127.0.1"))
	m.SetService("api", netip.MustParseAddr("100.127.0.2"))
	m.Add("api", "m1", *backend)

	in, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan struct{})
	go func() { m.Serve(ctx, in, nil); close(served) }()
	for m.InboundAddr() == "" {
		time.Sleep(time.Millisecond)
	}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			go m.Carry(ctx, c, "web", "api")
		}
	}()
	err = childLoop(childAddrs{Listen: front.Addr().String(), Inbound: m.InboundAddr()})
	front.Close()
	cancel()
	<-served
	return err
}

// childLoop announces addrs and answers the parent's commands until stdin
// ends or SIGTERM comes.
func childLoop(addrs childAddrs) error {
	line, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	fmt.Printf("%s\n", line)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var prof *os.File
	defer func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
	}()
	for {
		select {
		case <-sig:
			return nil
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			cmd, arg, _ := strings.Cut(l, " ")
			switch {
			case cmd == "cpuprofile-start" && prof == nil:
				f, err := os.Create(arg)
				if err == nil {
					if err = pprof.StartCPUProfile(f); err != nil {
						f.Close()
					} else {
						prof = f
					}
				}
				reply(err)
			case cmd == "cpuprofile-stop" && prof != nil:
				pprof.StopCPUProfile()
				err := prof.Close()
				prof = nil
				reply(err)
			case cmd == "free-os-memory":
				debug.FreeOSMemory()
				reply(nil)
			default:
				reply(fmt.Errorf("unknown command %q", l))
			}
		}
	}
}

func reply(err error) {
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return
	}
	fmt.Println("ok")
}

// memStore keeps the CA state in memory (identity.Store).
type memStore struct {
	mu   sync.Mutex
	data []byte
}

var _ identity.Store = (*memStore)(nil)

func (s *memStore) Load(context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data, nil
}

func (s *memStore) Save(_ context.Context, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data = bytes.Clone(b)
	return nil
}

// allowAll is the policy: web may call api (and anything else).
type allowAll struct{}

var _ mesh.Policy = allowAll{}

func (allowAll) Allowed(src, dst string) bool { return true }
