package runc

import (
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/pier-dev/pier/internal/runtime"
)

// Tests of the parts that need neither root nor runc.

func TestIPAM(t *testing.T) {
	m, err := newIPAM("100.96.7.9/24")
	if err != nil {
		t.Fatal(err)
	}
	if m.prefix.String() != "100.96.7.0/24" || m.gateway.String() != "100.96.7.1" {
		t.Fatalf("prefix %s gateway %s", m.prefix, m.gateway)
	}
	if m.halves[0].String() != "100.96.7.0/25" || m.halves[1].String() != "100.96.7.128/25" {
		t.Fatalf("halves %v", m.halves)
	}
	seen := map[netip.Addr]bool{}
	for range 126 { // .2 to .127
		a, err := m.alloc(false)
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] || !m.halves[0].Contains(a) || a == m.gateway || a == m.prefix.Addr() {
			t.Fatalf("bad or repeated address %s", a)
		}
		seen[a] = true
	}
	if a, err := m.alloc(false); err == nil {
		t.Fatalf("allocated %s from a full half", a)
	}
	for range 127 { // .128 to .254: the broadcast address is skipped
		a, err := m.alloc(true)
		if err != nil {
			t.Fatal(err)
		}
		if !m.halves[1].Contains(a) || a.String() == "100.96.7.255" {
			t.Fatalf("bad deny address %s", a)
		}
	}
	// A released address is not handed out again while others are free.
	m2, _ := newIPAM("100.96.0.0/16")
	a1, _ := m2.alloc(false)
	m2.release(a1)
	if a2, _ := m2.alloc(false); a2 == a1 {
		t.Errorf("address %s reused at once", a1)
	}
	for _, bad := range []string{"nonsense", "fd00::/64", "10.0.0.0/30", "10.0.0.0/4"} {
		if _, err := newIPAM(bad); err == nil {
			t.Errorf("subnet %q accepted", bad)
		}
	}
}

func TestIPAMHolder(t *testing.T) {
	m, _ := newIPAM("100.96.7.0/24")
	open, _ := m.alloc(false)
	closed, _ := m.alloc(true)
	for _, tc := range []struct {
		addr                    netip.Addr
		wantTaken, wantOutbound bool
	}{
		{open, true, true},
		{closed, true, false},
		{m.gateway, false, false},
		{addrAdd(open, 1), false, false},   // free, in the allow half
		{addrAdd(closed, 1), false, false}, // free, in the deny half
		{netip.MustParseAddr("127.0.0.1"), false, false},
	} {
		if taken, outbound := m.holder(tc.addr); taken != tc.wantTaken || outbound != tc.wantOutbound {
			t.Errorf("holder(%s) = %v, %v; want %v, %v", tc.addr, taken, outbound, tc.wantTaken, tc.wantOutbound)
		}
	}
	m.release(open)
	if taken, _ := m.holder(open); taken {
		t.Errorf("holder(%s) still taken after release", open)
	}
}

func TestIPAMConcurrent(t *testing.T) {
	m, _ := newIPAM("100.96.0.0/22")
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				a, err := m.alloc(false)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[a] {
					t.Errorf("%s twice", a)
				}
				seen[a] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestHostVeth(t *testing.T) {
	a, b := hostVeth("0123456789abcd"), hostVeth("0123456789abce")
	if len(a) > 15 || a == b || !strings.HasPrefix(a, vethPrefix) || hostVeth("0123456789abcd") != a {
		t.Errorf("hostVeth: %q %q", a, b)
	}
}

func TestFirewallRules(t *testing.T) {
	base := firewall{bridge: "pier0", subnet: "100.96.0.0/16", allow: "100.96.0.0/17", deny: "100.96.128.0/17"}
	mesh := base
	mesh.services, mesh.gateway, mesh.meshPort = "100.127.0.0/16", "100.96.0.1", 15001
	dns := base
	dns.gateway, dns.dns = "100.96.0.1", true
	for _, tc := range []struct {
		name string
		f    firewall
		want string
	}{
		{"no mesh", base, `*filter
:PIER-IN-pier0 - [0:0]
:PIER-FWD-pier0 - [0:0]
:PIER-OUT-pier0 - [0:0]
-A PIER-IN-pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A PIER-IN-pier0 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -o pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A PIER-FWD-pier0 -o pier0 -j DROP
-A PIER-FWD-pier0 -i pier0 -s 100.96.128.0/17 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -i pier0 -s 100.96.0.0/17 -j ACCEPT
-A PIER-FWD-pier0 -i pier0 -j DROP
-A PIER-OUT-pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A PIER-OUT-pier0 -m owner --uid-owner 0 -j RETURN
-A PIER-OUT-pier0 -j REJECT --reject-with icmp-admin-prohibited
COMMIT
*nat
:PIER-NAT-pier0 - [0:0]
:PIER-DNAT-pier0 - [0:0]
-A PIER-NAT-pier0 -s 100.96.0.0/16 ! -o pier0 -j MASQUERADE
COMMIT
`},
		{"mesh", mesh, `*filter
:PIER-IN-pier0 - [0:0]
:PIER-FWD-pier0 - [0:0]
:PIER-OUT-pier0 - [0:0]
-A PIER-IN-pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A PIER-IN-pier0 -d 100.96.0.1/32 -p tcp --dport 15001 -j ACCEPT
-A PIER-IN-pier0 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -o pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A PIER-FWD-pier0 -o pier0 -j DROP
-A PIER-FWD-pier0 -i pier0 -d 100.127.0.0/16 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -i pier0 -s 100.96.128.0/17 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -i pier0 -s 100.96.0.0/17 -j ACCEPT
-A PIER-FWD-pier0 -i pier0 -j DROP
-A PIER-OUT-pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A PIER-OUT-pier0 -m owner --uid-owner 0 -j RETURN
-A PIER-OUT-pier0 -j REJECT --reject-with icmp-admin-prohibited
COMMIT
*nat
:PIER-NAT-pier0 - [0:0]
:PIER-DNAT-pier0 - [0:0]
-A PIER-NAT-pier0 -s 100.96.0.0/16 ! -o pier0 -j MASQUERADE
-A PIER-DNAT-pier0 -i pier0 -d 100.127.0.0/16 -p tcp -j DNAT --to-destination 100.96.0.1:15001
COMMIT
`},
		{"dns", dns, `*filter
:PIER-IN-pier0 - [0:0]
:PIER-FWD-pier0 - [0:0]
:PIER-OUT-pier0 - [0:0]
-A PIER-IN-pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A PIER-IN-pier0 -d 100.96.0.1/32 -p udp --dport 53 -j ACCEPT
-A PIER-IN-pier0 -d 100.96.0.1/32 -p tcp --dport 53 -j ACCEPT
-A PIER-IN-pier0 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -o pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A PIER-FWD-pier0 -o pier0 -j DROP
-A PIER-FWD-pier0 -i pier0 -s 100.96.128.0/17 -j REJECT --reject-with icmp-admin-prohibited
-A PIER-FWD-pier0 -i pier0 -s 100.96.0.0/17 -j ACCEPT
-A PIER-FWD-pier0 -i pier0 -j DROP
-A PIER-OUT-pier0 -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A PIER-OUT-pier0 -m owner --uid-owner 0 -j RETURN
-A PIER-OUT-pier0 -j REJECT --reject-with icmp-admin-prohibited
COMMIT
*nat
:PIER-NAT-pier0 - [0:0]
:PIER-DNAT-pier0 - [0:0]
-A PIER-NAT-pier0 -s 100.96.0.0/16 ! -o pier0 -j MASQUERADE
COMMIT
`},
	} {
		if got := tc.f.rules(); got != tc.want {
			t.Errorf("%s: rules:\n%s\nwant:\n%s", tc.name, got, tc.want)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: directories get the owner of the image's")
	}
	lower, upper := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(lower, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(lower, "tmp"), 0o777|fs.ModeSticky)
	err := writeFiles(upper, []string{lower}, []runtime.File{
		{Path: "/tmp/a/b.txt", Data: []byte("b")},
		{Path: "/bin/tool", Data: []byte("#!"), Mode: 0o4755},
		{Path: "/etc/../etc/x", Data: []byte("1")},
		{Path: "/etc/x", Data: []byte("2")}, // a later file of the same path wins
	}, idBase)
	if err != nil {
		t.Fatal(err)
	}
	// Owners are the machine's root's host id, for files and directories.
	for _, p := range []string{"tmp", "tmp/a", "tmp/a/b.txt", "bin/tool", "etc/x"} {
		fi, err := os.Lstat(filepath.Join(upper, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != idBase || st.Gid != idBase {
			t.Errorf("/%s is owned by %d:%d, want the machine's root %d", p, st.Uid, st.Gid, uint32(idBase))
		}
	}
	fi, _ := os.Stat(filepath.Join(upper, "tmp"))
	if fi.Mode()&fs.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("/tmp in upper: %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(upper, "bin", "tool"))
	if fi.Mode()&fs.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("/bin/tool: %v", fi.Mode())
	}
	if data, _ := os.ReadFile(filepath.Join(upper, "etc", "x")); string(data) != "2" {
		t.Errorf("/etc/x = %q", data)
	}
	for _, bad := range []string{"relative", "/"} {
		if err := writeFiles(upper, nil, []runtime.File{{Path: bad}}, 0); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
	// A symlinked directory in the image is not followed for attributes.
	os.Mkdir(filepath.Join(lower, "secret"), 0o700)
	os.Mkdir(filepath.Join(lower, "secret", "sub"), 0o700)
	os.Symlink(filepath.Join(lower, "secret"), filepath.Join(lower, "link"))
	if err := writeFiles(upper, []string{lower}, []runtime.File{{Path: "/link/sub/f", Data: []byte("x")}}, 0); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(upper, "link", "sub")); fi.Mode().Perm() != 0o755 {
		t.Errorf("/link/sub took the attributes of the symlink's target: %v", fi.Mode())
	}
	// ".." cannot climb out of the upper layer.
	if err := writeFiles(upper, nil, []runtime.File{{Path: "/../../escape", Data: []byte("x")}}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(upper, "escape")); err != nil {
		t.Errorf("/../../escape not kept inside: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	lower := t.TempDir()
	os.Mkdir(filepath.Join(lower, "etc"), 0o755)
	os.WriteFile(filepath.Join(lower, "etc", "passwd"), []byte("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(lower, "etc", "group"), []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
	for _, c := range []struct {
		user     string
		uid, gid uint32
		bad      bool
	}{
		{"", 0, 0, false},
		{"app", 1000, 1001, false},
		{"1000", 1000, 1001, false},
		{"app:staff", 1000, 50, false},
		{"4242:4243", 4242, 4243, false},
		{"4242", 4242, 0, false},
		{"ghost", 0, 0, true},
		{"app:ghosts", 0, 0, true},
	} {
		uid, gid, err := identity(c.user, []string{lower})
		if (err != nil) != c.bad || (!c.bad && (uid != c.uid || gid != c.gid)) {
			t.Errorf("identity(%q) = %d:%d %v", c.user, uid, gid, err)
		}
	}
}

func TestOCISpec(t *testing.T) {
	s, err := ociSpec(machine{spec: runtime.Spec{ID: "m1", Command: []string{"app"}, Env: []string{"PORT=1", "A=b"},
		Mounts: []runtime.Mount{{Source: "/data", Target: "/data", ReadOnly: true}}},
		rootfs: "/r", netns: "/n", cgroup: "/pier/m1", port: 8080, uid: 1000, swapLimit: true})
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(s.Process.Env, " ")
	if env != "A=b PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PORT=8080 PIER_MACHINE_ID=m1" {
		t.Errorf("env: %s", env)
	}
	if len(s.Process.Capabilities.Effective) != 0 || len(s.Process.Capabilities.Bounding) == 0 {
		t.Errorf("caps for a non-root user: %+v", s.Process.Capabilities)
	}
	r := s.Linux.Resources
	if *r.Memory.Limit != 256<<20 || *r.Memory.Swap != 256<<20 || *r.CPU.Quota != 100000 || *r.Pids.Limit != 512 {
		t.Errorf("default resources: mem %d swap %d quota %d pids %d", *r.Memory.Limit, *r.Memory.Swap, *r.CPU.Quota, *r.Pids.Limit)
	}
	if s.Hostname != "m1" || !s.Process.NoNewPrivileges || s.Linux.Namespaces[1].Path != "/n" {
		t.Errorf("spec: %+v", s)
	}
	last := s.Mounts[len(s.Mounts)-1]
	if last.Destination != "/data" || !strings.Contains(strings.Join(last.Options, ","), "ro") {
		t.Errorf("bind mount: %+v", last)
	}
	if _, err := ociSpec(machine{spec: runtime.Spec{ID: "m", Command: []string{"a"}, WorkDir: "rel"}}); err == nil {
		t.Error("relative workdir accepted")
	}
}
