// Command restartbench sends an open-loop, fixed-rate load of GET requests
// to one URL and, part way through, runs a command that restarts the
// server behind it (nginx -s reload, or kill -HUP of pier server). It
// reports how many requests failed and the latency percentiles over the
// whole run and over the second around the restart, as one JSON line.
//
//	restartbench -url http://127.0.0.1:8080/ -host web.localhost -rate 200 -duration 10s -at 4s -- kill -HUP 1234
//
// Requests go out on schedule whether or not earlier ones have answered
// (at most -max-inflight at once; a request that cannot be sent on time
// counts as failed), so a pause of the server shows as latency and
// failures instead of slowing the load down. Only loopback is targeted by
// the bench scripts.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

type result struct {
	Sent, OK, Failed int
	P50, P99, Max    float64 // ms, over the whole run
	NearP99          float64 // ms, requests sent within 1s of the restart command
	Errors           []string
	RestartTook      float64 // ms, how long the restart command ran
}

func main() {
	url := flag.String("url", "", "URL to GET")
	host := flag.String("host", "", "Host header (default: the URL's)")
	want := flag.String("want", "", "a substring every answer must contain")
	rate := flag.Int("rate", 200, "requests per second")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	at := flag.Duration("at", 4*time.Second, "when to run the restart command")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	maxInflight := flag.Int("max-inflight", 2000, "requests in flight at most")
	flag.Parse()
	if *url == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: restartbench -url URL [flags] -- COMMAND...")
		os.Exit(2)
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}
	type sample struct {
		sent time.Time
		lat  time.Duration
		err  string
	}
	var mu sync.Mutex
	var samples []sample
	var wg sync.WaitGroup
	slots := make(chan struct{}, *maxInflight)
	var restartAt time.Time
	var restartTook time.Duration
	restarted := make(chan struct{})
	go func() {
		time.Sleep(*at)
		restartAt = time.Now()
		out, err := exec.Command(flag.Arg(0), flag.Args()[1:]...).CombinedOutput()
		restartTook = time.Since(restartAt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "restart command: %v: %s\n", err, out)
		}
		close(restarted)
	}()
	interval := time.Second / time.Duration(*rate)
	begin := time.Now()
	tick := time.NewTicker(interval)
	for time.Since(begin) < *duration {
		<-tick.C
		sent := time.Now()
		select {
		case slots <- struct{}{}:
		default:
			mu.Lock()
			samples = append(samples, sample{sent: sent, err: "too many in flight"})
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
			if *host != "" {
				req.Host = *host
			}
			s := sample{sent: sent}
			resp, err := client.Do(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					s.err = fmt.Sprintf("status %d", resp.StatusCode)
				} else if *want != "" && !strings.Contains(string(body), *want) {
					s.err = "unexpected body"
				}
			} else {
				s.err = err.Error()
			}
			s.lat = time.Since(sent)
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
		}()
	}
	tick.Stop()
	wg.Wait()
	<-restarted

	var r result
	var lats, near []float64
	errs := map[string]int{}
	for _, s := range samples {
		r.Sent++
		if s.err != "" {
			r.Failed++
			errs[s.err]++
			continue
		}
		r.OK++
		ms := float64(s.lat.Microseconds()) / 1000
		lats = append(lats, ms)
		if d := s.sent.Sub(restartAt); d > -500*time.Millisecond && d < 500*time.Millisecond {
			near = append(near, ms)
		}
	}
	for e, n := range errs {
		r.Errors = append(r.Errors, fmt.Sprintf("%d× %s", n, e))
	}
	r.P50, r.P99, r.Max = pct(lats, 50), pct(lats, 99), pct(lats, 100)
	r.NearP99 = pct(near, 99)
	r.RestartTook = float64(restartTook.Microseconds()) / 1000
	json.NewEncoder(os.Stdout).Encode(r)
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	i := int(float64(len(v)-1) * p / 100)
	return v[i]
}
