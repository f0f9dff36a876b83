package runc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
)

// DefaultDiskMB is the size of a machine's writable layer when neither the
// spec nor Config.DiskMB says: what the machine can write to its own root
// filesystem (its /tmp included) before writes fail with ENOSPC.
const DefaultDiskMB = 2048

// MinDiskMB is the smallest writable layer a machine can have.
const MinDiskMB = 16

// makeDisk gives a machine a filesystem of its own for its writable layer,
// so that it can fill that and nothing else: a sparse ext4 image of sizeMB
// at img (it takes host disk only as the machine writes), loop-mounted at
// dir. No journal: the layer is thrown away with the machine, and nothing
// in it must survive a crash of the host. The loop device goes away by
// itself when dir is unmounted (mount's autoclear).
func makeDisk(ctx context.Context, img, dir string, sizeMB int) error {
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
		"-E", "lazy_itable_init=1,nodiscard", img).CombinedOutput(); err != nil {
		return fmt.Errorf("disk: mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", img, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("disk: mount %s: %w: %s", img, err, bytes.TrimSpace(out))
	}
	return nil
}
