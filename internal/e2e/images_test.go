package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestReleaseImagesLeavePier: a release's image comes out of pier as a
// docker-archive that skopeo reads, runs under plain runc with no pier
// process anywhere, and is served by pier's registry to skopeo with the
// API token (and to nobody without it).
func TestReleaseImagesLeavePier(t *testing.T) {
	need(t, "skopeo", "python3")
	s := startRuncServer(t)
	s.mustPier("launch", copyApp(t, "python"), "--name", "web", "--yes")
	rels := s.mustPier("releases", "-a", "web")
	if !strings.Contains(rels, "sha256:") || !strings.Contains(rels, "MiB") {
		t.Errorf("releases lack the image digest and size:\n%s", rels)
	}
	var list []struct {
		Image struct {
			Digest string `json:"digest"`
		} `json:"image"`
	}
	if err := json.Unmarshal([]byte(s.mustPier("releases", "-a", "web", "--json")), &list); err != nil || len(list) != 1 || list[0].Image.Digest == "" {
		t.Fatalf("releases --json: %v %+v", err, list)
	}
	digest := list[0].Image.Digest

	// From pier's registry, with the token as the password.
	token := s.mustPierTrim("auth", "token")
	ref := fmt.Sprintf("docker://127.0.0.1:%d/web:v1", s.apiPort)
	out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "--creds", "pier:"+token, "--format", "{{.Digest}}", ref).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != digest {
		t.Errorf("skopeo inspect %s = %q, %v; want %s", ref, out, err, digest)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "--src-creds", "pier:"+token, ref, "oci:"+layout+":web").CombinedOutput(); err != nil {
		t.Errorf("skopeo copy from pier's registry: %v\n%s", err, out)
	}
	if out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", ref).CombinedOutput(); err == nil || !strings.Contains(string(out), "unauthorized") {
		t.Errorf("skopeo without credentials: %v\n%s", err, out)
	}
	if out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "--creds", "pier:pier_wrong", ref).CombinedOutput(); err == nil {
		t.Errorf("skopeo with a wrong token succeeded:\n%s", out)
	}

	archive := filepath.Join(t.TempDir(), "web.tar")
	s.mustPier("releases", "export", "-a", "web", "v1", "-o", archive)
	s.stop(syscall.SIGTERM) // from here on, no pier process runs
	if out, err := exec.Command("skopeo", "inspect", "docker-archive:"+archive).CombinedOutput(); err != nil {
		t.Fatalf("skopeo inspect docker-archive: %v\n%s", err, out)
	}

	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	untar(t, mutate.Extract(img), rootfs)
	port := freePort(t)
	env := []string{"PORT=" + strconv.Itoa(port)}
	for _, kv := range cfg.Config.Env {
		if !strings.HasPrefix(kv, "PORT=") {
			env = append(env, kv)
		}
	}
	var uid, gid uint32
	fmt.Sscanf(cfg.Config.User, "%d:%d", &uid, &gid)
	spec := plainSpec(rootfs, append(cfg.Config.Entrypoint, cfg.Config.Cmd...), env, cfg.Config.WorkingDir, uid, gid)
	js, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o600); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("pier-e2e-export-%d", os.Getpid())
	root := t.TempDir()
	run := exec.Command("runc", "--root", root, "run", "--bundle", bundle, id)
	var logs strings.Builder
	run.Stdout, run.Stderr = &logs, &logs
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("runc", "--root", root, "delete", "-f", id).Run()
		run.Wait()
	})
	eventually(t, 20*time.Second, "the exported image serves under plain runc", func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return fmt.Errorf("%v (output: %s)", err, logs.String())
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "hello from python") {
			return fmt.Errorf("body %q", body)
		}
		return nil
	})
}

// plainSpec is a minimal runc spec of our own: the image's root, read-only,
// sharing the host's network (so the test reaches the app on loopback),
// nothing of the host's filesystem bound in.
func plainSpec(rootfs string, args, env []string, cwd string, uid, gid uint32) *specs.Spec {
	if cwd == "" {
		cwd = "/"
	}
	return &specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{User: specs.User{UID: uid, GID: gid}, Args: args, Env: env, Cwd: cwd, NoNewPrivileges: true},
		Root:    &specs.Root{Path: rootfs, Readonly: true},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}}},
	}
}

// untar unpacks a flattened image into dir (the test's own files).
func untar(t *testing.T, r io.ReadCloser, dir string) {
	t.Helper()
	defer r.Close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(hdr.Mode).Perm())
		case tar.TypeSymlink:
			os.MkdirAll(filepath.Dir(p), 0o755)
			err = os.Symlink(hdr.Linkname, p)
		case tar.TypeReg:
			os.MkdirAll(filepath.Dir(p), 0o755)
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode).Perm()); err == nil {
				_, err = io.Copy(f, tr)
				f.Close()
			}
		}
		if err != nil {
			t.Fatalf("unpack %s: %v", hdr.Name, err)
		}
	}
}

// TestOldReleasesAreCollected: beyond --keep-releases, a release's build
// and image go (its history stays), while the kept ones still export and
// roll back.
func TestOldReleasesAreCollected(t *testing.T) {
	s := startRuncServerWith(t, "--keep-releases", "2")
	dir := copyApp(t, "static")
	s.mustPier("launch", dir, "--name", "site", "--yes")
	for i := 2; i <= 3; i++ {
		writeFile(t, filepath.Join(dir, "index.html"), fmt.Sprintf("release %d", i))
		s.mustPier("deploy", dir)
	}
	s.mustGet("site", "/", "release 3")
	var rels []struct {
		Version int    `json:"version"`
		BuildID string `json:"build_id"`
	}
	if err := json.Unmarshal([]byte(s.mustPier("releases", "-a", "site", "--json")), &rels); err != nil || len(rels) != 3 {
		t.Fatalf("releases: %v %+v", err, rels)
	}
	for _, r := range rels {
		_, err := os.Stat(filepath.Join(s.dataDir, "builds", "site", r.BuildID))
		if kept := r.Version >= 2; kept != (err == nil) {
			t.Errorf("v%d: build on disk = %v, want %v", r.Version, err == nil, kept)
		}
	}
	out := filepath.Join(t.TempDir(), "v.tar")
	if msg, err := s.pier("releases", "export", "-a", "site", "v1", "-o", out); err == nil || !strings.Contains(msg, "no image") {
		t.Errorf("export of a collected release: %v\n%s", err, msg)
	}
	s.mustPier("releases", "export", "-a", "site", "v2", "-o", out)
	if msg, err := s.pier("rollback", "1", "-a", "site"); err == nil || !strings.Contains(msg, "no longer on disk") {
		t.Errorf("rollback to a collected release: %v\n%s", err, msg)
	}
	s.mustPier("rollback", "2", "-a", "site")
	s.mustGet("site", "/", "release 2")
}
