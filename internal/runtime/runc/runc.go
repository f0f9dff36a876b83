// Package runc is pier's isolating machine runtime. Each machine runs under
// Debian's runc binary, driven with an OCI runtime spec: its own user, PID,
// mount, UTS, IPC and network namespaces, cgroup limits, an overlay root
// filesystem over read-only shared layers with a writable layer on a disk
// of its own, and a private address on a pier bridge. The user namespace
// maps the machine's ids onto a range of host ids no host user and no other
// machine has (userns.go). The host firewall keeps machines away from host
// services and from each other, and other pier servers' machines and
// non-root host processes away from them; root on the host (the edge
// proxy, the mesh) can reach every machine.
//
// On disk, a machine's idmapped layers, its disk image and mount and its
// pinned user and network namespaces live under StateDir/<id>; its root
// and binds are mounted for runc under /run/pier-roots/<hash> (owned by the
// machine's root, so runc can reach them from inside the machine's user
// namespace), and its claim on a range of host ids is a file in
// /run/pier-ids; runc's own state is under
// StateDir/runc-root, and its cgroups at /pier/<id> in every hierarchy. Its
// runc bundle (config.json, which holds the machine's environment and so
// its secrets, plus runc's pid file and log) lives under RunDir/<id>, on a
// tmpfs: secrets never reach a disk. Cleanup finds leftovers in all of them
// after a crash.
package runc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/runtime/shim"
)

// Config configures a Driver. Zero fields get the documented defaults.
type Config struct {
	// StateDir holds machines' layers and runc's state; required. Nothing
	// else may live in it: Cleanup removes what it does not know.
	StateDir string
	// RunDir holds machines' runc bundles; it must be on a tmpfs, since a
	// bundle holds the machine's environment. Default: a directory of its
	// own under /run/pier, which is made a tmpfs when it is not on one.
	RunDir string
	// Subnet is where machine addresses come from (default
	// 100.96.0.0/16); the bridge holds its first address. The lower half
	// is for machines allowed outbound traffic, the upper half for
	// machines with DenyOutbound.
	Subnet string
	// Bridge is the Linux bridge machines attach to (default "pier0"). The
	// firewall chains are named after it.
	Bridge string
	// Runc is the runc binary (default: found on PATH).
	Runc string
	// Log receives the driver's own messages (default: discarded).
	Log *slog.Logger
	// ServiceSubnet holds the apps' service addresses (<app>.internal),
	// which are not on any link: TCP to them is redirected to MeshPort on
	// the gateway, where the mesh's outbound listener runs. Both empty/0:
	// no mesh.
	ServiceSubnet string
	MeshPort      int
	// DiskMB is the size of a machine's writable layer when its spec sets
	// none (default DefaultDiskMB).
	DiskMB int
	// Init is a static init binary run as every machine's pid 1 (default:
	// Debian's /usr/bin/tini-static when installed; "none" runs commands as
	// pid 1 themselves).
	Init string
	// DNS says machines use a name server on the gateway, port 53 (the
	// server runs one, see internal/dns, with Driver.Source as its policy):
	// their /etc/resolv.conf names only the gateway, and the firewall lets
	// every machine reach the gateway on UDP and TCP port 53. Off, machines
	// get the host's resolv.conf without its loopback name servers and
	// reach no name server on the host.
	DNS bool
}

// Driver starts machines under runc. It is safe for concurrent use.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	root   string // runc --root
	ipam   *ipam
	bridge netlink.Link
	fw     firewall
	resolv []byte
	// swapLimit: memory limits can include swap (see swapAccounting).
	swapLimit bool

	mu    sync.Mutex
	live  map[string]bool  // machines starting or running: Cleanup and ReconcileFirewall leave them alone
	procs map[string]*proc // machines running, for Detach
	// detaching: the server lets go of its machines (Detach); they run on.
	detaching atomic.Bool
	nextSlot  int        // where the search for a free range of host ids starts (userns.go)
	diskMu    sync.Mutex // makes disk templates one at a time (disk.go)
	// A spare disk per template size, and the sizes whose spare is being
	// made (disk.go).
	spareMu   sync.Mutex
	spares    map[int]*spareDisk
	refilling map[int]bool
	spareSeq  int
}

// ReconcileEvery is how often the driver removes host-port rules that name
// no live machine (left by a crash, or by a server run before this one).
const ReconcileEvery = 30 * time.Second

var _ interface {
	Start(context.Context, runtime.Spec) (runtime.Process, error)
} = (*Driver)(nil)

var _ runtime.Execer = (*proc)(nil)

const defaultPort = 8080

// defaultInit is Debian's statically linked tini (package tini).
const defaultInit = "/usr/bin/tini-static"

// New checks that runc and iptables are there and sets up the bridge and the
// host firewall; both steps are idempotent, so a restarted server adopts
// what the previous run made.
func New(c Config) (*Driver, error) {
	if c.StateDir == "" {
		return nil, errors.New("runc runtime: StateDir is required")
	}
	if c.Subnet == "" {
		c.Subnet = "100.96.0.0/16"
	}
	if c.Bridge == "" {
		c.Bridge = "pier0"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	switch c.Init {
	case "none":
		c.Init = ""
	case "":
		if _, err := os.Stat(defaultInit); err == nil {
			c.Init = defaultInit
		} else {
			c.Log.Warn("no init for machines: commands run as pid 1 and ignore SIGTERM unless they handle it (apt-get install tini)")
		}
	default:
		if _, err := os.Stat(c.Init); err != nil {
			return nil, fmt.Errorf("runc runtime: init %s: %w", c.Init, err)
		}
	}
	if len(c.Bridge) > 15 {
		return nil, fmt.Errorf("bridge name %q: at most 15 characters", c.Bridge)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("runc runtime: needs root (run pier server as root)")
	}
	if c.Runc == "" {
		p, err := exec.LookPath("runc")
		if err != nil {
			return nil, errors.New("runc runtime: runc not found on PATH: apt-get install runc")
		}
		c.Runc = p
	}
	if out, err := exec.Command(c.Runc, "--version").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("runc runtime: %s --version: %w: %s", c.Runc, err, bytes.TrimSpace(out))
	}
	for _, bin := range []string{"iptables", "iptables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("runc runtime: %s not found on PATH: apt-get install iptables", bin)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return nil, errors.New("runc runtime: mkfs.ext4 not found on PATH (machines' disks are ext4 images): apt-get install e2fsprogs")
	}
	switch {
	case c.DiskMB == 0:
		c.DiskMB = DefaultDiskMB
	case c.DiskMB < MinDiskMB:
		return nil, fmt.Errorf("runc runtime: disk size %d MB: at least %d", c.DiskMB, MinDiskMB)
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return nil, err
	}
	c.StateDir = abs
	if c.RunDir == "" {
		c.RunDir = defaultRunDir(abs)
	}
	if err := ensureTmpfs(c.RunDir); err != nil {
		return nil, fmt.Errorf("runc runtime: %w", err)
	}
	d := &Driver{cfg: c, log: c.Log, root: filepath.Join(abs, runcRoot), live: map[string]bool{}, procs: map[string]*proc{},
		spares: map[int]*spareDisk{}, refilling: map[int]bool{}}
	if err := os.MkdirAll(d.root, 0o700); err != nil {
		return nil, err
	}
	d.removeSpares()
	if d.ipam, err = newIPAM(c.Subnet); err != nil {
		return nil, err
	}
	d.fw = firewall{bridge: c.Bridge, subnet: d.ipam.prefix.String(), allow: d.ipam.halves[0].String(), deny: d.ipam.halves[1].String(),
		gateway: d.ipam.gateway.String(), meshPort: c.MeshPort, dns: c.DNS}
	if route, err := subnetInUse(d.ipam.prefix, c.Bridge); err != nil {
		return nil, err
	} else if route != "" {
		return nil, fmt.Errorf("runc runtime: subnet %s overlaps the host's route %s: choose another subnet", d.ipam.prefix, route)
	}
	if c.ServiceSubnet != "" {
		svc, err := netip.ParsePrefix(c.ServiceSubnet)
		if err != nil || !svc.Addr().Is4() {
			return nil, fmt.Errorf("service subnet %q: want an IPv4 prefix", c.ServiceSubnet)
		}
		svc = svc.Masked()
		if svc.Overlaps(d.ipam.prefix) {
			return nil, fmt.Errorf("service subnet %s overlaps the machine subnet %s", svc, d.ipam.prefix)
		}
		if route, err := subnetInUse(svc, c.Bridge); err != nil {
			return nil, err
		} else if route != "" {
			return nil, fmt.Errorf("runc runtime: service subnet %s overlaps the host's route %s: choose another", svc, route)
		}
		d.fw.services = svc.String()
	}
	if d.bridge, err = setupBridge(c.Bridge, d.ipam.gateway, d.ipam.prefix.Bits()); err != nil {
		return nil, err
	}
	// Machines allowed outbound traffic are routed (and masqueraded) by
	// the host.
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, fmt.Errorf("enable ip_forward: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.fw.install(ctx); err != nil {
		return nil, err
	}
	// Rules a previous run left for machines that are gone: a new machine
	// given one of their addresses must not inherit their reach.
	if n, err := d.ReconcileFirewall(ctx); err != nil {
		d.log.Warn("remove stale host-port rules", "err", err)
	} else if n > 0 {
		d.log.Info("removed stale host-port rules", "rules", n)
	}
	go d.reconcileLoop()
	d.resolv = hostResolvConf()
	if c.DNS {
		d.resolv = gatewayResolvConf(d.ipam.gateway)
	}
	d.swapLimit = swapAccounting()
	if !d.swapLimit {
		d.log.Warn("the kernel does not account swap per cgroup: machines' memory limits do not cover swap (boot with swapaccount=1)")
	}
	return d, nil
}

const runcRoot = "runc-root"

// swapAccounting says whether a machine's swap can be limited along with its
// memory: always on cgroup v2; on v1 only when the kernel accounts swap
// (the memsw files exist), which Debian kernels do only with swapaccount=1.
// Without it, runc fails to start a spec with a swap limit.
func swapAccounting() bool {
	if !isDir("/sys/fs/cgroup/memory") {
		return true
	}
	_, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
	return err == nil
}

// Gateway is the host's address on the bridge, as machines see it.
func (d *Driver) Gateway() netip.Addr { return d.ipam.gateway }

// Source says whether addr is the address of one of the driver's machines,
// starting or running, and if so whether that machine may reach the
// internet (it was started without DenyOutbound). It is the policy of the
// name server machines use (Config.DNS): the gateway, other host addresses
// and the addresses of machines that are gone are no machine's.
func (d *Driver) Source(addr netip.Addr) (machine, outbound bool) {
	return d.ipam.holder(addr.Unmap())
}

// Uninstall removes the firewall chains and the bridge. It is for tests and
// for removing pier from a host; the server does not call it (the bridge
// and rules are kept across restarts). It refuses while machines run.
func (d *Driver) Uninstall(ctx context.Context) error {
	d.mu.Lock()
	n := len(d.live)
	d.mu.Unlock()
	if n > 0 {
		return fmt.Errorf("uninstall: %d machines still running", n)
	}
	d.releaseSpares()
	err := d.fw.remove(ctx)
	if link, lerr := netlink.LinkByName(d.cfg.Bridge); lerr == nil {
		if lerr := netlink.LinkDel(link); lerr != nil {
			err = errors.Join(err, fmt.Errorf("delete bridge: %w", lerr))
		}
	}
	return err
}

// validID keeps ids usable as file, cgroup and runc container names.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// layers is where a machine's overlay layers, root mount and network
// namespace live; bundle is its runc bundle, on the tmpfs.
func (d *Driver) layers(id string) string { return filepath.Join(d.cfg.StateDir, id) }
func (d *Driver) bundle(id string) string { return filepath.Join(d.cfg.RunDir, id) }

// roots is where a machine's root and binds are mounted for runc: a
// directory owned by the machine's root, 0700, under rootsDir (0711, so
// no one can list it). Named after the layers directory, so machines of
// two servers never share one.
func (d *Driver) roots(id string) string {
	sum := sha256.Sum256([]byte(d.layers(id)))
	return filepath.Join(rootsDir, hex.EncodeToString(sum[:12]))
}

// rootsDir is host-wide, on a tmpfs: it holds mount points only.
var rootsDir = "/run/pier-roots"

func makeRootsDir() error {
	if err := os.MkdirAll(rootsDir, 0o711); err != nil {
		return err
	}
	return os.Chmod(rootsDir, 0o711)
}

// Start creates and starts a machine; it returns once the machine's command
// is running. ctx bounds the start only, not the machine's life.
func (d *Driver) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	id := spec.ID
	if !validID.MatchString(id) || id == runcRoot {
		return nil, fmt.Errorf("machine id %q: want letters, digits, '_', '.', '-' (at most 64)", id)
	}
	if len(spec.Rootfs) == 0 {
		return nil, fmt.Errorf("start machine %s: no root filesystem (spec.Rootfs is empty)", id)
	}
	if len(spec.Command) == 0 {
		return nil, fmt.Errorf("start machine %s: empty command", id)
	}
	if d.detaching.Load() {
		return nil, fmt.Errorf("start machine %s: the driver is detaching (the server is exiting)", id)
	}
	d.mu.Lock()
	if d.live[id] {
		d.mu.Unlock()
		return nil, fmt.Errorf("start machine %s: already running", id)
	}
	d.live[id] = true
	d.mu.Unlock()

	log := d.log.With("machine", id)
	p, err := d.start(ctx, spec, log)
	if err != nil {
		return nil, fmt.Errorf("start machine %s: %w", id, err)
	}
	return p, nil
}

func (d *Driver) start(ctx context.Context, spec runtime.Spec, log *slog.Logger) (_ *proc, err error) {
	id, b, run := spec.ID, d.layers(spec.ID), d.bundle(spec.ID)
	var addr netip.Addr
	var kept *keptUpper // the caller's upper layer (spec.Upper)
	handedOff := false  // once runc runs, its waiter owns the teardown
	defer func() {
		if handedOff {
			return
		}
		// Not teardownKeeping: the caller's layer was only read so far.
		if _, terr := d.teardown(context.Background(), id); terr != nil {
			log.Warn("clean up after failed start", "err", terr)
		}
		if kept != nil { // after the teardown has unmounted the overlay
			if ferr := kept.finish(); ferr != nil {
				log.Warn("clean up after failed start", "err", ferr)
			}
		}
		if addr.IsValid() {
			d.ipam.release(addr)
		}
		d.forget(id)
	}()

	// A machine of the same id is a leftover of a crash; it is not live.
	if exists(b) || exists(run) || exists(d.roots(id)) {
		if _, err := d.teardown(ctx, id); err != nil {
			return nil, fmt.Errorf("leftovers of an earlier run: %w", err)
		}
	}
	diskMB := spec.Resources.DiskMB
	if diskMB == 0 {
		diskMB = d.cfg.DiskMB
	}
	if diskMB < MinDiskMB {
		return nil, fmt.Errorf("disk size %d MB: at least %d", diskMB, MinDiskMB)
	}
	roots := d.roots(id)
	if err := makeRootsDir(); err != nil {
		return nil, err
	}
	disk := filepath.Join(b, "disk")
	upper, work, rootfs := filepath.Join(disk, "upper"), filepath.Join(disk, "work"), filepath.Join(roots, "rootfs")
	dirs := []string{b, disk, roots, rootfs, run}
	if spec.Upper != "" {
		if kept, err = newKeptUpper(spec.Upper); err != nil {
			return nil, err
		}
	}
	for _, dir := range dirs {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, err
		}
	}
	// The machine's writable layer, limited to its disk size.
	// It is made (a few tens of ms, mostly mkfs) while the namespaces and
	// idmapped mounts are; every path out of here waits for it.
	diskc := make(chan error, 1)
	go func() {
		err := d.makeDisk(ctx, filepath.Join(b, "disk.img"), disk, diskMB)
		for _, dir := range []string{upper, work} {
			if err == nil {
				err = os.Mkdir(dir, 0o700)
			}
		}
		diskc <- err
	}()
	diskWaited := false
	waitDisk := func() error {
		if diskWaited {
			return nil
		}
		diskWaited = true
		return <-diskc
	}
	defer waitDisk() // before the teardown of a failed start, deferred earlier
	// runc runs under a monitor of its own (internal/runtime/shim), which
	// holds the machine's output and exit status for whichever server is
	// attached, so the machine outlives the server. The monitor starts
	// now and lets runc run once the bundle is ready (mon.Run): its start,
	// a fork and exec of this binary, happens while the machine's disk,
	// namespaces, root and network are made. --keep: runc would otherwise
	// delete the cgroup the moment the machine exits, and with it the
	// OOM-kill counter Wait reads.
	pidFile := filepath.Join(run, "pid")
	type prepared struct {
		att *shim.Attached
		err error
	}
	monc := make(chan prepared, 1)
	go func() {
		att, err := shim.Prepare(ctx, run, shim.Command{Argv: []string{d.cfg.Runc, "--root", d.root, "--log", filepath.Join(run, "runc.log"), "--log-format", "json",
			"run", "--bundle", run, "--pid-file", pidFile, "--keep", id}}, spec.Stdout, spec.Stderr)
		monc <- prepared{att, err}
	}()
	var mon *shim.Attached
	monWaited := false
	waitMonitor := func() error {
		if monWaited {
			return nil
		}
		monWaited = true
		m := <-monc
		if m.err != nil {
			return fmt.Errorf("machine monitor: %w", m.err)
		}
		mon = m.att
		return nil
	}
	defer func() {
		// Before the teardown of a failed start: the monitor goes
		// without having run runc, or with it (its death signal).
		if !handedOff {
			if waitMonitor(); mon != nil {
				mon.Abort()
			}
		}
	}()
	if err := checkLayers(spec.Rootfs); err != nil {
		return nil, err
	}
	uid, gid, err := identity(spec.User, spec.Rootfs)
	if err != nil {
		return nil, err
	}
	// The machine's own host ids, and the layers and host directories it
	// sees through them (see userns.go).
	ids, err := d.claimIDs(b)
	if err != nil {
		return nil, err
	}
	// runc mounts the root and the binds from inside the machine's user
	// namespace, so its root must be able to reach them: its own directory
	// outside the private data dir.
	if err := os.Chown(roots, int(ids.base()), int(ids.base())); err != nil {
		return nil, err
	}
	usernsPath, nsPath := filepath.Join(b, "userns"), filepath.Join(b, "netns")
	if err := pinNamespaces(ids, usernsPath, nsPath); err != nil {
		return nil, err
	}
	if addr, err = d.ipam.alloc(spec.DenyOutbound); err != nil {
		return nil, err
	}
	// The network and the root filesystem are independent: set them up
	// side by side (a few ms each). Every path out of here waits for
	// both, so the teardown never races a half-made namespace.
	netErr := make(chan error, 1)
	go func() {
		netErr <- setupNetns(nsPath, hostVeth(id), addr, d.ipam.gateway, d.ipam.prefix.Bits(), d.bridge)
	}()
	netWaited := false
	waitNet := func() error {
		if netWaited {
			return nil
		}
		netWaited = true
		return <-netErr
	}
	defer waitNet()
	lowers, mounts, err := idmapAll(filepath.Join(b, "lower"), filepath.Join(roots, "bind"), usernsPath, spec.Rootfs, spec.Mounts)
	if err != nil {
		return nil, err
	}
	spec.Mounts = mounts
	if err := waitDisk(); err != nil {
		return nil, err
	}
	if kept != nil {
		if err := kept.copyIn(upper, ids.base()); err != nil {
			return nil, err
		}
	}
	// The upper layer's root is the merged "/", and an upper directory's
	// mode and owner win: give it the image's.
	if err := copyDirAttrs(upper, spec.Rootfs[0], ids.base()); err != nil {
		return nil, err
	}
	base := []runtime.File{
		{Path: "/etc/hosts", Data: hostsFile(addr.String(), id)},
		{Path: "/etc/hostname", Data: []byte(id + "\n")},
		{Path: "/etc/resolv.conf", Data: d.resolv},
	}
	port := spec.Port
	if port == 0 {
		port = defaultPort
	}
	s, err := ociSpec(machine{spec: spec, rootfs: rootfs, netns: nsPath, userns: usernsPath, cgroup: cgroupPath(id), port: port, uid: uid, gid: gid,
		hostIDs: ids.base(), swapLimit: d.swapLimit, init: d.cfg.Init})
	if err == nil && kept != nil {
		kept.note([]string{base[0].Path, base[1].Path, base[2].Path}, s.Mounts)
	}
	if err == nil {
		err = writeFiles(upper, spec.Rootfs, append(base, spec.Files...), ids.base())
	}
	if err == nil {
		err = mountRootfs(lowers, upper, work, rootfs, kept != nil)
	}
	if nerr := waitNet(); err == nil {
		err = nerr
	}
	if err == nil && len(spec.HostPorts) > 0 {
		err = d.fw.allowHost(ctx, id, addr.String(), d.ipam.gateway.String(), spec.HostPorts)
	}
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(run, "config.json"), js, 0o600); err != nil {
		return nil, err
	}

	p := &proc{d: d, id: id, log: log, addr: net.JoinHostPort(addr.String(), strconv.Itoa(port)), kept: kept,
		exited: make(chan struct{}), done: make(chan struct{})}
	// What Recover needs to adopt the machine after a restart of the
	// server. Machines that keep a layer for their caller (build steps)
	// end with the server that started them, so they have none.
	if kept == nil {
		if err := writeState(run, machineState{Addr: p.addr, HostPorts: spec.HostPorts}); err != nil {
			return nil, err
		}
	}
	if err := waitMonitor(); err != nil {
		return nil, err
	}
	if err := mon.Run(); err != nil {
		return nil, err
	}
	handedOff = true
	p.att = mon
	d.track(p)
	go p.wait(addr)

	pid, err := waitPidFile(ctx, pidFile, p.exited)
	if err != nil {
		exec.Command(d.cfg.Runc, "--root", d.root, "kill", id, "KILL").Run()
		<-p.done
		if p.startErr != "" {
			return nil, errors.New(p.startErr)
		}
		if p.ranPid > 0 {
			// It started and already exited (a command like `true`): a
			// successful start whose Wait returns at once.
			p.pid = p.ranPid
			return p, nil
		}
		return nil, err
	}
	p.pid = pid
	log.Debug("machine started", "addr", p.addr, "pid", pid)
	return p, nil
}

func (d *Driver) forget(id string) {
	d.mu.Lock()
	delete(d.live, id)
	delete(d.procs, id)
	d.mu.Unlock()
}

// waitPidFile waits for runc to write the machine's host pid, which it does
// once the machine's command runs.
func waitPidFile(ctx context.Context, path string, exited <-chan struct{}) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	delay := 200 * time.Microsecond
	for {
		if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
				return pid, nil
			}
		}
		select {
		case <-exited:
			return 0, errors.New("runc exited before the machine started")
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for runc: %w", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Millisecond)
	}
}

// cgroupPath is the machine's cgroup, absolute: under /pier in each
// hierarchy rather than under the server's own cgroup, so machines are not
// charged to pier and survive a restart of the server's service for Cleanup.
func cgroupPath(id string) string { return "/pier/" + id }

// teardown removes everything a machine may have on the host; each step
// tolerates its part being gone already. found says whether anything was.
func (d *Driver) teardown(ctx context.Context, id string) (found bool, err error) {
	return d.teardownKeeping(ctx, id, nil)
}

// teardownKeeping is teardown that first collects the machine's changes
// into the caller's layer, when it has one (between unmounting the
// overlay and unmounting the machine's disk).
func (d *Driver) teardownKeeping(ctx context.Context, id string, kept *keptUpper) (found bool, err error) {
	b := d.layers(id)
	var errs []error
	if _, serr := os.Stat(filepath.Join(d.root, id)); serr == nil {
		found = true
		// -f kills whatever still runs (a runc killed with the server
		// leaves its machine running) and removes the cgroups.
		// A `runc kill --all` still under way freezes the container while
		// it signals, and delete then fails ("invalid state transition
		// from stopped to paused"): try again once it has let go.
		var out []byte
		var derr error
		for attempt := range 5 {
			out, derr = exec.CommandContext(ctx, d.cfg.Runc, "--root", d.root, "delete", "-f", id).CombinedOutput()
			if derr == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
		}
		if derr != nil {
			// The machine may still run: keep its files, mounts, rules and
			// host ids (another machine must not get them) until a later
			// teardown (Cleanup) gets it deleted.
			return true, fmt.Errorf("runc delete: %w: %s", derr, bytes.TrimSpace(out))
		}
	}
	// The machine's monitor, waiting for a server to collect an exit that
	// no one will (Cleanup of a machine no server adopted).
	shim.Stop(d.bundle(id))
	// Whether or not this run made them: a previous run of the server may
	// have, and they must not outlive the machine.
	if err := d.fw.dropHost(ctx, id); err != nil {
		errs = append(errs, err)
	}
	veth := hostVeth(id)
	if _, lerr := netlink.LinkByName(veth); lerr == nil {
		found = true
	}
	if err := removeNetns(filepath.Join(b, "netns"), veth); err != nil {
		errs = append(errs, err)
	}
	if err := unpin(filepath.Join(b, "userns")); err != nil {
		errs = append(errs, err)
	}
	roots := d.roots(id)
	if err := unmount(filepath.Join(roots, "rootfs")); err != nil {
		errs = append(errs, err)
	}
	if kept != nil {
		if err := kept.collect(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmount(filepath.Join(b, "disk")); err != nil {
		errs = append(errs, err)
	}
	if err := unmountIdmapped(filepath.Join(b, "lower"), filepath.Join(roots, "bind")); err != nil {
		errs = append(errs, err)
	}
	if _, serr := os.Stat(roots); serr == nil {
		found = true
		if mounted := mountsUnder(roots); len(mounted) > 0 {
			errs = append(errs, fmt.Errorf("%s still has mounts %v: not removing it", roots, mounted))
		} else if rerr := os.RemoveAll(roots); rerr != nil {
			errs = append(errs, rerr)
		}
	}
	if n, err := removeCgroups(id); n > 0 || err != nil {
		found = true
		if err != nil {
			errs = append(errs, err)
		}
	}
	if _, serr := os.Stat(b); serr == nil {
		found = true
		// Never RemoveAll through a mount: it would delete inside it.
		if mounted := mountsUnder(b); len(mounted) > 0 {
			errs = append(errs, fmt.Errorf("%s still has mounts %v: not removing it", b, mounted))
		} else if rerr := releaseIDs(b); rerr != nil {
			errs = append(errs, rerr)
		} else if rerr := os.RemoveAll(b); rerr != nil {
			errs = append(errs, rerr)
		}
	}
	if run := d.bundle(id); exists(run) {
		found = true
		if rerr := os.RemoveAll(run); rerr != nil {
			errs = append(errs, rerr)
		}
	}
	return found, errors.Join(errs...)
}

// removeCgroups removes /pier/<id> from every hierarchy where runc left it.
func removeCgroups(id string) (int, error) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", strings.TrimPrefix(cgroupPath(id), "/")))
	if cg := filepath.Join("/sys/fs/cgroup", cgroupPath(id)); isDir(cg) { // cgroup v2
		dirs = append(dirs, cg)
	}
	var errs []error
	for _, dir := range dirs {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return len(dirs), errors.Join(errs...)
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// mountsUnder lists the mount points at or below dir, deepest last.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Cleanup removes what a previous run of the server left: containers in
// runc's root, bundles and mounts under StateDir, network namespaces and
// veths, cgroups. Everything the driver owns that is not a machine of this
// Driver value counts as left over, whether or not its id is in ids (a
// crash in the middle of a start leaves machines the server never
// recorded); ids are cleaned up too. It returns how many machines it found
// something of.
func (d *Driver) Cleanup(ctx context.Context, ids []string) (int, error) {
	cand := map[string]bool{}
	for _, id := range ids {
		if validID.MatchString(id) && id != runcRoot {
			cand[id] = true
		}
	}
	if entries, err := os.ReadDir(d.root); err == nil {
		for _, e := range entries {
			cand[e.Name()] = true
		}
	}
	for _, dir := range []string{d.cfg.StateDir, d.cfg.RunDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() && e.Name() != runcRoot && validID.MatchString(e.Name()) {
				cand[e.Name()] = true
			}
		}
	}
	d.mu.Lock()
	live := map[string]bool{}
	for id := range d.live {
		delete(cand, id)
		live[hostVeth(id)] = true
	}
	d.mu.Unlock()

	n := 0
	var errs []error
	for id := range cand {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		found, err := d.teardown(ctx, id)
		if found {
			n++
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", id, err))
		}
	}
	// Veths of machines whose bundle is gone (or never written).
	for _, l := range strayVeths(d.cfg.Bridge, live) {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
		}
	}
	if n > 0 {
		d.log.Info("removed machines left by a previous run", "count", n)
	}
	return n, errors.Join(errs...)
}

// ReconcileFirewall removes every host-port rule of the driver's chain
// that names no machine starting or running, and says how many it removed.
func (d *Driver) ReconcileFirewall(ctx context.Context) (int, error) {
	ids, err := d.fw.hostRuleIDs(ctx)
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for id, count := range ids {
		d.mu.Lock()
		alive := d.live[id]
		d.mu.Unlock()
		if alive {
			continue
		}
		if err := d.fw.dropHost(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		n += count
	}
	return n, errors.Join(errs...)
}

// reconcileLoop runs ReconcileFirewall every ReconcileEvery until the
// driver's chain is gone (Uninstall).
func (d *Driver) reconcileLoop() {
	t := time.NewTicker(ReconcileEvery)
	defer t.Stop()
	for range t.C {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if iptables(ctx, "-n", "-L", d.fw.inChain()) != nil {
			cancel()
			return
		}
		if n, err := d.ReconcileFirewall(ctx); err != nil {
			d.log.Warn("remove stale host-port rules", "err", err)
		} else if n > 0 {
			d.log.Warn("removed host-port rules of machines that are gone", "rules", n)
		}
		cancel()
	}
}
