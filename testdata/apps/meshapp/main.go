// meshapp is the e2e test app for the mesh. It serves HTTP/1.1 and h2c on
// $PORT: / answers with the caller identity the mesh verified, /ws echoes
// WebSocket messages, and gRPC health checks are answered on the same port.
// Other routes make calls from inside the machine, to other apps through
// the mesh; /hold opens a call that stays open and /poke sends over it.
// With MODE=tcp it is a tiny Redis-protocol server instead. With
// NEEDS=<NAME> it does not listen until $NAME is set (an app that cannot
// start without its connection), so a roll without it fails its checks.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	port := os.Getenv("PORT")
	if need := os.Getenv("NEEDS"); need != "" && os.Getenv(need) == "" {
		fmt.Printf("$%s is not set: not serving\n", need)
		for {
			time.Sleep(time.Hour)
		}
	}
	if os.Getenv("MODE") == "tcp" {
		serveRESP(":" + port)
		return
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	mux := http.NewServeMux()
	mux.HandleFunc("/", whoami)
	mux.HandleFunc("/ws", echoWS)
	mux.HandleFunc("/getenv", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, os.Getenv(r.URL.Query().Get("name"))) })
	mux.HandleFunc("/call", call)
	mux.HandleFunc("/load", load)
	mux.HandleFunc("/grpc", grpcCall)
	mux.HandleFunc("/wscall", wsCall)
	mux.HandleFunc("/redis", redisCall)
	mux.HandleFunc("/dial", dial)
	mux.HandleFunc("/hold", hold)
	mux.HandleFunc("/poke", poke)
	mux.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.DefaultResolver.LookupHost(r.Context(), r.FormValue("name"))
		if err != nil {
			fmt.Fprintf(w, "error: %v", err)
			return
		}
		fmt.Fprint(w, strings.Join(addrs, " "))
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.FormValue("path"))
		if err != nil {
			fmt.Fprintf(w, "error: %v", err)
			return
		}
		w.Write(b)
	})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: ":" + port, Handler: h}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	panic(srv.ListenAndServe())
}

// whoami answers ?status= (default 200) with the verified caller.
func whoami(w http.ResponseWriter, r *http.Request) {
	code := 200
	if s := r.URL.Query().Get("status"); s != "" {
		code, _ = strconv.Atoi(s)
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "xfcc=%s", r.Header.Get("X-Forwarded-Client-Cert"))
}

var upgrader = websocket.Upgrader{}

func echoWS(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		c.WriteMessage(mt, append([]byte("echo:"), msg...))
	}
}

var client = &http.Client{Timeout: 10 * time.Second}

// call GETs ?url= (or $<env> + ?path=) and answers "<status> <body>".
func call(w http.ResponseWriter, r *http.Request) {
	url := r.URL.Query().Get("url")
	if env := r.URL.Query().Get("env"); env != "" {
		url = os.Getenv(env) + r.URL.Query().Get("path")
	}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(w, "error %v", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Fprintf(w, "%d %s", resp.StatusCode, b)
}

// load GETs ?url= with ?c= workers for ?seconds=, and reports failures and
// how many distinct client certificates the callee saw.
func load(w http.ResponseWriter, r *http.Request) {
	url := r.URL.Query().Get("url")
	workers, _ := strconv.Atoi(r.URL.Query().Get("c"))
	secs, _ := strconv.Atoi(r.URL.Query().Get("seconds"))
	workers, secs = max(1, min(workers, 16)), max(1, min(secs, 300))
	var mu sync.Mutex
	var res struct {
		Requests, Failures int
		Errors             []string
		Certs              []string
	}
	seen := map[string]bool{}
	end := time.Now().Add(time.Duration(secs) * time.Second)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				resp, err := client.Get(url)
				var body []byte
				if err == nil {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				res.Requests++
				switch {
				case err != nil:
					res.Failures++
					res.Errors = append(res.Errors, err.Error())
				case resp.StatusCode != 200:
					res.Failures++
					res.Errors = append(res.Errors, fmt.Sprintf("%d %s", resp.StatusCode, body))
				default:
					_, h, _ := strings.Cut(string(body), "Hash=")
					h, _, _ = strings.Cut(h, ";")
					if !seen[h] {
						seen[h] = true
						res.Certs = append(res.Certs, h)
					}
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if len(res.Errors) > 10 {
		res.Errors = res.Errors[:10]
	}
	json.NewEncoder(w).Encode(res)
}

// grpcCall runs a gRPC health check against ?target= (host:port).
func grpcCall(w http.ResponseWriter, r *http.Request) {
	conn, err := grpc.NewClient(r.URL.Query().Get("target"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(w, "error %v", err)
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		fmt.Fprintf(w, "error %v", err)
		return
	}
	fmt.Fprintf(w, "grpc %s", resp.GetStatus())
}

// wsCall sends three messages over a WebSocket to ?url= and prints the
// replies.
func wsCall(w http.ResponseWriter, r *http.Request) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial(r.URL.Query().Get("url"), nil)
	if err != nil {
		fmt.Fprintf(w, "error %v", err)
		return
	}
	defer c.Close()
	for i := range 3 {
		c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "m%d", i))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := c.ReadMessage()
		if err != nil {
			fmt.Fprintf(w, "error %v", err)
			return
		}
		fmt.Fprintf(w, "%s ", msg)
	}
}

// redisCall talks Redis protocol to ?addr=: PING, SET, GET.
func redisCall(w http.ResponseWriter, r *http.Request) {
	rdb := redis.NewClient(&redis.Options{Addr: r.URL.Query().Get("addr"), DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second,
		Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	ctx := r.Context()
	pong, err := rdb.Ping(ctx).Result()
	if err == nil {
		err = rdb.Set(ctx, "k", "v1", 0).Err()
	}
	var v string
	if err == nil {
		v, err = rdb.Get(ctx, "k").Result()
	}
	if err != nil {
		fmt.Fprintf(w, "error %v", err)
		return
	}
	fmt.Fprintf(w, "%s %s", pong, v)
}

// dial opens a plain TCP connection to ?addr= and reports what happened.
func dial(w http.ResponseWriter, r *http.Request) {
	c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), 3*time.Second)
	if err != nil {
		fmt.Fprintf(w, "error %v", err)
		return
	}
	c.Close()
	fmt.Fprint(w, "connected")
}

// held are the calls /hold opened, by id, until /poke finds them closed.
var held = struct {
	sync.Mutex
	n     int
	calls map[int]*heldCall
}{calls: map[int]*heldCall{}}

// heldCall is a WebSocket (ws) or a raw TCP connection that speaks
// HTTP/1.1 (tcp).
type heldCall struct {
	mu sync.Mutex
	ws *websocket.Conn
	c  net.Conn
	r  *bufio.Reader
	n  int
}

// hold opens a call and keeps it: ?ws=<url> a WebSocket, or ?tcp=<addr> a
// TCP connection that says nothing for a second (so the mesh tunnels it as
// opaque TCP) and then sends HTTP/1.1 requests on it. It answers
// "held <id> <first answer>" or "error ...".
func hold(w http.ResponseWriter, r *http.Request) {
	hc := &heldCall{}
	if u := r.URL.Query().Get("ws"); u != "" {
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
		ws, _, err := d.Dial(u, nil)
		if err != nil {
			fmt.Fprintf(w, "error %v", err)
			return
		}
		hc.ws = ws
	} else {
		c, err := net.DialTimeout("tcp", r.URL.Query().Get("tcp"), 5*time.Second)
		if err != nil {
			fmt.Fprintf(w, "error %v", err)
			return
		}
		time.Sleep(time.Second)
		hc.c, hc.r = c, bufio.NewReader(c)
	}
	first := hc.send()
	held.Lock()
	held.n++
	id := held.n
	held.calls[id] = hc
	held.Unlock()
	fmt.Fprintf(w, "held %d %s", id, first)
}

// poke sends over the held call ?id= and answers what came back, or
// "error ..." once the call is closed.
func poke(w http.ResponseWriter, r *http.Request) {
	id, _ := strconv.Atoi(r.URL.Query().Get("id"))
	held.Lock()
	hc := held.calls[id]
	held.Unlock()
	if hc == nil {
		fmt.Fprintf(w, "unknown %d", id)
		return
	}
	fmt.Fprint(w, hc.send())
}

// send makes one exchange on the call, with a 5s bound.
func (hc *heldCall) send() string {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	hc.n++
	deadline := time.Now().Add(5 * time.Second)
	if hc.ws != nil {
		hc.ws.SetWriteDeadline(deadline)
		if err := hc.ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "p%d", hc.n)); err != nil {
			return "error " + err.Error()
		}
		hc.ws.SetReadDeadline(deadline)
		_, msg, err := hc.ws.ReadMessage()
		if err != nil {
			return "error " + err.Error()
		}
		return string(msg)
	}
	hc.c.SetDeadline(deadline)
	if _, err := fmt.Fprintf(hc.c, "GET /?poke=%d HTTP/1.1\r\nHost: held\r\n\r\n", hc.n); err != nil {
		return "error " + err.Error()
	}
	resp, err := http.ReadResponse(hc.r, nil)
	if err != nil {
		return "error " + err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "error " + err.Error()
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

// serveRESP is a minimal Redis: PING, SET, GET, in RESP2.
func serveRESP(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	data := map[string]string{}
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				args, err := readCommand(r)
				if err != nil {
					return
				}
				switch strings.ToUpper(args[0]) {
				case "PING":
					io.WriteString(c, "+PONG\r\n")
				case "SET":
					mu.Lock()
					data[args[1]] = args[2]
					mu.Unlock()
					io.WriteString(c, "+OK\r\n")
				case "GET":
					mu.Lock()
					v, ok := data[args[1]]
					mu.Unlock()
					if !ok {
						io.WriteString(c, "$-1\r\n")
					} else {
						fmt.Fprintf(c, "$%d\r\n%s\r\n", len(v), v)
					}
				default:
					fmt.Fprintf(c, "-ERR unknown command %s\r\n", args[0])
				}
			}
		}()
	}
}

func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || n < 1 || n > 16 {
		return nil, fmt.Errorf("bad command %q", line)
	}
	args := make([]string, n)
	for i := range args {
		if _, err := r.ReadString('\n'); err != nil { // $len
			return nil, err
		}
		s, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		args[i] = strings.TrimRight(s, "\r\n")
	}
	return args, nil
}
