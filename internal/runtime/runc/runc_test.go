package runc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/runtime"
)

// The tests drive the real runc as root. TestMain builds a root filesystem
// (a static Go test server and busybox), one Driver on a bridge and subnet
// of its own, and after the tests checks that nothing leaked and removes
// the bridge and firewall chains.

var (
	skipReason string // why the runc tests cannot run here
	drv        *Driver
	stateDir   string
	rootfsDir  string
	testBridge string
	hasBusybox bool
	idSeq      atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	switch {
	case os.Geteuid() != 0:
		skipReason = "needs root"
	default:
		if _, err := exec.LookPath("runc"); err != nil {
			skipReason = "runc not installed (apt-get install runc, or bash scripts/deps.sh)"
		}
	}
	if skipReason != "" {
		return m.Run()
	}
	sweepStale()
	tmp, err := os.MkdirTemp("", fmt.Sprintf("pier-runc-test-%d-", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	stateDir = filepath.Join(tmp, "state")
	rootfsDir = filepath.Join(tmp, "rootfs")
	if err := buildRootfs(rootfsDir); err != nil {
		fmt.Fprintln(os.Stderr, "build test rootfs:", err)
		return 1
	}
	// A bridge and subnet of the tests' own, so a pier server on this host
	// (pier0, 100.96.0.0/16) is never touched.
	testBridge = fmt.Sprintf("pt%d", os.Getpid()%100000)
	// Other test runs (the e2e tests start pier servers with subnets of
	// their own) may hold a /24 already: take the first free one.
	subnet := freeSubnet(testBridge, "")
	if subnet == "" {
		fmt.Fprintln(os.Stderr, "no free /24 in 100.127.0.0/16 for the tests")
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	drv, err = New(Config{StateDir: stateDir, Subnet: subnet, Bridge: testBridge, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "runc driver:", err)
		return 1
	}
	code := m.Run()
	if leaks := leaks(); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, "LEAKS after the tests:\n  "+strings.Join(leaks, "\n  "))
		code = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := drv.Uninstall(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "uninstall:", err)
		code = 1
	}
	if _, err := net.InterfaceByName(testBridge); err == nil {
		fmt.Fprintln(os.Stderr, "bridge still there after Uninstall")
		code = 1
	}
	if iptables(ctx, "-n", "-L", drv.fw.inChain()) == nil {
		fmt.Fprintln(os.Stderr, "firewall chain still there after Uninstall")
		code = 1
	}
	return code
}

// freeSubnet is the first /24 of 100.127.0.0/16 that no host route (but
// the bridge's own) uses, other than not.
func freeSubnet(bridge, not string) string {
	for i := range 250 {
		cand := fmt.Sprintf("100.127.%d.0/24", (os.Getpid()+i)%250)
		if used, err := subnetInUse(netip.MustParsePrefix(cand), bridge); err == nil && used == "" && cand != not {
			return cand
		}
	}
	return ""
}

// sweepStale removes what earlier test runs that were killed (a timeout, a
// crash) left: their machines, bridge and firewall chains.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "pier-runc-test-*-*"))
	for _, dir := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(dir), "pier-runc-test-%d-", &pid); err != nil || pid <= 0 {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		var errs []error
		for _, run := range [][2]string{{"pt", "state"}, {"pu", "state2"}, {"pd", "state-dns"}, {"pr", "state-recover"}} { // the test driver, the second server's, TestDNS's, TestMachinesOutliveTheDriver's
			bridge := fmt.Sprintf("%s%d", run[0], pid%100000)
			state := filepath.Join(dir, run[1])
			d := &Driver{cfg: Config{StateDir: state, RunDir: defaultRunDir(state), Bridge: bridge, Runc: "runc"}, log: slog.New(slog.DiscardHandler),
				root: filepath.Join(state, runcRoot), live: map[string]bool{}, fw: firewall{bridge: bridge}}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err1 := d.Cleanup(ctx, nil)
			errs = append(errs, err1, d.Uninstall(ctx))
			cancel()
		}
		if err := errors.Join(errs...); err == nil {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintln(os.Stderr, "sweep", dir, err)
		}
	}
}

// leaks lists what the tests' machines left on the host.
func leaks() []string {
	var out []string
	if data, err := exec.Command("runc", "--root", drv.root, "list", "-q").Output(); err != nil || len(bytes.TrimSpace(data)) > 0 {
		out = append(out, fmt.Sprintf("runc containers: %q %v", data, err))
	}
	if m := mountsUnder(stateDir); len(m) > 0 {
		out = append(out, fmt.Sprintf("mounts: %v", m))
	}
	entries, _ := os.ReadDir(stateDir)
	for _, e := range entries {
		if e.Name() != runcRoot && e.Name() != disksDir {
			out = append(out, "layers: "+e.Name())
		}
	}
	entries, _ = os.ReadDir(drv.cfg.RunDir)
	for _, e := range entries {
		out = append(out, "bundle: "+e.Name())
	}
	for _, l := range strayVeths(testBridge, nil) {
		out = append(out, "veth: "+l.Attrs().Name)
	}
	claims, _ := os.ReadDir(idsDir)
	for _, c := range claims {
		if owner, err := os.ReadFile(filepath.Join(idsDir, c.Name())); err == nil && strings.HasPrefix(string(owner), stateDir+"/") {
			out = append(out, "host id range: "+c.Name()+" of "+string(owner))
		}
	}
	cgs, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/pier/t%d-*", os.Getpid()))
	out = append(out, cgs...)
	// Machine monitors of every test driver's machines (all have ids
	// t<pid>-N, so their bundles end so).
	procs, _ := os.ReadDir("/proc")
	mark := []byte(fmt.Sprintf("/t%d-", os.Getpid()))
	for _, p := range procs {
		env, err := os.ReadFile(filepath.Join("/proc", p.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("PIER_MACHINE_SHIM=")); ok && bytes.Contains(v, mark) {
				out = append(out, "machine monitor: pid "+p.Name()+" for "+string(v))
			}
		}
	}
	return out
}

func buildRootfs(dir string) error {
	for _, d := range []string{"bin", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "bin", "machine"), "./testdata/machine")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	if data, err := os.ReadFile("/bin/busybox"); err == nil && isStatic("/bin/busybox") {
		if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
			return err
		}
		hasBusybox = true
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", "sh")); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etc", "group"), []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644)
}

// isStatic says whether an executable needs no dynamic loader (a
// busybox from the "busybox" package does; "busybox-static"'s does not).
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// need skips (or, in CI, fails) a test that cannot run here.
func need(t testing.TB) {
	t.Helper()
	if skipReason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("runc tests cannot run in CI: %s", skipReason)
	}
	t.Skip(skipReason)
}

func needBusybox(t *testing.T) {
	t.Helper()
	if hasBusybox {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no /bin/busybox: apt-get install busybox-static (scripts/deps.sh does)")
	}
	t.Skip("no /bin/busybox")
}

func newID() string { return fmt.Sprintf("t%d-%d", os.Getpid(), idSeq.Add(1)) }

// lines collects a machine's output.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type machineT struct {
	runtime.Process
	id     string
	stdout *lines
}

// start starts a machine running the test server and waits until it serves;
// the machine is killed and waited for at the end of the test.
func start(t testing.TB, edit func(*runtime.Spec)) *machineT {
	t.Helper()
	return startOn(t, drv, edit)
}

// startOn is start on the given driver.
func startOn(t testing.TB, d *Driver, edit func(*runtime.Spec)) *machineT {
	t.Helper()
	need(t)
	out := &lines{}
	spec := runtime.Spec{ID: newID(), App: "test", Command: []string{"/bin/machine"}, Env: []string{"GREETING=hello"},
		Stdout: out, Stderr: out, Rootfs: []string{rootfsDir}}
	if edit != nil {
		edit(&spec)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	m := &machineT{Process: p, id: spec.ID, stdout: out}
	t.Cleanup(func() { stop(t, m) })
	waitServing(t, m)
	return m
}

func stop(t testing.TB, m *machineT) runtime.Exit {
	t.Helper()
	m.Signal(syscall.SIGKILL)
	return waitExit(t, m, 30*time.Second)
}

func waitExit(t testing.TB, m *machineT, d time.Duration) runtime.Exit {
	t.Helper()
	done := make(chan runtime.Exit, 1)
	go func() { done <- m.Wait() }()
	select {
	case e := <-done:
		return e
	case <-time.After(d):
		t.Fatalf("machine %s did not exit within %v", m.id, d)
		return runtime.Exit{}
	}
}

var client = &http.Client{Timeout: 10 * time.Second}

func waitServing(t testing.TB, m *machineT) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get("http://" + m.Addr() + "/ok")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s not serving at %s: %v; output:\n%s", m.id, m.Addr(), err, m.stdout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// get calls an endpoint of the test server and returns status and body.
func get(t testing.TB, m *machineT, path string, q url.Values) (int, string) {
	t.Helper()
	resp, err := client.Get("http://" + m.Addr() + path + "?" + q.Encode())
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, m.id, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServesHTTP(t *testing.T) {
	m := start(t, func(s *runtime.Spec) { s.Port = 9090 })
	if !strings.HasSuffix(m.Addr(), ":9090") {
		t.Errorf("Addr = %s, want port 9090", m.Addr())
	}
	_, env := get(t, m, "/env", nil)
	for _, want := range []string{"PORT=9090", "PIER_MACHINE_ID=" + m.id, "GREETING=hello", "PATH="} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %s:\n%s", want, env)
		}
	}
	if _, h := get(t, m, "/hostname", nil); h != m.id {
		t.Errorf("hostname = %q, want %q", h, m.id)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.PID()))
	// PID is the machine's pid 1: the init, which runs the command.
	if err != nil || !strings.HasPrefix(string(cmdline), "/.pier/init\x00-g\x00--\x00/bin/machine") {
		t.Errorf("PID %d is not the machine's init on the host: %q %v", m.PID(), cmdline, err)
	}
	if out := m.stdout.String(); !strings.Contains(out, "machine starting "+m.id) || !strings.Contains(out, "to stderr") {
		t.Errorf("output = %q", out)
	}
	if _, hosts := get(t, m, "/read", url.Values{"path": {"/etc/hosts"}}); !strings.Contains(hosts, m.id) {
		t.Errorf("/etc/hosts = %q", hosts)
	}
	if code, _ := get(t, m, "/read", url.Values{"path": {"/etc/resolv.conf"}}); code != 200 {
		t.Errorf("no /etc/resolv.conf")
	}
}

func TestDefaultPort(t *testing.T) {
	m := start(t, nil)
	if !strings.HasSuffix(m.Addr(), ":8080") {
		t.Errorf("Addr = %s, want port 8080", m.Addr())
	}
}

func TestHostIsInvisible(t *testing.T) {
	m := start(t, nil)
	hostHostname, _ := os.ReadFile("/etc/hostname")
	if code, body := get(t, m, "/read", url.Values{"path": {"/etc/hostname"}}); code != 200 || body != m.id+"\n" ||
		(len(hostHostname) > 0 && body == string(hostHostname)) {
		t.Errorf("/etc/hostname in the machine = %d %q (host's is %q)", code, body, hostHostname)
	}
	marker := filepath.Join(stateDir, "..", "host-secret")
	os.WriteFile(marker, []byte("secret"), 0o600)
	defer os.Remove(marker)
	for _, p := range []string{stateDir, filepath.Dir(stateDir), rootfsDir, "/work", "/root"} {
		if code, body := get(t, m, "/ls", url.Values{"path": {p}}); code == 200 && body != "" {
			t.Errorf("host directory %s visible in the machine: %q", p, body)
		}
	}
	if code, body := get(t, m, "/read", url.Values{"path": {marker}}); code == 200 {
		t.Errorf("host file visible: %q", body)
	}
	_, procs := get(t, m, "/procs", nil)
	ps := strings.Split(strings.TrimSpace(procs), "\n")
	if len(ps) < 2 || !strings.HasPrefix(ps[0], "1 /.pier/init -g -- /bin/machine") || !strings.Contains(ps[1], " /bin/machine") {
		t.Errorf("pid 1 is not the machine's init running the machine: %q", procs)
	}
	for _, p := range ps {
		if !strings.Contains(p, "/bin/machine") {
			t.Errorf("a process that is not the machine's is visible: %q", p)
		}
	}
	if len(ps) > 3 {
		t.Errorf("machine sees %d processes: %q", len(ps), procs)
	}
	// runc's masked and read-only paths.
	for _, p := range []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"} {
		if code, body := get(t, m, "/read", url.Values{"path": {p}}); code == 200 && body != "" {
			t.Errorf("%s not masked: %d bytes", p, len(body))
		}
	}
	for _, p := range []string{"/proc/sys/vm/drop_caches", "/proc/sysrq-trigger", "/sys/kernel/uevent_helper"} {
		if code, _ := get(t, m, "/write", url.Values{"path": {p}, "data": {"1"}}); code == 200 {
			t.Errorf("machine could write %s", p)
		}
	}
	// No IPv6 anywhere: a link-local address would be a way around the
	// IPv4 firewall.
	if _, v6 := get(t, m, "/read", url.Values{"path": {"/proc/net/if_inet6"}}); strings.TrimSpace(v6) != "" && !strings.Contains(v6, "no such file") {
		t.Errorf("machine has IPv6 addresses: %q", v6)
	}
}

func TestNetworkIsolation(t *testing.T) {
	m := start(t, nil)
	other := start(t, nil)

	// Host listeners on loopback and on every address (the gateway
	// included); neither may see a connection from the machine.
	var accepted atomic.Int32
	lo := hostListener(t, "127.0.0.1:0", &accepted)
	all := hostListener(t, "0.0.0.0:0", &accepted)
	// The host itself can reach the machine (that is how the edge proxy
	// works), which also proves the listeners and the bridge work.
	if _, body := get(t, m, "/ok", nil); body != "ok" {
		t.Fatalf("host cannot reach machine: %q", body)
	}
	gw := drv.Gateway().String()
	// Refused at once (ICMP admin-prohibited reaches the machine), not
	// left to time out.
	if _, body := get(t, m, "/dial", url.Values{"addr": {net.JoinHostPort(gw, fmt.Sprint(all.Port))}}); !strings.Contains(body, "no route to host") {
		t.Errorf("dial to the gateway: %q, want it refused at once", body)
	}
	for _, target := range []string{
		fmt.Sprintf("127.0.0.1:%d", lo.Port),
		fmt.Sprintf("127.0.0.1:%d", all.Port),
		net.JoinHostPort(gw, fmt.Sprint(all.Port)),
		other.Addr(),
	} {
		if _, body := get(t, m, "/dial", url.Values{"addr": {target}}); !strings.HasPrefix(body, "error:") {
			t.Errorf("machine reached %s: %q", target, body)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("host listeners accepted %d connections from the machine", n)
	}
	// And it was the firewall that turned the gateway dial away.
	out, _ := exec.Command("iptables", "-n", "-v", "-x", "-L", drv.fw.inChain()).Output()
	var rejected int
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "REJECT" {
			fmt.Sscan(f[0], &rejected)
		}
	}
	if rejected == 0 {
		t.Errorf("no packet hit the INPUT reject rule:\n%s", out)
	}
	// Sanity check of the probe: a machine reaches itself.
	if _, body := get(t, m, "/dial", url.Values{"addr": {"127.0.0.1:8080"}}); body != "connected" {
		t.Errorf("machine cannot reach its own port: %q", body)
	}
}

func TestOutboundPolicy(t *testing.T) {
	open := start(t, nil)
	closed := start(t, func(s *runtime.Spec) { s.DenyOutbound = true })
	ip := func(m *machineT) net.IP {
		h, _, _ := net.SplitHostPort(m.Addr())
		return net.ParseIP(h)
	}
	_, allowNet, _ := net.ParseCIDR(drv.fw.allow)
	_, denyNet, _ := net.ParseCIDR(drv.fw.deny)
	if !allowNet.Contains(ip(open)) {
		t.Errorf("machine with outbound %s not in %s", ip(open), allowNet)
	}
	if !denyNet.Contains(ip(closed)) {
		t.Errorf("machine without outbound %s not in %s", ip(closed), denyNet)
	}
	// "The internet" is a network namespace of the test's own behind a veth
	// on the host: traffic to it is forwarded and masqueraded like traffic
	// to the outside world, and never leaves this host.
	target, peers := outsideNet(t)
	if _, body := get(t, open, "/dial", url.Values{"addr": {target}}); body != "connected" {
		t.Errorf("machine with outbound cannot reach %s: %q", target, body)
	}
	if _, body := get(t, closed, "/dial", url.Values{"addr": {target}}); body == "connected" {
		t.Errorf("machine with DenyOutbound reached %s", target)
	}
	hostSide, _, _ := net.SplitHostPort(target)
	hostSide = strings.TrimSuffix(hostSide, ".2") + ".1"
	if got := peers(); len(got) != 1 || got[0] != hostSide {
		t.Errorf("outside saw connections from %v, want one from %s (masqueraded)", got, hostSide)
	}
	// The rules themselves.
	ctx := context.Background()
	for _, rule := range [][]string{
		{"-t", "filter", "-C", drv.fw.fwdChain(), "-i", testBridge, "-s", drv.fw.deny, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"},
		{"-t", "filter", "-C", drv.fw.fwdChain(), "-i", testBridge, "-s", drv.fw.allow, "-j", "ACCEPT"},
		{"-t", "nat", "-C", drv.fw.natChain(), "-s", drv.fw.subnet, "!", "-o", testBridge, "-j", "MASQUERADE"},
		{"-t", "filter", "-C", "FORWARD", "-i", testBridge, "-j", drv.fw.fwdChain()},
		{"-t", "filter", "-C", "INPUT", "-i", testBridge, "-j", drv.fw.inChain()},
		{"-t", "nat", "-C", "POSTROUTING", "-j", drv.fw.natChain()},
	} {
		if err := iptables(ctx, rule...); err != nil {
			t.Error(err)
		}
	}
	if v, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(v)) != "1" {
		t.Errorf("ip_forward = %q", v)
	}
	// The deny rule comes before the accept rule.
	out, _ := exec.Command("iptables", "-S", drv.fw.fwdChain()).Output()
	if d, a := strings.Index(string(out), drv.fw.deny), strings.Index(string(out), "-s "+drv.fw.allow); d < 0 || a < 0 || d > a {
		t.Errorf("rule order:\n%s", out)
	}
}

// treeSum fingerprints a directory tree: names, modes, sizes, contents.
func treeSum(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v %d %v\n", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			h.Write(data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestWritesStayInTheirMachine(t *testing.T) {
	need(t)
	before := treeSum(t, rootfsDir)
	a := start(t, func(s *runtime.Spec) {
		s.Files = []runtime.File{{Path: "/etc/app.conf", Data: []byte("a"), Mode: 0o600}, {Path: "/tmp/deep/dir/f", Data: []byte("x")}}
	})
	b := start(t, func(s *runtime.Spec) { s.Files = []runtime.File{{Path: "/etc/app.conf", Data: []byte("b")}} })
	for _, m := range []struct {
		m    *machineT
		want string
	}{{a, "a"}, {b, "b"}} {
		if _, body := get(t, m.m, "/read", url.Values{"path": {"/etc/app.conf"}}); body != m.want {
			t.Errorf("%s /etc/app.conf = %q, want %q", m.m.id, body, m.want)
		}
	}
	for _, p := range []string{"/tmp/written", "/bin/written", "/etc/passwd"} {
		if code, body := get(t, a, "/write", url.Values{"path": {p}, "data": {"from a"}}); code != 200 {
			t.Fatalf("write %s in a: %d %s", p, code, body)
		}
		if _, body := get(t, a, "/read", url.Values{"path": {p}}); body != "from a" {
			t.Errorf("a reads back %s = %q", p, body)
		}
		if _, body := get(t, b, "/read", url.Values{"path": {p}}); body == "from a" {
			t.Errorf("b sees a's write to %s", p)
		}
	}
	if hasBusybox {
		// The directory made for /tmp/deep keeps the image's /tmp mode.
		res, err := a.Process.(runtime.Execer).Exec(context.Background(), []string{"busybox", "stat", "-c", "%A", "/tmp"}, nil)
		if err != nil || strings.TrimSpace(res.Stdout) != "drwxrwxrwt" {
			t.Errorf("/tmp mode in machine = %q %v", res.Stdout, err)
		}
	}
	stop(t, a)
	stop(t, b)
	if after := treeSum(t, rootfsDir); after != before {
		t.Errorf("the shared rootfs changed on the host")
	}
}

func TestOOMKilled(t *testing.T) {
	bystander := start(t, func(s *runtime.Spec) { s.Resources.MemoryMB = 64 })
	m := start(t, func(s *runtime.Spec) { s.Resources.MemoryMB = 32 })
	resp, err := client.Get("http://" + m.Addr() + "/alloc?mb=64")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("alloc answered: %s", body)
	}
	exit := waitExit(t, m, 30*time.Second)
	if !exit.OOMKilled {
		t.Errorf("exit = %+v, want OOMKilled", exit)
	}
	if _, body := get(t, bystander, "/ok", nil); body != "ok" {
		t.Errorf("bystander: %q", body)
	}
	// A machine that stays within its limit is not reported as OOM-killed.
	if _, body := get(t, bystander, "/alloc", url.Values{"mb": {"8"}}); !strings.HasPrefix(body, "allocated") {
		t.Errorf("bystander alloc: %q", body)
	}
	if exit := stop(t, bystander); exit.OOMKilled || exit.Signal != "killed" {
		t.Errorf("bystander exit = %+v", exit)
	}
}

func TestForkBombIsContained(t *testing.T) {
	m := start(t, func(s *runtime.Spec) { s.Resources.Pids = 32 })
	t0 := time.Now()
	resp, err := client.Get("http://" + m.Addr() + "/forkbomb")
	if err != nil {
		// The Go runtime of the machine may itself die when it cannot make
		// a thread: the machine is then gone, which contains it too.
		exit := waitExit(t, m, 15*time.Second)
		t.Logf("fork bomb killed the machine (%v): %v", err, exit)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("fork bomb: %s in %v", body, time.Since(t0))
		var n int
		if _, err := fmt.Sscanf(string(body), "started %d", &n); err != nil || n >= 32 {
			t.Errorf("fork bomb got %q, want fewer than 32 children", body)
		}
		if _, body := get(t, m, "/ok", nil); body != "ok" {
			t.Errorf("machine after fork bomb: %q", body)
		}
	}
	if d := time.Since(t0); d > 20*time.Second {
		t.Errorf("fork bomb took %v", d)
	}
	if err := exec.Command("true").Run(); err != nil {
		t.Errorf("host cannot fork: %v", err)
	}
}

func TestExec(t *testing.T) {
	needBusybox(t)
	m := start(t, nil)
	ex := m.Process.(runtime.Execer)
	ctx := context.Background()
	res, err := ex.Exec(ctx, []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, nil)
	if err != nil || res.ExitCode != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" {
		t.Errorf("Exec = %+v, %v", res, err)
	}
	res, err = ex.Exec(ctx, []string{"busybox", "cat"}, []byte("from stdin"))
	if err != nil || res.ExitCode != 0 || res.Stdout != "from stdin" {
		t.Errorf("Exec cat = %+v, %v", res, err)
	}
	res, err = ex.Exec(ctx, []string{"busybox", "env"}, nil)
	if err != nil || !strings.Contains(res.Stdout, "PIER_MACHINE_ID="+m.id) || !strings.Contains(res.Stdout, "PORT=8080") {
		t.Errorf("Exec env = %+v, %v", res, err)
	}
	// Hardening: no user namespaces, no raw sockets, no host devices.
	res, _ = ex.Exec(ctx, []string{"busybox", "unshare", "-U", "true"}, nil)
	if res.ExitCode == 0 {
		t.Errorf("unshare -U worked in a machine: %+v", res)
	}
	res, _ = ex.Exec(ctx, []string{"sh", "-c", "grep CapEff /proc/self/status"}, nil)
	if !strings.Contains(res.Stdout, "CapEff:\t00000000a80405fb") {
		t.Errorf("capabilities: %q", res.Stdout)
	}
	res, _ = ex.Exec(ctx, []string{"busybox", "ls", "/dev"}, nil)
	for _, dev := range strings.Fields(res.Stdout) {
		switch dev {
		case "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "fd", "stdin", "stdout", "stderr", "console", "core":
		default:
			t.Errorf("unexpected /dev/%s", dev)
		}
	}
	// A command that outlives its context is killed.
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = ex.Exec(cctx, []string{"busybox", "sleep", "60"}, nil)
	if err == nil || time.Since(t0) > 10*time.Second {
		t.Errorf("Exec past its context: err %v after %v", err, time.Since(t0))
	}
	res, _ = ex.Exec(ctx, []string{"busybox", "pidof", "sleep"}, nil)
	if strings.TrimSpace(res.Stdout) != "" {
		t.Errorf("sleep still runs after its Exec was cancelled: %q", res.Stdout)
	}
}

func TestUser(t *testing.T) {
	needBusybox(t)
	m := start(t, func(s *runtime.Spec) { s.User = "nobody"; s.WorkDir = "/tmp" })
	res, err := m.Process.(runtime.Execer).Exec(context.Background(), []string{"sh", "-c", "id -u; id -g; pwd; grep CapEff /proc/self/status"}, nil)
	if err != nil || res.Stdout != "65534\n65534\n/tmp\nCapEff:\t0000000000000000\n" {
		t.Errorf("Exec as nobody = %+v %v", res, err)
	}
}

func TestSignal(t *testing.T) {
	m := start(t, nil)
	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Go as pid 1 of a pid namespace cannot die of a signal it does not
	// handle (the kernel ignores it for init), so the Go runtime exits 2:
	// either way the machine stops.
	if exit := waitExit(t, m, 15*time.Second); (exit.Signal != "terminated" && exit.Code != 2) || exit.OOMKilled {
		t.Errorf("after SIGTERM: %+v", exit)
	}
	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("Signal after exit: %v", err)
	}

	stubborn := start(t, func(s *runtime.Spec) { s.Env = append(s.Env, "IGNORE_TERM=1") })
	if err := stubborn.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, body := get(t, stubborn, "/ok", nil); body != "ok" {
		t.Errorf("machine ignoring SIGTERM stopped serving: %q", body)
	}
	if err := stubborn.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if exit := waitExit(t, stubborn, 15*time.Second); exit.Signal != "killed" {
		t.Errorf("after SIGKILL: %+v", exit)
	}
}

func TestExitCode(t *testing.T) {
	m := start(t, nil)
	client.Get("http://" + m.Addr() + "/exit?code=3")
	if exit := waitExit(t, m, 15*time.Second); exit.Code != 3 || exit.Signal != "" || exit.OOMKilled {
		t.Errorf("exit = %+v, want code 3", exit)
	}
}

func TestStartErrors(t *testing.T) {
	need(t)
	ctx := context.Background()
	for name, spec := range map[string]runtime.Spec{
		"no rootfs":  {ID: newID(), Command: []string{"/bin/machine"}},
		"bad id":     {ID: "../x", Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}},
		"no command": {ID: newID(), Rootfs: []string{rootfsDir}},
		"bad user":   {ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}, User: "nosuchuser"},
		"bad layer":  {ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{"/nonexistent"}},
	} {
		t.Run(name, func(t *testing.T) {
			if p, err := drv.Start(ctx, spec); err == nil {
				p.Signal(syscall.SIGKILL)
				p.Wait()
				t.Fatal("Start succeeded")
			}
		})
	}
	// A command that does not exist: runc fails after the machine was set
	// up; either Start or the machine reports it, and nothing is left.
	p, err := drv.Start(ctx, runtime.Spec{ID: newID(), Command: []string{"/nonexistent"}, Rootfs: []string{rootfsDir}})
	if err == nil {
		m := &machineT{Process: p, id: "nonexistent"}
		if exit := waitExit(t, m, 15*time.Second); exit.Code == 0 {
			t.Errorf("exit = %+v", exit)
		}
	} else if !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("error does not name the command: %v", err)
	}
}

func TestCleanup(t *testing.T) {
	need(t)
	ctx := context.Background()
	m := start(t, nil)
	// The live driver leaves its own machines alone.
	if n, err := drv.Cleanup(ctx, []string{m.id, "unknown"}); err != nil || n != 0 {
		t.Errorf("Cleanup on live machines = %d, %v", n, err)
	}
	if _, body := get(t, m, "/ok", nil); body != "ok" {
		t.Fatalf("machine gone after Cleanup of a live driver: %q", body)
	}
	// A new Driver on the same state dir, as after a server crash, sees
	// the machine as left over.
	next, err := New(drv.cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := next.Cleanup(ctx, []string{m.id})
	if err != nil || n != 1 {
		t.Errorf("Cleanup after restart = %d, %v", n, err)
	}
	waitExit(t, m, 15*time.Second)
	if l := leaks(); len(l) > 0 {
		t.Errorf("after Cleanup: %v", l)
	}
}

func TestConcurrentStarts(t *testing.T) {
	need(t)
	ps := make([]runtime.Process, 6)
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i := range ps {
		wg.Go(func() {
			ps[i], errs[i] = drv.Start(context.Background(), runtime.Spec{ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}})
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, p := range ps {
		if errs[i] != nil {
			t.Errorf("Start: %v", errs[i])
			continue
		}
		m := &machineT{Process: p, id: fmt.Sprint(i), stdout: &lines{}}
		t.Cleanup(func() { stop(t, m) })
		waitServing(t, m)
		if seen[m.Addr()] {
			t.Errorf("address %s given twice", m.Addr())
		}
		seen[m.Addr()] = true
	}
}

// outsideNet makes a network namespace standing in for the internet, linked
// to the host by a veth pair on a /30 of its own, with a TCP listener in
// it. It returns the listener's address and a function listing the source
// addresses of the connections it accepted.
func outsideNet(t *testing.T) (string, func() []string) {
	t.Helper()
	n := os.Getpid() % 250
	for i := range 250 {
		if used, err := subnetInUse(netip.MustParsePrefix(fmt.Sprintf("100.126.%d.0/30", (n+i)%250)), testBridge); err == nil && used == "" {
			n = (n + i) % 250
			break
		}
	}
	hostIP, nsIP := fmt.Sprintf("100.126.%d.1", n), fmt.Sprintf("100.126.%d.2", n)
	veth := fmt.Sprintf("pto%d", os.Getpid()%100000)
	type result struct {
		l   net.Listener
		err error
	}
	res := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			res <- result{err: err}
			return // the thread dies with the goroutine: it may be in no known state
		}
		defer host.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- result{err: err}
			return
		}
		l, err := func() (net.Listener, error) {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return nil, err
			}
			if err := netlink.LinkSetUp(lo); err != nil {
				return nil, err
			}
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: veth, PeerNamespace: netlink.NsFd(int(host.Fd()))}); err != nil {
				return nil, err
			}
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return nil, err
			}
			a, _ := netlink.ParseAddr(nsIP + "/30")
			if err := netlink.AddrAdd(eth, a); err != nil {
				return nil, err
			}
			if err := netlink.LinkSetUp(eth); err != nil {
				return nil, err
			}
			return net.Listen("tcp", nsIP+":9")
		}()
		if err := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); err == nil {
			goruntime.UnlockOSThread()
		}
		res <- result{l, err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatalf("outside netns: %v", r.err)
	}
	t.Cleanup(func() {
		r.l.Close()
		if l, err := netlink.LinkByName(veth); err == nil {
			netlink.LinkDel(l)
		}
	})
	link, err := netlink.LinkByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(hostIP + "/30")
	if err := netlink.AddrAdd(link, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var peers []string
	go func() {
		for {
			c, err := r.l.Accept()
			if err != nil {
				return
			}
			h, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			mu.Lock()
			peers = append(peers, h)
			mu.Unlock()
			c.Close()
		}
	}()
	return nsIP + ":9", func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), peers...)
	}
}

func TestSubnetInUse(t *testing.T) {
	need(t)
	// The tests' subnet is routed through their bridge: a second driver
	// on another bridge must not take it.
	_, err := New(Config{StateDir: t.TempDir(), Subnet: drv.fw.subnet, Bridge: "ptclash"})
	if err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("New on a subnet in use: %v", err)
	}
	if _, err := net.InterfaceByName("ptclash"); err == nil {
		t.Error("bridge created anyway")
	}
}

// TestEnvironmentStaysOffDisk: a machine's environment (its secrets) is in
// its runc bundle, which lives on a tmpfs; nothing under the state dir
// holds it while the machine runs.
func TestEnvironmentStaysOffDisk(t *testing.T) {
	need(t)
	const secret = "s3cret-value-that-must-not-touch-disk"
	m := start(t, func(s *runtime.Spec) { s.Env = append(s.Env, "API_KEY="+secret) })
	if !onTmpfs(drv.cfg.RunDir) {
		t.Fatalf("bundles in %s, not on a tmpfs", drv.cfg.RunDir)
	}
	cfg, err := os.ReadFile(filepath.Join(drv.bundle(m.id), "config.json"))
	if err != nil || !bytes.Contains(cfg, []byte(secret)) {
		t.Fatalf("bundle config.json on the tmpfs lacks the environment: %v", err)
	}
	err = filepath.WalkDir(stateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || strings.Contains(path, "/rootfs/") {
			return nil // rootfs/ is the machine's overlay mount, not the disk layout
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the machine's environment", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stop(t, m)
	if exists(drv.bundle(m.id)) {
		t.Errorf("bundle %s outlives its machine", drv.bundle(m.id))
	}
}

// TestStaleHostRulesAreRemoved: a host-port rule left for a machine that is
// gone (its server crashed, or an older pier did not remove it) names an
// address that a new machine can be given, which would then inherit the
// old machine's reach to a host port. Teardown of a machine removes its
// rules even when this run did not make them, and ReconcileFirewall
// removes the rules of machines that are not running.
func TestStaleHostRulesAreRemoved(t *testing.T) {
	m := start(t, nil)
	port := hostListener(t, "0.0.0.0:0", new(atomic.Int32)).Port
	gw := drv.Gateway().String()
	target := net.JoinHostPort(gw, fmt.Sprint(port))
	addr, _, _ := net.SplitHostPort(m.Addr())
	ctx := t.Context()

	// The rule a gone machine left, naming the address m now has.
	if err := drv.fw.allowHost(ctx, "gone-"+m.id, addr, gw, []int{port}); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, m, "/dial", url.Values{"addr": {target}}); body != "connected" {
		t.Fatalf("the planted rule does not work (%q): the test proves nothing", body)
	}
	n, err := drv.ReconcileFirewall(ctx)
	if err != nil || n != 1 {
		t.Fatalf("ReconcileFirewall = %d, %v; want the 1 stale rule removed", n, err)
	}
	if _, body := get(t, m, "/dial", url.Values{"addr": {target}}); !strings.HasPrefix(body, "error:") {
		t.Errorf("machine still reaches host port %d after the reconcile: %q", port, body)
	}

	// A live machine's own rules stay.
	other := start(t, func(s *runtime.Spec) { s.HostPorts = []int{port} })
	if n, err := drv.ReconcileFirewall(ctx); err != nil || n != 0 {
		t.Fatalf("ReconcileFirewall removed %d rules of a live machine (%v)", n, err)
	}
	if _, body := get(t, other, "/dial", url.Values{"addr": {target}}); body != "connected" {
		t.Errorf("machine with host port %d cannot reach it: %q", port, body)
	}
	// Rules this run did not make (a previous run's) go at teardown too.
	oaddr, _, _ := net.SplitHostPort(other.Addr())
	if err := drv.fw.allowHost(ctx, other.id, oaddr, gw, []int{port + 1}); err != nil {
		t.Fatal(err)
	}
	stop(t, other)
	ids, err := drv.fw.hostRuleIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ids[other.id] != 0 {
		t.Errorf("%d host-port rules outlived machine %s", ids[other.id], other.id)
	}
}

// TestRootfsMountedNosuidNodev: the host sees a machine's root at its
// overlay mount; a set-id binary or device node in an image must do
// nothing there.
func TestRootfsMountedNosuidNodev(t *testing.T) {
	m := start(t, nil)
	target := filepath.Join(drv.roots(m.id), "rootfs")
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[4] != target {
			continue
		}
		found = true
		opts := "," + f[5] + ","
		for _, want := range []string{",nosuid,", ",nodev,"} {
			if !strings.Contains(opts, want) {
				t.Errorf("%s mounted %s, without %s", target, f[5], strings.Trim(want, ","))
			}
		}
	}
	if !found {
		t.Fatalf("no mount at %s", target)
	}
}

// hostListener listens on addr of the host until the test ends, closing
// every connection it accepts and counting it in accepted.
func hostListener(t *testing.T, addr string, accepted *atomic.Int32) *net.TCPAddr {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr)
}

// A second pier server on the same host (a driver with a bridge and subnet
// of its own) must not let its machines reach this server's, nor this
// server's reach its own, whichever of the two installed its firewall last;
// and each server's machines keep their way out.
func TestSecondServerCannotReachMachines(t *testing.T) {
	need(t)
	subnet := freeSubnet(testBridge, drv.fw.subnet)
	if subnet == "" {
		t.Fatal("no free /24 for a second driver")
	}
	state := filepath.Join(filepath.Dir(stateDir), "state2")
	other, err := New(Config{StateDir: state, Subnet: subnet, Bridge: fmt.Sprintf("pu%d", os.Getpid()%100000)})
	if err != nil {
		t.Fatalf("second driver: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := other.Uninstall(ctx); err != nil {
			t.Errorf("uninstall second driver: %v", err)
		}
		os.RemoveAll(state)
	})
	mine := start(t, nil)
	theirs := startOn(t, other, nil)
	outside, peers := outsideNet(t)

	check := func(order string) {
		t.Helper()
		for _, c := range []struct {
			from, to *machineT
		}{{theirs, mine}, {mine, theirs}} {
			if _, body := get(t, c.from, "/dial", url.Values{"addr": {c.to.Addr()}}); !strings.HasPrefix(body, "error:") {
				t.Errorf("%s: machine %s reached %s on the other server's bridge: %q", order, c.from.Addr(), c.to.Addr(), body)
			}
		}
		for _, m := range []*machineT{mine, theirs} {
			if _, body := get(t, m, "/dial", url.Values{"addr": {outside}}); body != "connected" {
				t.Errorf("%s: machine %s cannot reach the outside any more: %q", order, m.Addr(), body)
			}
		}
	}
	check("second server installed last")

	// Now this server's firewall is the newer one (as after a restart of
	// it while the other runs).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := drv.fw.remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := drv.fw.install(ctx); err != nil {
		t.Fatal(err)
	}
	check("first server installed last")
	if got := len(peers()); got != 4 {
		t.Errorf("outside accepted %d connections, want the 4 checks", got)
	}
	// Installing again changes nothing (the server does it at every start).
	before, _ := exec.Command("iptables", "-S", "FORWARD").Output()
	if err := drv.fw.install(ctx); err != nil {
		t.Fatal(err)
	}
	if after, _ := exec.Command("iptables", "-S", "FORWARD").Output(); !bytes.Equal(before, after) {
		t.Errorf("a second install moved rules:\n%s\nthen:\n%s", before, after)
	}
}

// Other local users reach no machine: only root's connections (the edge,
// the mesh) and replies to machines' own connections pass to the bridge.
func TestLocalUsersCannotReachMachines(t *testing.T) {
	m := start(t, nil)
	host, port, _ := net.SplitHostPort(m.Addr())
	dial := func(uid uint32) error { return asHostUser(uid, fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", host, port)) }
	if err := dial(65534); err == nil {
		t.Errorf("a host process as nobody connected to machine %s", m.Addr())
	}
	if err := dial(0); err != nil {
		t.Errorf("root cannot connect to the machine (the probe is broken): %v", err)
	}
}

// hostIDs reads the real uid and gid of a host process.
func hostIDs(t *testing.T, pid int) (uid, gid uint32) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] == "Uid:" {
			fmt.Sscan(f[1], &uid)
		}
		if len(f) > 1 && f[0] == "Gid:" {
			fmt.Sscan(f[1], &gid)
		}
	}
	return uid, gid
}

// asHostUser runs a bash command on the host as uid:uid.
func asHostUser(uid uint32, script string) error {
	cmd := exec.Command("/bin/bash", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Machines share no host id with host users or with each other: a host
// process running as nobody cannot read the environment of a machine
// running as nobody, nor write into its filesystem through /proc; root in
// a machine is not root on the host.
func TestMachinesShareNoHostIDs(t *testing.T) {
	secret := "SECRET=s3cr3t-of-the-machine"
	asNobody := start(t, func(s *runtime.Spec) { s.User = "65534:65534"; s.Env = append(s.Env, secret) })
	asRoot := start(t, nil)
	uid, gid := hostIDs(t, asNobody.PID())
	if uid == 65534 || gid == 65534 || uid < idBase {
		t.Errorf("a machine's nobody runs as host %d:%d: shared with the host's nobody", uid, gid)
	}
	rootUID, _ := hostIDs(t, asRoot.PID())
	if rootUID == 0 || rootUID < idBase {
		t.Errorf("a machine's root runs as host uid %d", rootUID)
	}
	if rootUID/idSize == uid/idSize {
		t.Errorf("two machines share the host id range of %d", rootUID)
	}
	// ping works for any user: the machine's group ids are in the
	// netns's ping_group_range.
	if _, body := get(t, asNobody, "/pingsocket", nil); body != "ok" {
		t.Errorf("ICMP echo socket as nobody: %q", body)
	}
	// setgroups works in the namespace (apt, nginx and su need it).
	if _, body := get(t, asRoot, "/setgroups", nil); body != "ok" {
		t.Errorf("setgroups in a machine: %q", body)
	}
	// Inside, the ids are the ones asked for.
	if _, status := get(t, asNobody, "/read", url.Values{"path": {"/proc/self/status"}}); !strings.Contains(status, "Uid:\t65534\t") {
		t.Errorf("machine's own view of its uid:\n%s", status)
	}

	environ := fmt.Sprintf("/proc/%d/environ", asNobody.PID())
	if err := asHostUser(65534, "cat "+environ); err == nil {
		t.Errorf("a host process as nobody read %s", environ)
	}
	planted := fmt.Sprintf("/proc/%d/root/tmp/planted", asNobody.PID())
	if err := asHostUser(65534, "echo x > "+planted); err == nil {
		t.Errorf("a host process as nobody wrote %s", planted)
	}
	if code, _ := get(t, asNobody, "/read", url.Values{"path": {"/tmp/planted"}}); code == 200 {
		t.Error("the planted file is in the machine")
	}
	// The probes work: root on the host does both.
	if data, err := os.ReadFile(environ); err != nil || !strings.Contains(string(data), secret) {
		t.Fatalf("host root cannot read %s (the probe is broken): %v", environ, err)
	}
}

// A kept upper layer holds the ids the machine saw, not the host ids it
// ran under, so a Dockerfile RUN step's layer has the owners it made.
func TestKeptUpperKeepsMachineIDs(t *testing.T) {
	upper := filepath.Join(t.TempDir(), "layer")
	if err := os.Mkdir(upper, 0o700); err != nil {
		t.Fatal(err)
	}
	m := start(t, func(s *runtime.Spec) { s.Upper = upper; s.User = "1000:1000" })
	if code, body := get(t, m, "/write", url.Values{"path": {"/tmp/made"}, "data": {"x"}}); code != 200 {
		t.Fatalf("write: %d %s", code, body)
	}
	stop(t, m)
	fi, err := os.Lstat(filepath.Join(upper, "tmp", "made"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("/tmp/made in the kept layer is owned by %d:%d, want 1000:1000", st.Uid, st.Gid)
	}
	fi, err = os.Lstat(filepath.Join(upper, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
		t.Errorf("/tmp in the kept layer is owned by %d, want 0 as in the image", st.Uid)
	}
}

// A machine fills its own disk and nothing else: writes past its size fail
// inside it, the host's free space is untouched beyond that size, and the
// next machine starts with an empty disk.
func TestDiskQuota(t *testing.T) {
	var before unix.Statfs_t
	if err := unix.Statfs(stateDir, &before); err != nil {
		t.Fatal(err)
	}
	m := start(t, func(s *runtime.Spec) { s.Resources.DiskMB = 64 })
	_, body := get(t, m, "/fill", url.Values{"path": {"/tmp/big"}, "mb": {"256"}})
	var wrote int
	fmt.Sscanf(body, "wrote %d MB", &wrote)
	if wrote >= 64 || !strings.Contains(body, "no space left on device") {
		t.Errorf("a machine with a 64 MB disk: %q", body)
	}
	var after unix.Statfs_t
	if err := unix.Statfs(stateDir, &after); err != nil {
		t.Fatal(err)
	}
	if used := (int64(before.Bavail) - int64(after.Bavail)) * before.Bsize >> 20; used > 80 {
		t.Errorf("the host lost %d MB of free space to a machine with a 64 MB disk", used)
	}
	// Its /dev/shm is a tmpfs of its own size, not the host's memory.
	if _, body := get(t, m, "/fill", url.Values{"path": {"/dev/shm/big"}, "mb": {"256"}}); !strings.Contains(body, "no space left on device") {
		t.Errorf("/dev/shm: %q", body)
	}
	stop(t, m)
	fresh := start(t, func(s *runtime.Spec) { s.Resources.DiskMB = 64 })
	if _, body := get(t, fresh, "/fill", url.Values{"path": {"/tmp/big"}, "mb": {"32"}}); !strings.HasPrefix(body, "wrote 32 MB: <nil>") {
		t.Errorf("the next machine's disk is not empty: %q", body)
	}
	// A kept layer (a Dockerfile RUN step's) is bounded the same way.
	upper := filepath.Join(t.TempDir(), "layer")
	if err := os.Mkdir(upper, 0o700); err != nil {
		t.Fatal(err)
	}
	kept := start(t, func(s *runtime.Spec) { s.Resources.DiskMB = 64; s.Upper = upper })
	if _, body := get(t, kept, "/fill", url.Values{"path": {"/tmp/big"}, "mb": {"256"}}); !strings.Contains(body, "no space left on device") {
		t.Errorf("a kept layer on a 64 MB disk: %q", body)
	}
	// Copying the layer out must not take more host disk than the
	// machine's own disk holds: a huge sparse file and many hard links to
	// one file cost the machine nothing.
	get(t, kept, "/write", url.Values{"path": {"/tmp/big"}, "data": {"now small"}})
	if _, body := get(t, kept, "/fill", url.Values{"path": {"/tmp/linked"}, "mb": {"16"}}); !strings.HasPrefix(body, "wrote 16 MB: <nil>") {
		t.Fatalf("fill: %q", body)
	}
	get(t, kept, "/write", url.Values{"path": {"/tmp/sparse"}, "data": {"x"}})
	if code, body := get(t, kept, "/truncate", url.Values{"path": {"/tmp/sparse"}, "size_mb": {"8192"}}); code != 200 {
		t.Fatalf("truncate: %s", body)
	}
	if code, body := get(t, kept, "/links", url.Values{"path": {"/tmp/linked"}, "n": {"200"}}); code != 200 {
		t.Fatalf("links: %s", body)
	}
	stop(t, kept)
	// 201 x 16 MB if the links came out as files: they must share an inode.
	a, errA := os.Stat(filepath.Join(upper, "tmp", "linked"))
	b, errB := os.Stat(filepath.Join(upper, "tmp", "linked.200"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("hard links came out as copies (%v, %v)", errA, errB)
	}
	if fi, err := os.Stat(filepath.Join(upper, "tmp", "sparse")); err != nil || fi.Size() != 8<<30 || fi.Sys().(*syscall.Stat_t).Blocks*512 > 1<<20 {
		t.Errorf("the 8 GiB sparse file came out as %v, %v", fi, err)
	}
	if _, err := drv.Start(context.Background(), runtime.Spec{ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir},
		Resources: runtime.Resources{DiskMB: 1}}); err == nil || !strings.Contains(err.Error(), "at least") {
		t.Errorf("a 1 MB disk: %v", err)
	}
}
