package runc

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The subnet is cut in two halves: machines that may reach the internet get
// addresses from the lower half, machines with DenyOutbound from the upper
// half. The firewall rules are written once per half, so starting a machine
// never touches the firewall (an iptables call costs more than a whole
// netns setup), and a machine's policy cannot drift from its address.
type ipam struct {
	mu      sync.Mutex
	prefix  netip.Prefix
	gateway netip.Addr
	halves  [2]netip.Prefix // [0] outbound allowed, [1] outbound denied
	next    [2]uint32       // round-robin cursor per half, as an offset
	taken   map[netip.Addr]bool
}

func newIPAM(subnet string) (*ipam, error) {
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return nil, fmt.Errorf("subnet %q: %w", subnet, err)
	}
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 28 {
		return nil, fmt.Errorf("subnet %s: want an IPv4 prefix between /8 and /28", p)
	}
	base := p.Addr()
	gw := base.Next()
	lower := netip.PrefixFrom(base, p.Bits()+1)
	upper := netip.PrefixFrom(addrAdd(base, 1<<(32-p.Bits()-1)), p.Bits()+1)
	return &ipam{prefix: p, gateway: gw, halves: [2]netip.Prefix{lower, upper}, taken: map[netip.Addr]bool{}}, nil
}

func addrAdd(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := binary.BigEndian.Uint32(b[:]) + n
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// alloc hands out addresses round-robin within a half, so an address
// released by a stopped machine is not given to the next one at once (a
// client holding the old address should reach nothing rather than the wrong
// machine).
func (m *ipam) alloc(denyOutbound bool) (netip.Addr, error) {
	h := 0
	if denyOutbound {
		h = 1
	}
	half := m.halves[h]
	size := uint32(1) << (32 - half.Bits())
	bcast := addrAdd(m.prefix.Addr(), (uint32(1)<<(32-m.prefix.Bits()))-1)
	m.mu.Lock()
	defer m.mu.Unlock()
	for range size {
		off := m.next[h]
		m.next[h] = (m.next[h] + 1) % size
		a := addrAdd(half.Addr(), off)
		if a == m.prefix.Addr() || a == m.gateway || a == bcast || m.taken[a] {
			continue
		}
		m.taken[a] = true
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("no free address in %s", half)
}

// holder says whether a is handed out and whether the machine holding it
// may reach the internet, which the half it is in tells.
func (m *ipam) holder(a netip.Addr) (taken, outbound bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.taken[a] {
		return false, false
	}
	return true, m.halves[0].Contains(a)
}

func (m *ipam) release(a netip.Addr) {
	m.mu.Lock()
	delete(m.taken, a)
	m.mu.Unlock()
}

// hostVeth is the host-side name of a machine's veth pair: derived from the
// id (interface names are at most 15 bytes) so Cleanup can find it again
// after a crash without any state.
func hostVeth(id string) string {
	sum := sha256.Sum256([]byte(id))
	return vethPrefix + hex.EncodeToString(sum[:])[:12]
}

const vethPrefix = "pv"

// macFor derives the machine's MAC from its address, so that when an address
// is reused a stale neighbour entry on the host still points at the right
// interface.
func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x50, b[0], b[1], b[2], b[3]}
}

// setupBridge creates the bridge (or adopts an existing one of that name),
// gives it the gateway address and turns IPv6 off on it: with IPv6 on, the
// bridge gets a link-local address through which machines could reach host
// services, around the IPv4 firewall.
func setupBridge(name string, gw netip.Addr, bits int) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("look up bridge %s: %w", name, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up bridge %s: %w", name, err)
		}
	}
	if link.Type() != "bridge" {
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge: choose another bridge name", name, link.Type())
	}
	if err := writeSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", name, err)
	}
	return link, nil
}

// subnetInUse returns a route of the host that overlaps p and does not go
// through the bridge: taking such a subnet would cut the host off from a
// network it already uses (or two pier drivers would fight over one).
func subnetInUse(p netip.Prefix, bridge string) (string, error) {
	brIndex := -1
	if br, err := netlink.LinkByName(bridge); err == nil {
		brIndex = br.Attrs().Index
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex == brIndex {
			continue
		}
		dst, ok := netipPrefix(r.Dst)
		if ok && dst.Bits() > 0 && dst.Overlaps(p) {
			name := fmt.Sprint(r.LinkIndex)
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			return fmt.Sprintf("%s dev %s", dst, name), nil
		}
	}
	return "", nil
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

func writeSysctl(key, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
}

// setupNetns sets up the network namespace pinned at nsPath (see
// pinNamespaces): loopback up, IPv6 off, eth0 holding addr and a default
// route via the gateway, and the host end of the veth pair attached to the
// bridge in isolated mode (bridge ports in isolated mode cannot talk to
// each other, only to the bridge itself, so machines cannot reach each
// other even on the same L2).
func setupNetns(nsPath, veth string, addr, gw netip.Addr, bits int, bridge netlink.Link) (err error) {
	// Namespace work happens on a locked thread that moves into the
	// netns and back. If it cannot move back, the thread stays locked and
	// dies with the goroutine, so no other goroutine runs in the wrong
	// namespace. (Letting threads die is otherwise avoided: a Pdeathsig
	// child, like our runc processes, is killed when the thread that
	// started it exits.)
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				goruntime.UnlockOSThread()
			}
		}()
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			restored = true
			errc <- err
			return
		}
		defer host.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			restored = true
			errc <- fmt.Errorf("open netns: %w", err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			restored = true
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		err = inNewNetns(int(host.Fd()), veth, addr, gw, bits)
		if serr := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); serr == nil {
			restored = true
		} else if err == nil {
			err = fmt.Errorf("return to host netns: %w", serr)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return err
	}
	link, err := netlink.LinkByName(veth)
	if err != nil {
		return fmt.Errorf("find %s: %w", veth, err)
	}
	writeSysctl("net/ipv6/conf/"+veth+"/disable_ipv6", "1")
	if err := netlink.LinkSetMaster(link, bridge); err != nil {
		return fmt.Errorf("attach %s to bridge: %w", veth, err)
	}
	if err := netlink.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("isolate %s: %w", veth, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", veth, err)
	}
	return nil
}

// inNewNetns runs on a thread that is inside the new network namespace; the
// netlink package-level calls open their sockets in the calling thread's
// namespace, and /proc/sys/net shows the calling thread's namespace.
func inNewNetns(hostFd int, veth string, addr, gw netip.Addr, bits int) error {
	// Before any interface exists, so eth0 is born without IPv6.
	for _, kv := range [][2]string{
		{"net/ipv6/conf/all/disable_ipv6", "1"},
		{"net/ipv6/conf/default/disable_ipv6", "1"},
		// Unprivileged ICMP echo sockets (ping without CAP_NET_RAW, which
		// machines do not get) and low ports for non-root users, as
		// Docker does; both are per network namespace.
		{"net/ipv4/ping_group_range", "0 2147483647"},
		{"net/ipv4/ip_unprivileged_port_start", "0"},
	} {
		if err := writeSysctl(kv[0], kv[1]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	// The pair is created from inside, with its peer sent to the host
	// namespace, so eth0 never has to be renamed or moved.
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "eth0", HardwareAddr: macFor(addr)},
		PeerName:      veth,
		PeerNamespace: netlink.NsFd(hostFd),
	}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s: %w", veth, err)
	}
	eth, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	ipn := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
	if err := netlink.AddrAdd(eth, ipn); err != nil {
		return fmt.Errorf("address eth0: %w", err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring eth0 up: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

// removeNetns deletes the host veth (which destroys the pair at once, even
// if something still holds the namespace) and unpins the namespace. Both
// steps tolerate things already gone.
func removeNetns(nsPath, veth string) error {
	var errs []error
	if link, err := netlink.LinkByName(veth); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", veth, err))
		}
	}
	if err := unpin(nsPath); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmount detaches whatever is mounted at path, if anything.
func unmount(path string) error {
	for range 8 { // stacked mounts: bounded
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not a mount point (any more)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return nil
}

// strayVeths lists the host veths on the bridge that are not in keep.
func strayVeths(bridge string, keep map[string]bool) []netlink.Link {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	var out []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex == br.Attrs().Index && strings.HasPrefix(a.Name, vethPrefix) && !keep[a.Name] {
			out = append(out, l)
		}
	}
	return out
}
