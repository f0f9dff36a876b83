package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// PostgreSQL runs as its own user, but its data lives under pier's data
// directory, whose directories are private to pier (0700). makeReachable
// lets that one user through: it adds a POSIX ACL entry granting search
// (x, not read) on each directory from dir up to / that the user cannot
// search yet. Where the file system has no ACLs it falls back to o+x, which
// lets every local user pass but still list nothing.

const aclXattr = "system.posix_acl_access"

// POSIX ACL tags and their order in the kernel's xattr format.
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclNoID     = 0xffffffff
	aclVersion  = 2
)

type aclEntry struct {
	tag  uint16
	perm uint16
	id   uint32
}

// makeReachable gives uid (whose primary group is gid) search permission
// on dir and its ancestors. It is a no-op for root.
func (d *Driver) makeReachable(dir string, uid, gid int) error {
	if uid == 0 {
		return nil
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for {
		if err := grantSearch(dir, uid, gid, d.warnNoACL); err != nil {
			return fmt.Errorf("let the postgres server's user reach %s: %w", dir, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

func (d *Driver) warnNoACL(dir string) {
	d.log.Warn("file system has no POSIX ACLs: made directory searchable by all users so PostgreSQL can reach its data", "dir", dir)
}

func grantSearch(dir string, uid, gid int, warnNoACL func(string)) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	acl, err := readACL(dir, st.Mode)
	if err != nil {
		return err
	}
	if canSearch(acl, st, uid, gid) {
		return nil
	}
	err = syscall.Setxattr(dir, aclXattr, encodeACL(withUser(acl, uint32(uid), 1)), 0)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOTSUP) {
		warnNoACL(dir)
		return os.Chmod(dir, os.FileMode(st.Mode&0o7777|0o001))
	}
	return err
}

// readACL returns dir's access ACL, or the one its mode bits amount to.
func readACL(dir string, mode uint32) ([]aclEntry, error) {
	buf := make([]byte, 1024)
	n, err := syscall.Getxattr(dir, aclXattr, buf)
	if err == nil {
		if acl, ok := decodeACL(buf[:n]); ok {
			return acl, nil
		}
	} else if !errors.Is(err, syscall.ENODATA) && !errors.Is(err, syscall.EOPNOTSUPP) {
		return nil, fmt.Errorf("read ACL: %w", err)
	}
	return []aclEntry{
		{aclUserObj, uint16(mode>>6) & 7, aclNoID},
		{aclGroupObj, uint16(mode>>3) & 7, aclNoID},
		{aclOther, uint16(mode) & 7, aclNoID},
	}, nil
}

// canSearch evaluates acl the way the kernel does for a user whose only
// group is gid.
func canSearch(acl []aclEntry, st syscall.Stat_t, uid, gid int) bool {
	mask := uint16(7) // a minimal ACL has no mask: nothing is masked
	for _, e := range acl {
		if e.tag == aclMask {
			mask = e.perm
		}
	}
	if st.Uid == uint32(uid) {
		return find(acl, aclUserObj, aclNoID)&1 != 0
	}
	if p, ok := lookup(acl, aclUser, uint32(uid)); ok {
		return p&mask&1 != 0
	}
	inGroup, groupPerm := false, uint16(0)
	if st.Gid == uint32(gid) {
		inGroup, groupPerm = true, find(acl, aclGroupObj, aclNoID)
	}
	if p, ok := lookup(acl, aclGroup, uint32(gid)); ok {
		inGroup, groupPerm = true, groupPerm|p
	}
	if inGroup {
		return groupPerm&mask&1 != 0
	}
	return find(acl, aclOther, aclNoID)&1 != 0
}

func lookup(acl []aclEntry, tag uint16, id uint32) (uint16, bool) {
	for _, e := range acl {
		if e.tag == tag && (id == aclNoID || e.id == id) {
			return e.perm, true
		}
	}
	return 0, false
}

func find(acl []aclEntry, tag uint16, id uint32) uint16 {
	p, _ := lookup(acl, tag, id)
	return p
}

// withUser returns acl with a named-user entry for uid that includes perm,
// and a mask that lets it through (the mask is the union of the group
// class, as setfacl computes it).
func withUser(acl []aclEntry, uid uint32, perm uint16) []aclEntry {
	out := make([]aclEntry, 0, len(acl)+2)
	found := false
	for _, e := range acl {
		if e.tag == aclMask {
			continue
		}
		if e.tag == aclUser && e.id == uid {
			e.perm |= perm
			found = true
		}
		out = append(out, e)
	}
	if !found {
		out = append(out, aclEntry{aclUser, perm, uid})
	}
	var mask uint16
	for _, e := range out {
		if e.tag == aclUser || e.tag == aclGroupObj || e.tag == aclGroup {
			mask |= e.perm
		}
	}
	out = append(out, aclEntry{aclMask, mask, aclNoID})
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].tag != out[j].tag {
			return out[i].tag < out[j].tag
		}
		return out[i].id < out[j].id
	})
	return out
}

func decodeACL(b []byte) ([]aclEntry, bool) {
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != aclVersion || (len(b)-4)%8 != 0 {
		return nil, false
	}
	var acl []aclEntry
	for b = b[4:]; len(b) >= 8; b = b[8:] {
		acl = append(acl, aclEntry{
			tag:  binary.LittleEndian.Uint16(b),
			perm: binary.LittleEndian.Uint16(b[2:]),
			id:   binary.LittleEndian.Uint32(b[4:]),
		})
	}
	return acl, true
}

func encodeACL(acl []aclEntry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range acl {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}
