package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
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
// dir. The image is a copy of a freshly made one of that size (made once
// per size and kept under StateDir/.disks), which costs a millisecond where
// mkfs costs tens. No journal: the layer is thrown away with the machine,
// and nothing in it must survive a crash of the host. The loop device goes
// away by itself when dir is unmounted (autoclear).
//
// Attaching a loop device takes the kernel several ms (it freezes the
// device's queue), so for sizes with a template the driver keeps one
// spare: a fresh copy of the template already attached, never mounted,
// made in the background after a machine took the last one.
func (d *Driver) makeDisk(ctx context.Context, img, dir string, sizeMB int) error {
	if sp := d.takeSpare(sizeMB); sp != nil {
		err := os.Rename(sp.img, img)
		if err == nil {
			err = mountDev(sp.loop, dir)
		}
		// The mount holds the device from here; on failure, closing
		// detaches it (autoclear).
		sp.dev.Close()
		go d.refillSpare(sizeMB)
		if err == nil {
			return nil
		}
		os.Remove(sp.img)
		os.Remove(img)
		d.log.Warn("disk: the spare disk failed; making one", "err", err)
	}
	tmpl, err := d.diskTemplate(ctx, sizeMB)
	if err != nil {
		return err
	}
	if tmpl == "" { // an unusual size: made for this machine alone
		if err := mkfs(ctx, img, sizeMB); err != nil {
			return err
		}
	} else if err := copySparse(tmpl, img); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if tmpl != "" {
		go d.refillSpare(sizeMB)
	}
	return mountLoop(img, dir)
}

// spareDisk is a fresh disk image attached to a loop device and not
// mounted; dev, held open, keeps the device attached (autoclear detaches
// it on the last close, so a crash leaves only the file).
type spareDisk struct {
	img  string
	loop string // /dev/loopN
	dev  *os.File
}

// spareDir, under disksDir, holds the spares' images (not *.img in
// disksDir itself, which are the templates).
const spareDir = "spare"

func (d *Driver) takeSpare(sizeMB int) *spareDisk {
	d.spareMu.Lock()
	defer d.spareMu.Unlock()
	sp := d.spares[sizeMB]
	delete(d.spares, sizeMB)
	return sp
}

// refillSpare makes the spare of sizeMB if there is none and none is
// being made; sizes without a template get none.
func (d *Driver) refillSpare(sizeMB int) {
	d.spareMu.Lock()
	if d.spares[sizeMB] != nil || d.refilling[sizeMB] || d.detaching.Load() {
		d.spareMu.Unlock()
		return
	}
	d.refilling[sizeMB] = true
	d.spareSeq++
	seq := d.spareSeq
	d.spareMu.Unlock()
	sp, err := d.makeSpare(sizeMB, seq)
	d.spareMu.Lock()
	delete(d.refilling, sizeMB)
	keep := err == nil && !d.detaching.Load()
	if keep {
		d.spares[sizeMB] = sp
	}
	d.spareMu.Unlock()
	if err == nil && !keep {
		sp.dev.Close()
		os.Remove(sp.img)
	}
	if err != nil {
		d.log.Warn("disk: make a spare disk", "err", err)
	}
}

func (d *Driver) makeSpare(sizeMB int, seq int) (*spareDisk, error) {
	tmpl := filepath.Join(d.cfg.StateDir, disksDir, strconv.Itoa(sizeMB)+".img")
	if !exists(tmpl) {
		return nil, fmt.Errorf("no template for %d MB", sizeMB)
	}
	dir := filepath.Join(d.cfg.StateDir, disksDir, spareDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, fmt.Sprintf("%d-%d.img", sizeMB, seq))
	os.Remove(img)
	if err := copySparse(tmpl, img); err != nil {
		os.Remove(img)
		return nil, err
	}
	loop, dev, err := attachLoop(img)
	if err != nil {
		os.Remove(img)
		return nil, err
	}
	return &spareDisk{img: img, loop: loop, dev: dev}, nil
}

// releaseSpares lets go of the driver's spares (a driver that detaches
// or is uninstalled starts no more machines).
func (d *Driver) releaseSpares() {
	d.spareMu.Lock()
	spares := d.spares
	d.spares = map[int]*spareDisk{}
	d.spareMu.Unlock()
	for _, sp := range spares {
		sp.dev.Close()
		os.Remove(sp.img)
	}
}

// removeSpares removes spare images a previous run left (their loop
// devices went with that process).
func (d *Driver) removeSpares() {
	os.RemoveAll(filepath.Join(d.cfg.StateDir, disksDir, spareDir))
}

// maxTemplates bounds the sizes kept as templates: machines API callers
// choose sizes freely, and each template is an image kept on disk.
const maxTemplates = 4

// diskTemplate returns the path of an empty, freshly made ext4 image of
// sizeMB, making it the first time; "" when maxTemplates other sizes have
// templates already.
func (d *Driver) diskTemplate(ctx context.Context, sizeMB int) (string, error) {
	d.diskMu.Lock()
	defer d.diskMu.Unlock()
	dir := filepath.Join(d.cfg.StateDir, disksDir)
	p := filepath.Join(dir, strconv.Itoa(sizeMB)+".img")
	if exists(p) {
		return p, nil
	}
	if have, _ := filepath.Glob(filepath.Join(dir, "*.img")); len(have) >= maxTemplates {
		return "", nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("disk: %w", err)
	}
	tmp := p + ".tmp"
	os.Remove(tmp) // a leftover of a crash
	err := mkfs(ctx, tmp, sizeMB)
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("disk: %w", err)
	}
	return p, nil
}

// mkfs makes an empty ext4 image of sizeMB at the new file img.
func mkfs(ctx context.Context, img string, sizeMB int) error {
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
	// Inode tables are left unwritten (the block groups say so), and
	// mountLoop tells the kernel not to zero them in the background:
	// every machine's image would grow by them.
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
		"-E", "lazy_itable_init=1,nodiscard", img).CombinedOutput(); err != nil {
		return fmt.Errorf("disk: mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// copySparse copies src to a new file dst, data extents only: holes stay
// holes.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = func() error {
		if err := out.Truncate(fi.Size()); err != nil {
			return err
		}
		inFd, outFd := int(in.Fd()), int(out.Fd())
		var off int64
		for off < fi.Size() {
			data, err := unix.Seek(inFd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				return nil // only a hole is left
			}
			if err != nil {
				return fmt.Errorf("seek data: %w", err)
			}
			hole, err := unix.Seek(inFd, data, unix.SEEK_HOLE)
			if err != nil {
				return fmt.Errorf("seek hole: %w", err)
			}
			for pos := data; pos < hole; {
				roff, woff := pos, pos
				n, err := unix.CopyFileRange(inFd, &roff, outFd, &woff, int(hole-pos), 0)
				if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
					// Between filesystems (a machine's disk and the host's):
					// through a buffer.
					w := io.NewOffsetWriter(out, pos)
					if _, err := io.Copy(w, io.NewSectionReader(in, pos, hole-pos)); err != nil {
						return err
					}
					break
				}
				if err != nil {
					return fmt.Errorf("copy_file_range: %w", err)
				}
				if n == 0 {
					return io.ErrUnexpectedEOF
				}
				pos += int64(n)
			}
			off = hole
		}
		return nil
	}()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// disksDir, under StateDir, holds the templates; its name is no valid
// machine id, so Cleanup never takes it for a machine's leftovers.
const disksDir = ".disks"

// mountLoop attaches img to a free loop device (autoclear) and mounts its
// ext4 filesystem at dir, nosuid, nodev, noatime.
func mountLoop(img, dir string) error {
	loop, dev, err := attachLoop(img)
	if err != nil {
		return err
	}
	// The mount holds the device from here; closing ours lets autoclear
	// detach it once the mount is gone.
	defer dev.Close()
	return mountDev(loop, dir)
}

// attachLoop attaches img to a free loop device (autoclear) and returns
// the device, open: it stays attached while dev is open or mounted.
func attachLoop(img string) (loop string, dev *os.File, err error) {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("disk: %w", err)
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("disk: loop devices: %w (the kernel needs the loop module: modprobe loop)", err)
	}
	defer ctl.Close()
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("disk: find a free loop device: %w", err)
		}
		loop = fmt.Sprintf("/dev/loop%d", n)
		dev, err := os.OpenFile(loop, os.O_RDWR, 0)
		if err != nil {
			return "", nil, fmt.Errorf("disk: %w", err)
		}
		cfg := &unix.LoopConfig{Fd: uint32(f.Fd()), Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR}}
		err = unix.IoctlLoopConfigure(int(dev.Fd()), cfg)
		if err == nil {
			return loop, dev, nil
		}
		dev.Close()
		// Another process took that device between the two calls.
		if !errors.Is(err, unix.EBUSY) || attempt >= 20 {
			return "", nil, fmt.Errorf("disk: attach %s to %s: %w", img, loop, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// mountDev mounts the ext4 filesystem on loop device loop at dir, nosuid,
// nodev, noatime.
func mountDev(loop, dir string) error {
	if err := unix.Mount(loop, dir, "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, "noinit_itable,errors=remount-ro"); err != nil {
		return fmt.Errorf("disk: mount %s: %w", loop, err)
	}
	return nil
}
