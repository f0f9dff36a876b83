package runc

import (
	"fmt"
	"path"
	goruntime "runtime"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/runtime"
)

// Defaults for zero Resources.
const (
	defaultCPUs     = 1.0
	defaultMemoryMB = 256
	defaultPids     = 512
	cpuPeriod       = 100_000 // µs, the kernel's default CFS period
)

// defaultCaps is the capability set containerd and Docker give containers,
// less CAP_NET_RAW: machines share a bridge with the host, and raw sockets
// would let one forge ARP replies or source addresses towards the host.
// Unprivileged ICMP sockets (ping_group_range, set per netns) cover ping.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// maskedPaths and readonlyPaths are `runc spec`'s, plus the powercap tree
// Docker masks since it leaks power readings (CVE-2020-8694).
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
	"/proc/scsi", "/sys/devices/virtual/powercap",
}

var readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}

// nofile is the machines' open-file limit: 65536 (runc's default of 1024
// is too low for servers), or less when pier's own hard limit is lower:
// raising it needs CAP_SYS_RESOURCE, which pier may not have.
func nofile() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return min(65536, rl.Max)
}

// machine is everything ociSpec needs beyond runtime.Spec.
type machine struct {
	spec     runtime.Spec
	rootfs   string // merged overlay
	netns    string
	userns   string // the machine's user namespace, pinned (pinNamespaces)
	cgroup   string
	port     int
	uid, gid uint32
	hostIDs  uint32 // host id of the machine's root (its user namespace's range)
	init     string // host path of a static init run as pid 1; "" for none
	// swapLimit: the host accounts swap per cgroup, so memory+swap can be
	// limited (cgroup v1 only does with swapaccount=1).
	swapLimit bool
}

func memory(limit int64, swap bool) *specs.LinuxMemory {
	m := &specs.LinuxMemory{Limit: &limit}
	if swap {
		m.Swap = &limit
	}
	return m
}

// initPath is where the init binary appears inside a machine.
const initPath = "/.pier/init"

func ociSpec(m machine) (*specs.Spec, error) {
	s := m.spec
	if len(s.Command) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	cwd := s.WorkDir
	if cwd == "" {
		cwd = "/"
	}
	if !path.IsAbs(cwd) {
		return nil, fmt.Errorf("workdir %q: want an absolute path", cwd)
	}
	env := make([]string, 0, len(s.Env)+3)
	hasPath := false
	for _, kv := range s.Env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PORT", "PIER_MACHINE_ID":
			continue // ours
		case "PATH":
			hasPath = true
		}
		env = append(env, kv)
	}
	if !hasPath {
		// runc resolves a bare command name with the container's PATH.
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	env = append(env, fmt.Sprintf("PORT=%d", m.port), "PIER_MACHINE_ID="+s.ID)

	caps := &specs.LinuxCapabilities{Bounding: defaultCaps}
	if m.uid == 0 {
		caps.Effective, caps.Permitted = defaultCaps, defaultCaps
	}
	// A non-root user gets none effective (as Docker does): runc would
	// otherwise hand the effective set to any uid. Inheritable stays empty
	// (CVE-2022-24769).

	r := s.Resources
	cpus, memMB, pids := r.CPUs, r.MemoryMB, r.Pids
	if cpus <= 0 {
		cpus = defaultCPUs
	}
	if memMB <= 0 {
		memMB = defaultMemoryMB
	}
	if pids <= 0 {
		pids = defaultPids
	}
	quota := int64(cpus * cpuPeriod)
	period := uint64(cpuPeriod)
	mem := int64(memMB) << 20
	pidsLimit := int64(pids)
	oomAdj := 500 // the host's OOM killer takes a machine before pier itself

	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		// The machine's own cgroup (runc binds just that subtree), so
		// runtimes that size themselves from the memory limit can read it.
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
	for _, mt := range s.Mounts {
		if !path.IsAbs(mt.Target) || !path.IsAbs(mt.Source) {
			return nil, fmt.Errorf("mount %s -> %s: want absolute paths", mt.Source, mt.Target)
		}
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if mt.ReadOnly {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: path.Clean(mt.Target), Type: "bind", Source: mt.Source, Options: opts})
	}

	args := s.Command
	if m.init != "" {
		// As pid 1 a program ignores signals it does not handle (SIGTERM
		// included), so stops would always end in SIGKILL; a tiny init
		// forwards them to the command's process group and reaps zombies.
		mounts = append(mounts, specs.Mount{Destination: initPath, Type: "bind", Source: m.init, Options: []string{"bind", "ro", "nosuid", "nodev"}})
		args = append([]string{initPath, "-g", "--"}, s.Command...)
	}

	return &specs.Spec{
		Version: "1.0.2", // what Debian's runc 1.1 implements
		Process: &specs.Process{
			User:            specs.User{UID: m.uid, GID: m.gid},
			Args:            args,
			Env:             env,
			Cwd:             cwd,
			Capabilities:    caps,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile(), Soft: nofile()}},
			NoNewPrivileges: true,
			OOMScoreAdj:     &oomAdj,
		},
		Root:     &specs.Root{Path: m.rootfs},
		Hostname: s.ID,
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: m.cgroup,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				// Swap equal to memory: the limit covers memory plus swap,
				// so a machine cannot spill past it into swap.
				Memory: memory(mem, m.swapLimit),
				CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
				Pids:   &specs.LinuxPids{Limit: &pidsLimit},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: m.netns},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.UserNamespace, Path: m.userns},
			},
			UIDMappings:   []specs.LinuxIDMapping{{ContainerID: 0, HostID: m.hostIDs, Size: idSize}},
			GIDMappings:   []specs.LinuxIDMapping{{ContainerID: 0, HostID: m.hostIDs, Size: idSize}},
			MaskedPaths:   slices.Clone(maskedPaths),
			ReadonlyPaths: slices.Clone(readonlyPaths),
			Seccomp:       seccomp(),
		},
	}, nil
}

// seccomp is a deny list on top of an allow-all default, not Docker's full
// allow list: the capability set already keeps machines from mount, module,
// clock and similar calls. What it adds is closing kernel surface that needs
// no capability at all — user namespaces (which hand out capabilities over
// a fresh namespace), keyrings, BPF, perf, userfaultfd and io_uring.
func seccomp() *specs.LinuxSeccomp {
	eperm := uint(1)
	enosys := uint(38)
	var arches []specs.Arch
	switch goruntime.GOARCH {
	case "amd64":
		arches = []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		arches = []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: arches,
		Syscalls: []specs.LinuxSyscall{
			{
				Names: []string{
					"add_key", "keyctl", "request_key", "bpf", "perf_event_open", "userfaultfd",
					"io_uring_setup", "io_uring_enter", "io_uring_register",
					"unshare", "setns", "mount", "umount2", "pivot_root", "open_by_handle_at",
					"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
					"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
					"acct", "swapon", "swapoff", "lookup_dcookie", "iopl", "ioperm",
				},
				Action:   specs.ActErrno,
				ErrnoRet: &eperm,
			},
			// clone with CLONE_NEWUSER (0x10000000) in its flags (the first
			// argument on amd64 and arm64).
			{
				Names:    []string{"clone"},
				Action:   specs.ActErrno,
				ErrnoRet: &eperm,
				Args:     []specs.LinuxSeccompArg{{Index: 0, Value: 0x10000000, ValueTwo: 0x10000000, Op: specs.OpMaskedEqual}},
			},
			// clone3 passes its flags in memory, out of seccomp's sight:
			// ENOSYS makes libcs fall back to clone, which is checked.
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
}
