package baseimage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// needRunc skips (or, in CI, fails) a test that cannot run a machine here.
func needRunc(t *testing.T) string {
	t.Helper()
	why := ""
	runc, err := exec.LookPath("runc")
	switch {
	case os.Geteuid() != 0:
		why = "needs root"
	case err != nil:
		why = "runc not installed (apt-get install runc, or bash scripts/deps.sh)"
	}
	if why == "" {
		return runc
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("base image machine tests cannot run in CI: %s", why)
	}
	t.Skip(why)
	return ""
}

// runInBase runs args in a machine whose root is the base's unpacked
// directory, read-only, with nothing of the host's bound in, and returns
// its output.
func runInBase(t *testing.T, runc string, base Base, args ...string) string {
	t.Helper()
	bundle := t.TempDir()
	rw := []string{"nosuid", "nodev"}
	spec := specs.Spec{
		Version:  specs.Version,
		Hostname: "base",
		Root:     &specs.Root{Path: base.Dir, Readonly: true},
		Process: &specs.Process{
			Args: args,
			Cwd:  "/",
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"HOME=/root",
			},
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: append(rw, "mode=1777", "size=65536k")},
			{Destination: "/root", Type: "tmpfs", Source: "tmpfs", Options: append(rw, "mode=700", "size=65536k")},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	raw, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := fmt.Sprintf("pier-base-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	state := t.TempDir()
	cmd := exec.CommandContext(ctx, runc, "--root", state, "run", "--bundle", bundle, id)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if err != nil {
		_ = exec.Command(runc, "--root", state, "delete", "--force", id).Run()
		t.Fatalf("%v in base %s: %v\nstdout: %s\nstderr: %s", args, base.Name, err, out.String(), errOut.String())
	}
	return strings.TrimSpace(out.String())
}

// A machine runs from a base alone: nothing of the host's filesystem.
func TestRunInBase(t *testing.T) {
	runc := needRunc(t)
	for _, tc := range []struct {
		base string
		args []string
		want string
	}{
		{"minimal", []string{"/bin/sh", "-c", "echo ok"}, "ok"},
		{"node", []string{"/bin/sh", "-c", `node -e "console.log(1+1)"`}, "2"},
		{"node", []string{"/bin/sh", "-c", `cd /tmp && npm --version >/dev/null && echo npm`}, "npm"},
		{"python", []string{"python3", "-c", "print(1+1)"}, "2"},
		{"python", []string{"/bin/sh", "-c", `python3 -m venv --without-pip /tmp/v && /tmp/v/bin/python -c "import ssl, sqlite3, zoneinfo; print(zoneinfo.ZoneInfo('Europe/Paris'))"`}, "Europe/Paris"},
		{"procfile", []string{"bash", "-c", `echo $(id -un) $(node -e "console.log(2)") $(python3 -c "print(3)")`}, "root 2 3"},
	} {
		t.Run(tc.base+"/"+tc.args[len(tc.args)-1], func(t *testing.T) {
			base := sharedGet(t, tc.base)
			before := topLevel(t, base.Dir)
			if got := runInBase(t, runc, base, tc.args...); got != tc.want {
				t.Errorf("output %q, want %q", got, tc.want)
			}
			if after := topLevel(t, base.Dir); after != before {
				t.Errorf("the machine changed the base's directory:\n%s\nnow:\n%s", before, after)
			}
		})
	}
}

// topLevel describes a directory's entries, to see that nothing wrote to it.
func topLevel(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&sb, "%s %v %d\n", e.Name(), fi.Mode(), fi.ModTime().Unix())
	}
	return sb.String()
}
