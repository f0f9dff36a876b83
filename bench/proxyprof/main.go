// Command proxyprof serves pier's edge proxy (internal/proxy) on its own,
// configured as `pier server` configures it, in front of one upstream, and
// writes a CPU profile of it. It is for finding where the proxy spends its
// CPU under load (see bench/RESULTS.md), e.g.:
//
//	go run ./bench/proxyprof -upstream 127.0.0.1:PORT -listen 127.0.0.1:9999 -cpuprofile /tmp/cpu.out -for 12s &
//	wrk -t2 -c50 -d10s -H 'Host: benchapp.localhost' http://127.0.0.1:9999/
//	go tool pprof -top /tmp/cpu.out
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"time"

	"github.com/pier-dev/pier/internal/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	upstream := flag.String("upstream", "", "host:port of the app")
	listen := flag.String("listen", "127.0.0.1:9999", "where the proxy listens")
	profile := flag.String("cpuprofile", "", "write a CPU profile here")
	d := flag.Duration("for", 15*time.Second, "serve this long, then exit")
	flag.Parse()
	if *upstream == "" {
		log.Fatal("-upstream is required")
	}
	edge := proxy.New("localhost", proxy.NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	edge.AddApp("benchapp")
	edge.Add("benchapp", "m1", *upstream)

	// The same server settings as internal/server.Run's edge listener.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: edge, Protocols: &protocols, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	go srv.Serve(ln)
	time.Sleep(*d)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
