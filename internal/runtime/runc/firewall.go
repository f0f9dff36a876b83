package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// The host firewall lives in chains pier owns, named after the bridge so
// several drivers (a server and a test run) never share or flush each
// other's rules. The base chains only get jumps into them, so removing pier
// is deleting the jumps and the chains. Rules are loaded with one atomic
// iptables-restore --noflush: declaring a chain there flushes and refills
// it, which makes New idempotent and leaves no window with half a rule set.
type firewall struct {
	bridge string
	subnet string
	allow  string // half of the subnet whose machines may reach the internet
	deny   string // half whose machines may not
	// The mesh: TCP from machines to a service address (services) is
	// redirected to the mesh's outbound listener (gateway:meshPort).
	services string
	gateway  string
	meshPort int
	// dns: machines may ask the name server on gateway:53 (Config.DNS).
	dns bool
}

func (f firewall) inChain() string  { return "PIER-IN-" + f.bridge }
func (f firewall) fwdChain() string { return "PIER-FWD-" + f.bridge }
func (f firewall) outChain() string { return "PIER-OUT-" + f.bridge }
func (f firewall) natChain() string { return "PIER-NAT-" + f.bridge }
func (f firewall) dnatChain() string {
	return "PIER-DNAT-" + f.bridge
}

func (f firewall) rules() string {
	in, fwd, out, nat, br := f.inChain(), f.fwdChain(), f.outChain(), f.natChain(), f.bridge
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n:%s - [0:0]\n:%s - [0:0]\n", in, fwd, out)
	// (1) Machines reach no host service, the gateway address included;
	// only replies to connections the host opened (the edge proxy) pass.
	// REJECT rather than DROP so a probing app fails fast instead of
	// hanging.
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n", in)
	if f.meshPort != 0 {
		// (4) The mesh's outbound listener, which connections to service
		// addresses are redirected to; it knows callers by address.
		fmt.Fprintf(&b, "-A %s -d %s/32 -p tcp --dport %d -j ACCEPT\n", in, f.gateway, f.meshPort)
	}
	if f.dns {
		// (6) The name server, for every machine whatever its outbound
		// policy: it knows callers by address, and forwards for those
		// allowed outbound traffic only.
		for _, proto := range []string{"udp", "tcp"} {
			fmt.Fprintf(&b, "-A %s -d %s/32 -p %s --dport 53 -j ACCEPT\n", in, f.gateway, proto)
		}
	}
	fmt.Fprintf(&b, "-A %s -j REJECT --reject-with icmp-admin-prohibited\n", in)
	// Routed traffic towards machines: only replies. This stops machine to
	// machine traffic sent through the gateway (2) and stops other hosts
	// from reaching machines directly.
	fmt.Fprintf(&b, "-A %s -o %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n", fwd, br)
	fmt.Fprintf(&b, "-A %s -o %s -j DROP\n", fwd, br)
	// (3) Outbound: the deny half is cut off, the allow half may leave
	// through any other interface.
	if f.services != "" {
		// Service addresses are only for TCP through the mesh (4).
		fmt.Fprintf(&b, "-A %s -i %s -d %s -j REJECT --reject-with icmp-admin-prohibited\n", fwd, br, f.services)
	}
	fmt.Fprintf(&b, "-A %s -i %s -s %s -j REJECT --reject-with icmp-admin-prohibited\n", fwd, br, f.deny)
	fmt.Fprintf(&b, "-A %s -i %s -s %s -j ACCEPT\n", fwd, br, f.allow)
	fmt.Fprintf(&b, "-A %s -i %s -j DROP\n", fwd, br)
	// (5) Host processes other than root's (other local users, and
	// managed servers such as PostgreSQL answering a machine) get only
	// replies through to machines: a local user must not reach an app's
	// port around the edge and the mesh.
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n", out)
	fmt.Fprintf(&b, "-A %s -m owner --uid-owner 0 -j RETURN\n", out)
	fmt.Fprintf(&b, "-A %s -j REJECT --reject-with icmp-admin-prohibited\n", out)
	b.WriteString("COMMIT\n")
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n:%s - [0:0]\n", nat, f.dnatChain())
	fmt.Fprintf(&b, "-A %s -s %s ! -o %s -j MASQUERADE\n", nat, f.subnet, br)
	if f.meshPort != 0 && f.services != "" {
		fmt.Fprintf(&b, "-A %s -i %s -d %s -p tcp -j DNAT --to-destination %s:%d\n", f.dnatChain(), br, f.services, f.gateway, f.meshPort)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// jumps are the rules in the base chains that lead into pier's chains.
//
// In FORWARD, every pier server's "-o bridge" jump must come before any
// server's "-i bridge" jump: a forwarding chain accepts its machines'
// outbound traffic, and if server B's "-i" jump came first, B's machines
// would be accepted into server A's bridge before A's chain could drop
// them. install keeps that order whatever order servers start in.
func (f firewall) jumps() [][]string {
	return [][]string{
		{"-t", "filter", "INPUT", "-i", f.bridge, "-j", f.inChain()},
		{"-t", "filter", "FORWARD", "-o", f.bridge, "-j", f.fwdChain()},
		{"-t", "filter", "FORWARD", "-i", f.bridge, "-j", f.fwdChain()},
		{"-t", "filter", "OUTPUT", "-o", f.bridge, "-j", f.outChain()},
		// Without -s: remove() then needs nothing but the bridge name.
		{"-t", "nat", "POSTROUTING", "-j", f.natChain()},
		{"-t", "nat", "PREROUTING", "-i", f.bridge, "-j", f.dnatChain()},
	}
}

func (f firewall) install(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(f.rules())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, bytes.TrimSpace(out))
	}
	// placeOutbound lists FORWARD and inserts by number, two commands:
	// another server inserting between them would shift the numbers.
	unlock, err := hostLock(firewallLock)
	if err != nil {
		return err
	}
	defer unlock()
	for _, j := range f.jumps() {
		table, chain, rule := j[1], j[2], j[3:]
		if chain == "FORWARD" && rule[0] == "-i" {
			if err := f.placeOutbound(ctx, rule); err != nil {
				return err
			}
			continue
		}
		if iptables(ctx, append([]string{"-t", table, "-C", chain}, rule...)...) == nil {
			continue
		}
		// First, so a host policy of DROP (Docker sets one) or other rules
		// cannot shadow pier's.
		if err := iptables(ctx, append([]string{"-t", table, "-I", chain, "1"}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}

// placeOutbound puts the FORWARD jump for traffic coming from the bridge
// right after the last "-o" jump of any pier server (see jumps), moving it
// there if an earlier version or start order left it above one. The new
// rule goes in before the misplaced one is deleted, so there is no moment
// without it.
func (f firewall) placeOutbound(ctx context.Context, rule []string) error {
	want := strings.Join(append([]string{"-A", "FORWARD"}, rule...), " ")
	out, err := exec.CommandContext(ctx, "iptables", "--wait", "-S", "FORWARD").Output()
	if err != nil {
		return fmt.Errorf("list FORWARD: %w", err)
	}
	lastOut, mine := 0, []int{} // rule numbers, 1-based, as iptables counts
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		args := strings.Fields(line)
		if len(args) < 2 || args[0] != "-A" {
			continue
		}
		n++
		if line == want {
			mine = append(mine, n)
		}
		if len(args) == 6 && args[2] == "-o" && args[4] == "-j" && strings.HasPrefix(args[5], "PIER-FWD-") {
			lastOut = n
		}
	}
	if len(mine) == 1 && mine[0] > lastOut {
		return nil
	}
	if err := iptables(ctx, append([]string{"-t", "filter", "-I", "FORWARD", fmt.Sprint(lastOut + 1)}, rule...)...); err != nil {
		return err
	}
	// iptables -D deletes the first match: the misplaced copies above.
	for range mine {
		if err := iptables(ctx, append([]string{"-t", "filter", "-D", "FORWARD"}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}

func (f firewall) remove(ctx context.Context) error {
	// Every rule of a base chain that jumps into ours, whatever its
	// matches (an older version may have written them differently).
	ours := map[string]bool{f.inChain(): true, f.fwdChain(): true, f.outChain(): true, f.natChain(): true, f.dnatChain(): true}
	for _, tc := range [][2]string{{"filter", "INPUT"}, {"filter", "FORWARD"}, {"filter", "OUTPUT"}, {"nat", "POSTROUTING"}, {"nat", "PREROUTING"}} {
		out, err := exec.CommandContext(ctx, "iptables", "--wait", "-t", tc[0], "-S", tc[1]).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			args := strings.Fields(line)
			if len(args) < 3 || args[0] != "-A" || args[len(args)-2] != "-j" || !ours[args[len(args)-1]] {
				continue
			}
			args[0] = "-D"
			iptables(ctx, append([]string{"-t", tc[0]}, args...)...)
		}
	}
	var firstErr error
	for _, c := range [][2]string{{"filter", f.inChain()}, {"filter", f.fwdChain()}, {"filter", f.outChain()}, {"nat", f.natChain()}, {"nat", f.dnatChain()}} {
		if iptables(ctx, "-t", c[0], "-n", "-L", c[1]) != nil {
			continue // not there
		}
		if err := iptables(ctx, "-t", c[0], "-F", c[1]); err != nil && firstErr == nil {
			firstErr = err
		}
		if err := iptables(ctx, "-t", c[0], "-X", c[1]); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// firewallLock serializes pier servers' changes to FORWARD's order.
var firewallLock = "/run/pier-ids/.firewall.lock"

// hostTag marks the rules that let one machine reach host ports.
func hostTag(id string) string { return "pier-host:" + id }

// allowHost lets the machine at addr reach the given TCP ports of the
// gateway, in rules tagged with its id. They go first in the input chain,
// before the rule that rejects everything else.
func (f firewall) allowHost(ctx context.Context, id string, addr, gw string, ports []int) error {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, port := range ports {
		fmt.Fprintf(&b, "-I %s 1 -s %s/32 -d %s/32 -p tcp --dport %d -m comment --comment %s -j ACCEPT\n", f.inChain(), addr, gw, port, hostTag(id))
	}
	b.WriteString("COMMIT\n")
	cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("allow host ports %v: iptables-restore: %w: %s", ports, err, bytes.TrimSpace(out))
	}
	return nil
}

// hostRules reads the host-port rules of the input chain: for each, the
// machine id its comment names and the rule as arguments for iptables -D.
// iptables -S quotes the comment ("pier-host:ID"); the quotes are taken
// off, or neither the match nor the delete would find the rule.
func (f firewall) hostRules(ctx context.Context) ([]hostRule, error) {
	out, err := exec.CommandContext(ctx, "iptables", "--wait", "-S", f.inChain()).Output()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", f.inChain(), err)
	}
	var rules []hostRule
	for _, line := range strings.Split(string(out), "\n") {
		args := strings.Fields(line)
		if len(args) < 2 || args[0] != "-A" {
			continue
		}
		for i, a := range args {
			if a != "--comment" || i+1 >= len(args) {
				continue
			}
			args[i+1] = strings.Trim(args[i+1], `"`)
			if id, ok := strings.CutPrefix(args[i+1], hostTag("")); ok && id != "" {
				args[0] = "-D"
				rules = append(rules, hostRule{id: id, del: args})
			}
		}
	}
	return rules, nil
}

type hostRule struct {
	id  string
	del []string // iptables arguments that delete it
}

// hostRuleIDs lists the machine ids named by host-port rules in the input
// chain, with how many rules each has.
func (f firewall) hostRuleIDs(ctx context.Context) (map[string]int, error) {
	rules, err := f.hostRules(ctx)
	if err != nil {
		return nil, err
	}
	ids := map[string]int{}
	for _, r := range rules {
		ids[r.id]++
	}
	return ids, nil
}

// dropHost removes the rules allowHost made for machine id.
func (f firewall) dropHost(ctx context.Context, id string) error {
	rules, err := f.hostRules(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rules {
		if r.id != id {
			continue
		}
		if err := iptables(ctx, r.del...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func iptables(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "iptables", append([]string{"--wait"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
