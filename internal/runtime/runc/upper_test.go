package runc

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/runtime"
)

// TestKeptUpper: a machine with a caller-owned upper layer leaves exactly
// its own changes there, in overlayfs' format, and nothing of the driver's.
func TestKeptUpper(t *testing.T) {
	need(t)
	needBusybox(t)
	upper := filepath.Join(t.TempDir(), "upper")
	if err := os.Mkdir(upper, 0o700); err != nil {
		t.Fatal(err)
	}
	// The image (rootfsDir) has /etc/passwd and /tmp but no /proc, /dev,
	// /sys, /.pier or /etc/hosts: runc and the driver make those.
	script := strings.Join([]string{
		"echo built > /made.txt",
		"rm /etc/passwd",
		"mkdir -p /new/deep && echo x > /new/deep/f",
		"echo changed > /etc/hosts", // the driver's: not part of the diff
		"cat /etc/hostname",
	}, " && ")
	out := &lines{}
	p, err := drv.Start(context.Background(), runtime.Spec{ID: newID(), App: "test", Command: []string{"/bin/sh", "-c", script},
		Stdout: out, Stderr: out, Rootfs: []string{rootfsDir}, Upper: upper, WorkDir: "/wd"})
	if err != nil {
		t.Fatal(err)
	}
	m := &machineT{Process: p, id: "kept"}
	if exit := waitExit(t, m, 30*time.Second); exit.Code != 0 {
		t.Fatalf("exit %v: %s", exit, out)
	}
	var got []string
	filepath.WalkDir(upper, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == upper {
			return err
		}
		rel, _ := filepath.Rel(upper, p)
		got = append(got, rel)
		return nil
	})
	// /wd is the working directory runc made: Docker's WORKDIR makes it too.
	want := []string{"etc", "etc/passwd", "made.txt", "new", "new/deep", "new/deep/f", "wd"}
	if !slices.Equal(got, want) {
		t.Errorf("upper holds %q, want %q", got, want)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "etc/passwd"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/passwd is not a whiteout: mode %o rdev %d %v", st.Mode, st.Rdev, err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "made.txt")); string(b) != "built\n" {
		t.Errorf("made.txt = %q", b)
	}
	if _, err := os.Stat(upper + ".work"); !os.IsNotExist(err) {
		t.Errorf("work directory left: %v", err)
	}
	// The same upper layer stacked as a lower one shows the changes.
	out2 := &lines{}
	p, err = drv.Start(context.Background(), runtime.Spec{ID: newID(), App: "test",
		Command: []string{"/bin/sh", "-c", "cat /made.txt /new/deep/f; test -e /etc/passwd && echo passwd"},
		Stdout:  out2, Stderr: out2, Rootfs: []string{upper, rootfsDir}})
	if err != nil {
		t.Fatal(err)
	}
	waitExit(t, &machineT{Process: p, id: "kept2"}, 30*time.Second)
	if s := out2.String(); s != "built\nx\n" {
		t.Errorf("stacked: %q", s)
	}
}

func TestKeptUpperErrors(t *testing.T) {
	need(t)
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o600)
	for name, upper := range map[string]string{"relative": "up", "missing": "/nonexistent/up", "file": file, "comma": "/tmp/a,b"} {
		t.Run(name, func(t *testing.T) {
			p, err := drv.Start(context.Background(), runtime.Spec{ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}, Upper: upper})
			if err == nil {
				p.Signal(syscall.SIGKILL)
				p.Wait()
				t.Fatal("Start succeeded")
			}
		})
	}
}
