package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/pier-dev/pier/internal/identity"
)

// child is a meshbench child process (serve-backend, serve-mesh).
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	addrs childAddrs
}

// startChild runs this binary with args, its stderr going to logPath, and
// waits (at most 15 s) for the line with its addresses.
func startChild(name, logPath string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(exe, args...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	line, err := c.readLine(15 * time.Second)
	if err == nil {
		err = json.Unmarshal([]byte(line), &c.addrs)
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s did not start: %w; see %s", name, err, logPath)
	}
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// readLine reads one line of the child's stdout, waiting at most d.
func (c *child) readLine(d time.Duration) (string, error) {
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		ch <- result{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-time.After(d):
		return "", fmt.Errorf("no answer from %s in %s", c.name, d)
	}
}

// command sends one command line and waits for its answer.
func (c *child) command(cmd string) error {
	if _, err := fmt.Fprintln(c.stdin, cmd); err != nil {
		return err
	}
	ans, err := c.readLine(30 * time.Second)
	if err != nil {
		return err
	}
	if ans != "ok" {
		return fmt.Errorf("%s: %s", c.name, ans)
	}
	return nil
}

// stop closes the child's stdin (it exits on EOF) and kills it if it has
// not exited within 5 s.
func (c *child) stop() {
	c.stdin.Close()
	stopCmd(c.cmd, 0)
}

// stopCmd sends sig (if not 0) and waits up to 5 s before SIGKILL.
func stopCmd(cmd *exec.Cmd, sig syscall.Signal) {
	if sig != 0 {
		cmd.Process.Signal(sig)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// ------------------------------------------------------------- HAProxy --

// haproxyPair is HAProxy A (plain HTTP in, mTLS out as web) and B (mTLS in
// as api, plain HTTP to the backend).
type haproxyPair struct {
	a, b         *exec.Cmd
	addrA, addrB string
}

// Both get one thread: two single-threaded processes against pier's one
// process with GOMAXPROCS = the number of cores (2 on the project's
// machine). TLS 1.3 only, as pier's hop. Access logging is off (no "log"
// line), as pier writes no access log. B sets X-Forwarded-Client-Cert from
// the verified client certificate's hash, as pier's inbound side does.
//
// A sends no SNI: with "verify required", HAProxy 2.6 matches the "sni"
// value against the server certificate's DNS names, and the mesh's leaves
// name only a SPIFFE ID (a URI), so "sni str(api.internal)" fails every
// handshake. A therefore checks B's chain against the anchors but not
// which app B is (pier checks the SPIFFE ID), and B serves its one
// certificate without looking at SNI (pier picks it by SNI).
var haproxyConf = template.Must(template.New("").Parse(`global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode http
    maxconn 8000
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always
{{if .A}}
frontend web_out
    bind 127.0.0.1:{{.PortA}}
    default_backend api_mtls

backend api_mtls
    server b 127.0.0.1:{{.PortB}} ssl crt {{.Dir}}/web.pem ca-file {{.Dir}}/ca.pem verify required{{if .H2}} alpn h2{{end}}
{{else}}
frontend api_in
    bind 127.0.0.1:{{.PortB}} ssl crt {{.Dir}}/api.pem ca-file {{.Dir}}/ca.pem verify required{{if .H2}} alpn h2,http/1.1{{end}}
    http-request set-header X-Forwarded-Client-Cert "By={{.APIID}};Hash=%[ssl_c_der,digest(sha256),hex,lower];URI={{.WebID}}"
    default_backend app

backend app
    server m1 {{.Backend}}
{{end}}`))

type haproxyVars struct {
	A            bool
	PortA, PortB int
	Dir, Backend string
	APIID, WebID string
	H2           bool
}

// startHAProxy writes both configurations into dir, checks them and starts
// B, then A, each in the foreground (-db).
func startHAProxy(bin, dir, backend string, ca *identity.Authority, h2 bool) (*haproxyPair, error) {
	portA, err := freePort()
	if err != nil {
		return nil, err
	}
	portB, err := freePort()
	if err != nil {
		return nil, err
	}
	v := haproxyVars{PortA: portA, PortB: portB, Dir: dir, Backend: backend,
		APIID: ca.AppID("api").String(), WebID: ca.AppID("web").String(), H2: h2}
	p := &haproxyPair{addrA: fmt.Sprintf("127.0.0.1:%d", portA), addrB: fmt.Sprintf("127.0.0.1:%d", portB)}
	for _, side := range []string{"b", "a"} {
		v.A = side == "a"
		var buf bytes.Buffer
		if err := haproxyConf.Execute(&buf, v); err != nil {
			return nil, err
		}
		cfg := filepath.Join(dir, "haproxy-"+side+".cfg")
		if err := os.WriteFile(cfg, buf.Bytes(), 0o600); err != nil {
			return nil, err
		}
		if out, err := exec.Command(bin, "-c", "-q", "-f", cfg).CombinedOutput(); err != nil {
			p.stop()
			return nil, fmt.Errorf("haproxy -c %s: %v: %s", cfg, err, out)
		}
		logf, err := os.Create(filepath.Join(dir, "haproxy-"+side+".log"))
		if err != nil {
			p.stop()
			return nil, err
		}
		cmd := exec.Command(bin, "-db", "-f", cfg)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			p.stop()
			return nil, fmt.Errorf("start haproxy: %w", err)
		}
		addr := p.addrB
		if v.A {
			p.a, addr = cmd, p.addrA
		} else {
			p.b = cmd
		}
		if err := waitListening(addr, 10*time.Second); err != nil {
			p.stop()
			return nil, fmt.Errorf("haproxy %s: %w; see %s", strings.ToUpper(side), err, logf.Name())
		}
	}
	return p, nil
}

func (p *haproxyPair) pids() []int { return []int{p.a.Process.Pid, p.b.Process.Pid} }

func (p *haproxyPair) stop() {
	for _, c := range []*exec.Cmd{p.a, p.b} {
		if c != nil && c.Process != nil {
			stopCmd(c, syscall.SIGTERM)
		}
	}
}

// freePort asks the kernel for a free loopback port. Another program may
// take it before HAProxy binds it; HAProxy then fails to start and the run
// fails with that message.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitListening(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %s", addr, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ----------------------------------------------------------------- PEM --

// writePEMs writes the anchors (ca.pem) and web's and api's certificate
// chains with their keys (web.pem, api.pem) into dir, for HAProxy.
func writePEMs(dir string, ca *identity.Authority) error {
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.AnchorsPEM(), 0o600); err != nil {
		return err
	}
	for _, app := range []string{"web", "api"} {
		cert, err := ca.Certificate(ca.AppID(app))
		if err != nil {
			return err
		}
		b, err := chainPEM(cert)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, app+".pem"), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func chainPEM(c *tls.Certificate) ([]byte, error) {
	var out []byte
	for _, der := range c.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, err
	}
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})...), nil
}

// --------------------------------------------------------------- /proc --

// clkTck is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clkTck = 100

// cpuTime is the user+system CPU time of the processes (all threads),
// from /proc/PID/stat fields 14 and 15.
func cpuTime(pids ...int) (time.Duration, error) {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		// The command name (field 2) may hold spaces: start after its ")".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
		}
		f := strings.Fields(string(b[i+1:])) // f[0] is field 3
		if len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: short", pid)
		}
		for _, s := range f[11:13] {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return 0, err
			}
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clkTck, nil
}

// rss is the resident set size of the processes in bytes (VmRSS).
func rss(pids ...int) (int64, error) {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, err
		}
		found := false
		for l := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return 0, err
				}
				total += kb << 10
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
		}
	}
	return total, nil
}

// busyTime is the CPU time all cores have spent on anything but idling
// since boot: user, nice, system, irq, softirq and steal from /proc/stat.
// The kernel has no IRQ time accounting here (CONFIG_IRQ_TIME_ACCOUNTING
// unset), so softirq ticks taken while one of our processes ran are in its
// stime too; leaving irq and softirq out (as bench/lib.sh does) would make
// "other load" come out negative under loopback traffic. Softirq work done
// outside our processes (ksoftirqd, idle CPUs) counts as other load.
func busyTime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: unexpected first line")
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clkTck, nil
}
