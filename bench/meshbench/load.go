package main

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The load generator. It speaks just enough HTTP/1.1 itself (one fixed GET,
// responses framed by Content-Length or chunked) so that its own cost per
// request is small and the same for every target.

var getRequest = []byte("GET / HTTP/1.1\r\nHost: api.internal\r\nUser-Agent: meshbench\r\n\r\n")

// httpConn is one keep-alive client connection.
type httpConn struct {
	addr     string
	deadline time.Time // of every I/O on it; set per phase
	c        net.Conn
	r        *bufio.Reader
}

func dialHTTP(addr string, deadline time.Time) (*httpConn, error) {
	h := &httpConn{addr: addr, deadline: deadline}
	return h, h.dial()
}

func (h *httpConn) dial() error {
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		return err
	}
	c.SetDeadline(h.deadline)
	h.c, h.r = c, bufio.NewReaderSize(c, 4096)
	return nil
}

// setDeadline bounds every I/O on h until t.
func (h *httpConn) setDeadline(t time.Time) {
	h.deadline = t
	if h.c != nil {
		h.c.SetDeadline(t)
	}
}

// roundTrip sends one GET and reads its answer. After an I/O error the
// connection is closed and dialled again before the next request.
func (h *httpConn) roundTrip() error {
	if h.c == nil {
		if err := h.dial(); err != nil {
			return err
		}
	}
	_, err := h.c.Write(getRequest)
	if err == nil {
		err = readResponse(h.r)
	}
	var st statusError
	if err != nil && !errors.As(err, &st) {
		h.close()
	}
	return err
}

func (h *httpConn) close() {
	if h.c != nil {
		h.c.Close()
		h.c, h.r = nil, nil
	}
}

// statusError is an answer other than 200; the connection stays usable.
type statusError string

func (e statusError) Error() string { return "status " + string(e) }

// readResponse reads one response and discards its body. It returns a
// statusError for any status but 200.
func readResponse(r *bufio.Reader) error {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return fmt.Errorf("bad status line %q", line)
	}
	var status [3]byte
	copy(status[:], line[9:12])
	length, chunked := -1, false
	for {
		line, err = r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return fmt.Errorf("bad header line %q", line)
		}
		v = bytes.TrimSpace(v)
		switch {
		case len(k) == 14 && bytes.EqualFold(k, []byte("Content-Length")):
			length = 0
			for _, c := range v {
				if c < '0' || c > '9' {
					return fmt.Errorf("bad Content-Length %q", v)
				}
				length = length*10 + int(c-'0')
			}
		case len(k) == 17 && bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(v, []byte("chunked"))
		}
	}
	switch {
	case chunked:
		if _, err := io.Copy(io.Discard, httputil.NewChunkedReader(r)); err != nil {
			return err
		}
		for { // trailers, up to the empty line
			line, err = r.ReadSlice('\n')
			if err != nil {
				return err
			}
			if len(line) <= 2 {
				break
			}
		}
	case length >= 0:
		if _, err := r.Discard(length); err != nil {
			return err
		}
	default:
		return errors.New("response without Content-Length or chunked body")
	}
	if string(status[:]) != "200" {
		return statusError(status[:])
	}
	return nil
}

// dialPool opens n keep-alive connections to addr and sends one request on
// each (so every proxy has its upstream connections up).
func dialPool(addr string, n int, deadline time.Time) ([]*httpConn, error) {
	conns := make([]*httpConn, 0, n)
	for range n {
		h, err := dialHTTP(addr, deadline)
		if err == nil {
			err = h.roundTrip()
		}
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("first request to %s: %w", addr, err)
		}
		conns = append(conns, h)
	}
	return conns, nil
}

func closeAll(conns []*httpConn) {
	for _, h := range conns {
		h.close()
	}
}

// openLoopResult is one fixed-rate run.
type openLoopResult struct {
	sent, errors int
	lat          []time.Duration // of the requests answered, sorted
	lag          []time.Duration // how late each request was handed to a connection, sorted
}

// openLoop sends rate requests/s for d over conns. Request i is due at
// start + i/rate; a dispatcher hands it to whichever connection is free at
// that time, and its latency runs from when it was due until its answer
// is read. When every connection is busy, requests wait for one, and that
// wait counts. The dispatcher sleeps with nanosleep on a thread of its own
// with a 1 µs timer slack, as Go's timers have a granularity of about 1 ms.
func openLoop(conns []*httpConn, rate int, d time.Duration) openLoopResult {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	start := time.Now().Add(5 * time.Millisecond)
	due := func(i int) time.Time { return start.Add(time.Duration(i) * interval) }
	end := due(n).Add(10 * time.Second)
	for _, h := range conns {
		h.setDeadline(end)
	}
	lat := make([]time.Duration, n)
	lag := make([]time.Duration, n)
	work := make(chan int, n)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
		for i := range n {
			if w := time.Until(due(i)); w > 0 {
				ts := unix.NsecToTimespec(int64(w))
				unix.Nanosleep(&ts, nil)
			}
			lag[i] = time.Since(due(i))
			work <- i
		}
		close(work)
	}()
	var wg sync.WaitGroup
	var errs atomic.Int64
	for _, h := range conns {
		wg.Go(func() {
			for i := range work {
				if err := h.roundTrip(); err != nil {
					lat[i] = -1
					errs.Add(1)
					continue
				}
				lat[i] = time.Since(due(i))
			}
		})
	}
	wg.Wait()
	ok := slices.DeleteFunc(lat, func(d time.Duration) bool { return d < 0 })
	slices.Sort(ok)
	slices.Sort(lag)
	return openLoopResult{sent: n, errors: int(errs.Load()), lat: ok, lag: lag}
}

// closedLoopResult is one back-to-back run.
type closedLoopResult struct {
	requests, errors int
	elapsed          time.Duration
	lat              []time.Duration // sorted
}

// closedLoop has every connection send requests back to back for d.
func closedLoop(conns []*httpConn, d time.Duration) closedLoopResult {
	start := time.Now()
	end := start.Add(d)
	for _, h := range conns {
		h.setDeadline(end.Add(10 * time.Second))
	}
	lats := make([][]time.Duration, len(conns))
	var errs atomic.Int64
	var wg sync.WaitGroup
	for k, h := range conns {
		wg.Go(func() {
			l := make([]time.Duration, 0, 1<<14)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if err := h.roundTrip(); err != nil {
					errs.Add(1)
					continue
				}
				l = append(l, time.Since(t0))
			}
			lats[k] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lats...)
	slices.Sort(all)
	return closedLoopResult{requests: len(all), errors: int(errs.Load()), elapsed: elapsed, lat: all}
}

// openIdle opens k connections to addr, each sending one request, 16 at a
// time, and leaves them open and idle.
func openIdle(addr string, k int, deadline time.Time) ([]*httpConn, error) {
	conns := make([]*httpConn, k)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= k {
					return
				}
				h, err := dialHTTP(addr, deadline)
				if err == nil {
					err = h.roundTrip()
				}
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					return
				}
				conns[i] = h
			}
		})
	}
	wg.Wait()
	if first != nil {
		closeAll(slices.DeleteFunc(conns, func(h *httpConn) bool { return h == nil }))
		return nil, fmt.Errorf("idle connection to %s: %w", addr, first)
	}
	return conns, nil
}

// tlsResult is one run of new mTLS connections.
type tlsResult struct {
	conns, resumed, errors int
	elapsed                time.Duration
	firstErr               error
	kex                    string // the key exchange of the last connection
}

// tlsConns opens new mTLS connections to addr from clients goroutines for
// d: each a TCP connect, a TLS handshake with cfg, one HTTP/1.1 request
// with Connection: close and its answer. cfg is shared, so with a
// ClientSessionCache every connection after a client's first can resume.
func tlsConns(addr string, cfg *tls.Config, clients int, d time.Duration) tlsResult {
	req := []byte("GET / HTTP/1.1\r\nHost: api.internal\r\nUser-Agent: meshbench\r\nConnection: close\r\n\r\n")
	start := time.Now()
	end := start.Add(d)
	var conns, resumed, errs atomic.Int64
	var firstErr atomic.Pointer[error]
	var kex atomic.Value
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Now().Before(end) {
				err := func() error {
					c, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					tc := tls.Client(c, cfg)
					if err := tc.Handshake(); err != nil {
						return err
					}
					if _, err := tc.Write(req); err != nil {
						return err
					}
					// Reading also takes in the server's session ticket.
					if err := readResponse(bufio.NewReader(tc)); err != nil {
						return err
					}
					cs := tc.ConnectionState()
					if cs.DidResume {
						resumed.Add(1)
					}
					kex.Store(cs.CurveID.String())
					return nil
				}()
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					time.Sleep(time.Millisecond) // do not spin on a refusing server
					continue
				}
				conns.Add(1)
			}
		})
	}
	wg.Wait()
	r := tlsResult{conns: int(conns.Load()), resumed: int(resumed.Load()), errors: int(errs.Load()), elapsed: time.Since(start)}
	if e := firstErr.Load(); e != nil {
		r.firstErr = *e
	}
	r.kex, _ = kex.Load().(string)
	return r
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[max(0, min(k, len(sorted)-1))]
}
