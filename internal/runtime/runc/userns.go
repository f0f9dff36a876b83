package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/runtime"
)

// Every machine runs in a user namespace of its own, mapped onto a range of
// host ids that no host user and no other machine has: root in a machine
// is an unprivileged id outside it, and a host process running as nobody
// (or as any user) shares no id with any machine's processes, so it cannot
// read their /proc/<pid>/environ nor write through /proc/<pid>/root.
//
// Files keep the ids they have on disk: the image's layers and the host
// directories bound into a machine are idmapped mounts (the kernel shows
// disk id n as host id base+n through them, and writes back through them
// as n), so images are shared between machines unchanged and a build's
// tree keeps its owners. Only a machine's own writable layer holds the
// shifted ids; a kept one (runtime.Spec.Upper) is shifted back when the
// machine is gone.
const (
	// idBase is the host id of the first range's root. All ranges stay
	// below 2^31: tools that take ids as signed fail above it, and so
	// does ping_group_range.
	idBase = 1 << 30
	// idSize is how many ids a machine has: 0..131071 inside, beyond the
	// usual 65536 so that build machines' user (99999) has one.
	idSize  = 1 << 17
	idSlots = 8192 // ranges, up to host id 2^31 - 1
)

// overflowID is nobody, what an unmapped id shows as.
const overflowID = 65534

// idsDir holds the host-wide claims on ranges: one file per range in use,
// named by its slot and holding the layers directory of the machine that
// has it. Host-wide, so that two pier servers never hand out one range; on
// a tmpfs, so claims go with the machines at reboot.
var idsDir = "/run/pier-ids"

// idRange is a machine's range of host ids.
type idRange struct{ slot int }

func (r idRange) base() uint32 { return idBase + uint32(r.slot)*idSize }

// claimIDs takes a free range for the machine whose layers live in owner.
// A claim whose owner directory is gone is stale (its server crashed and
// its machine was cleaned up by hand) and is taken over.
func (d *Driver) claimIDs(owner string) (idRange, error) {
	// One claimer at a time on the host: two taking over the same stale
	// claim would otherwise both get its range.
	unlock, err := hostLock(filepath.Join(idsDir, ".lock"))
	if err != nil {
		return idRange{}, fmt.Errorf("user ids: %w", err)
	}
	defer unlock()
	d.mu.Lock()
	start := d.nextSlot
	d.nextSlot = (d.nextSlot + 1) % idSlots
	d.mu.Unlock()
	for i := range idSlots {
		slot := (start + i) % idSlots
		p := filepath.Join(idsDir, strconv.Itoa(slot))
		for attempt := range 2 {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err == nil {
				_, werr := f.WriteString(owner)
				if cerr := f.Close(); werr == nil {
					werr = cerr
				}
				if werr != nil {
					os.Remove(p)
					return idRange{}, fmt.Errorf("user ids: %w", werr)
				}
				if err := os.WriteFile(filepath.Join(owner, "ids"), []byte(strconv.Itoa(slot)), 0o600); err != nil {
					os.Remove(p)
					return idRange{}, fmt.Errorf("user ids: %w", err)
				}
				d.mu.Lock()
				d.nextSlot = (slot + 1) % idSlots
				d.mu.Unlock()
				return idRange{slot: slot}, nil
			}
			if !errors.Is(err, fs.ErrExist) || attempt > 0 {
				break
			}
			held, rerr := os.ReadFile(p)
			if rerr != nil || len(held) == 0 || exists(string(held)) {
				break
			}
			os.Remove(p) // stale: try this slot once more
		}
	}
	return idRange{}, errors.New("user ids: every range of host ids is in use")
}

// releaseIDs gives back the range of the machine whose layers live in
// owner, if it still holds one.
func releaseIDs(owner string) error {
	data, err := os.ReadFile(filepath.Join(owner, "ids"))
	if err != nil {
		return nil // never claimed one
	}
	p := filepath.Join(idsDir, strings.TrimSpace(string(data)))
	if held, err := os.ReadFile(p); err == nil && string(held) == owner {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release user ids: %w", err)
		}
	}
	return nil
}

// pinNamespaces makes the machine's user namespace, mapping ids
// 0..idSize-1 onto its range, and a network namespace owned by it, and
// pins them at the files userPath and netPath. runc joins both: a machine
// may mount its own sysfs only in a network namespace its user namespace
// owns. The process that made them is gone when this returns.
func pinNamespaces(ids idRange, userPath, netPath string) error {
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.base()), Size: idSize}}
	cmd := exec.Command("sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: m, GidMappings: m, Pdeathsig: syscall.SIGKILL,
		// Host root writes the maps, so allowing setgroups(2) in the
		// namespace gives nothing away; apt, nginx, su need it.
		GidMappingsEnableSetgroups: true}
	// Start returns once the child has exec'd, after its maps are written.
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("make namespaces: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	for _, ns := range [][2]string{{"user", userPath}, {"net", netPath}} {
		f, err := os.OpenFile(ns[1], os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
		if err != nil {
			return fmt.Errorf("pin %s namespace: %w", ns[0], err)
		}
		f.Close()
		if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/%s", cmd.Process.Pid, ns[0]), ns[1], "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("pin %s namespace: %w", ns[0], err)
		}
	}
	return nil
}

// unpin undoes one pin of pinNamespaces; it tolerates the pin being gone.
func unpin(path string) error {
	if err := unmount(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// idmapMount mounts a copy of the tree at src onto dst (which must exist:
// a directory, or a file for a file), showing disk ids through the user
// namespace's mapping. It is nosuid and nodev, and read-only if asked.
func idmapMount(src, dst string, ns *os.File, readOnly bool) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("idmapped mount of %s: open_tree: %w", src, err)
	}
	defer unix.Close(fd)
	attr := &unix.MountAttr{
		Attr_set:    unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
		Userns_fd:   uint64(ns.Fd()),
		Propagation: unix.MS_PRIVATE,
	}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
		return fmt.Errorf("idmapped mount of %s: %w (the filesystem must support idmapped mounts: Linux 5.12 or later, ext4, xfs, btrfs or tmpfs)", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("idmapped mount of %s: move_mount: %w", src, err)
	}
	return nil
}

// mountPoint makes an empty directory, or an empty file when src is not a
// directory, at dst for a mount of src.
func mountPoint(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return os.Mkdir(dst, 0o700)
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// idmapAll mounts the machine's layers (under lowerDir) and host
// directories (under bindDir), idmapped onto its range: it returns the
// paths to use for them instead.
func idmapAll(lowerDir, bindDir, userns string, rootfs []string, mounts []runtime.Mount) ([]string, []runtime.Mount, error) {
	ns, err := os.Open(userns)
	if err != nil {
		return nil, nil, fmt.Errorf("user namespace: %w", err)
	}
	defer ns.Close()
	var lowers []string
	if err := os.Mkdir(lowerDir, 0o700); err != nil {
		return nil, nil, err
	}
	for i, l := range rootfs {
		dst := filepath.Join(lowerDir, strconv.Itoa(i))
		if err := os.Mkdir(dst, 0o700); err != nil {
			return nil, nil, err
		}
		if err := idmapMount(l, dst, ns, true); err != nil {
			return nil, nil, fmt.Errorf("rootfs layer: %w", err)
		}
		lowers = append(lowers, dst)
	}
	out := slices.Clone(mounts)
	if len(mounts) > 0 {
		if err := os.Mkdir(bindDir, 0o700); err != nil {
			return nil, nil, err
		}
	}
	for i, m := range mounts {
		dst := filepath.Join(bindDir, strconv.Itoa(i))
		if err := mountPoint(m.Source, dst); err != nil {
			return nil, nil, fmt.Errorf("mount %s: %w", m.Source, err)
		}
		if err := idmapMount(m.Source, dst, ns, m.ReadOnly); err != nil {
			return nil, nil, err
		}
		out[i].Source = dst
	}
	return lowers, out, nil
}

// unmountIdmapped undoes idmapAll (after the overlay over them is gone).
func unmountIdmapped(dirs ...string) error {
	var errs []error
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if err := unmount(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
