package dockerfile_test

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/testimage"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pier-dev/pier/internal/baseimage"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/dockerfile"
	"github.com/pier-dev/pier/internal/image"
	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/runtime/runc"
)

// The tests below build with real build machines: root, runc and a static
// busybox (scripts/deps.sh installs them). TestMain makes one runc Driver
// on a bridge and subnet of the tests' own and removes them afterwards.

var (
	skipReason string
	drv        *runc.Driver
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	switch {
	case os.Geteuid() != 0:
		skipReason = "needs root"
	case !staticBusybox():
		skipReason = "no static /bin/busybox (apt-get install busybox-static, or bash scripts/deps.sh)"
	default:
		if _, err := exec.LookPath("runc"); err != nil {
			skipReason = "runc not installed (apt-get install runc, or bash scripts/deps.sh)"
		}
	}
	if skipReason != "" {
		return m.Run()
	}
	state, err := os.MkdirTemp("", "pier-dockerfile-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(state)
	bridge := fmt.Sprintf("pd%d", os.Getpid()%100000)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// A /24 of our own that no other test run holds: New refuses a subnet
	// that overlaps a route. Not in 100.125.0.0/16, the service subnet of
	// the pier servers the e2e tests start.
	for i := range 250 {
		subnet := fmt.Sprintf("100.124.%d.0/24", (os.Getpid()+i)%250)
		if drv, err = runc.New(runc.Config{StateDir: filepath.Join(state, "machines"), Subnet: subnet, Bridge: bridge, Log: log}); err == nil {
			break
		}
	}
	if drv == nil {
		fmt.Fprintln(os.Stderr, "runc driver:", err)
		return 1
	}
	code := m.Run()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if n, err := drv.Cleanup(ctx, nil); n > 0 || err != nil {
		fmt.Fprintf(os.Stderr, "machines left behind: %d %v\n", n, err)
		code = 1
	}
	if err := drv.Uninstall(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "uninstall:", err)
		code = 1
	}
	return code
}

func staticBusybox() bool {
	f, err := elf.Open("/bin/busybox")
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

func need(t *testing.T) {
	t.Helper()
	if skipReason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("Dockerfile build tests cannot run in CI: %s", skipReason)
	}
	t.Skip(skipReason)
}

// syncBuffer collects progress written by several machines' copiers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeBaseImage writes, as an OCI layout at dir tagged "latest", a tiny
// image: static busybox as /bin/sh, an app user, /tmp.
func writeBaseImage(t *testing.T, dir string) v1.Image {
	t.Helper()
	img, err := testimage.WriteBusybox(dir, "latest")
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// app makes an app directory with the base image in it and the files.
func app(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	writeBaseImage(t, filepath.Join(dir, "base"))
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func options(t *testing.T, ctxDir string, progress io.Writer) dockerfile.Options {
	t.Helper()
	data := t.TempDir()
	return dockerfile.Options{
		Context: ctxDir, WorkDir: filepath.Join(data, "work"), App: "web",
		Runner:   &build.Sandbox{Machines: drv, Env: []string{}},
		Images:   &image.Store{Dir: filepath.Join(data, "images")},
		Progress: progress,
	}
}

// TestBuildDeployServe is the test: a Dockerfile app whose FROM is
// a local OCI image builds, deploys and serves, and its RUN steps cannot
// read the host's files.
func TestBuildDeployServe(t *testing.T) {
	need(t)
	ctx := context.Background()
	data := t.TempDir() // stands for pier's data dir
	dir := app(t, map[string]string{
		"app/index.html": "hello from pier\n",
		"app/secret.txt": "do not ship",
		".dockerignore":  "app/secret.txt\n",
	})
	probe := "for p in /etc/shadow /work /usr/bin /usr/lib /root/.ssh " + data + " " + dir + "; do if [ -e \"$p\" ]; then echo LEAK $p; fi; done; echo checked"
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(`ARG GREETING=hello
FROM oci:./base:latest
ARG GREETING
ENV APP_HOME=/srv/app
WORKDIR ${APP_HOME}
RUN echo built > /built.txt && echo "$GREETING" > greeting.txt
RUN cat /etc/shadow || echo no-host-files
RUN `+probe+`
COPY app ./
COPY --chown=app:app app/index.html /home/app/
EXPOSE 9000
USER app
RUN id -u > /tmp/whoami
LABEL org.example.app=web
CMD ["/bin/busybox", "httpd", "-f", "-p", "9000", "-h", "/srv/app"]
`), 0o644)
	progress := &syncBuffer{}
	o := options(t, dir, progress)
	o.WorkDir = filepath.Join(data, "work")
	res, err := dockerfile.Build(ctx, o)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	out := progress.String()
	for _, want := range []string{"STEP 1/14: FROM oci:./base:latest", "STEP 6/14: RUN cat /etc/shadow || echo no-host-files", "no-host-files", "checked"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "LEAK /") {
		t.Errorf("a RUN step saw host paths:\n%s", out)
	}

	c := res.Config
	if c.User != "app" || c.WorkingDir != "/srv/app" || c.Labels["org.example.app"] != "web" || dockerfile.Port(c) != 9000 {
		t.Errorf("config %+v", c)
	}
	if got := strings.Join(dockerfile.StartCommand(c), " "); got != "/bin/busybox httpd -f -p 9000 -h /srv/app" {
		t.Errorf("start command %q", got)
	}
	env := strings.Join(c.Env, " ")
	if !strings.Contains(env, "APP_HOME=/srv/app") || strings.Contains(env, "GREETING") {
		t.Errorf("env %q (ARGs are not kept in the image)", env)
	}
	mt, _ := res.Image.MediaType()
	layers, _ := res.Image.Layers()
	if mt != types.OCIManifestSchema1 || len(layers) != 7 {
		t.Errorf("media type %s, %d layers", mt, len(layers))
	}
	base, _ := layout.ImageIndexFromPath(filepath.Join(dir, "base"))
	bm, _ := base.IndexManifest()
	baseImg, _ := base.Image(bm.Manifests[0].Digest)
	bl, _ := baseImg.Layers()
	d0, _ := layers[0].Digest()
	b0, _ := bl[0].Digest()
	if d0 != b0 {
		t.Errorf("the base layer was not reused as it is: %s, base %s", d0, b0)
	}

	// Store it as a release would be, read it back the way machines are
	// started from images, and run it.
	store, err := imagestore.Open(filepath.Join(data, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, "web", "v1", res.Image); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(o.WorkDir)
	unpacked, err := (&image.Store{Dir: filepath.Join(data, "run")}).Get(ctx, "oci:"+store.Dir()+":web:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	root := unpacked.Rootfs
	for p, want := range map[string]string{
		"built.txt": "built\n", "srv/app/greeting.txt": "hello\n", "srv/app/index.html": "hello from pier\n",
		"home/app/index.html": "hello from pier\n", "tmp/whoami": "1000\n",
	} {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != want {
			t.Errorf("/%s = %q %v, want %q", p, b, err, want)
		}
	}
	for _, p := range []string{"srv/app/secret.txt", "etc/hosts", "etc/hostname", "etc/resolv.conf", "proc", "sys", "dev", ".pier"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("/%s is in the image", p)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "home/app/index.html")); err == nil {
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("--chown: owner %d:%d", st.Uid, st.Gid)
		}
	}

	mout := &syncBuffer{}
	p, err := drv.Start(ctx, runtime.Spec{ID: fmt.Sprintf("dft%d-serve", os.Getpid()), App: "web", Rootfs: []string{root},
		Command: dockerfile.StartCommand(c), Env: c.Env, WorkDir: c.WorkingDir, User: c.User, Port: dockerfile.Port(c), Stdout: mout, Stderr: mout})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.Signal(syscall.SIGKILL)
		p.Wait()
	}()
	var body string
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + p.Addr() + "/index.html")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving: %v %q; output: %s", err, body, mout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if body != "hello from pier\n" {
		t.Errorf("served %q", body)
	}
}

// TestFailingRunNamesItsLine: a RUN whose command fails stops the build
// with an error of kind Failed naming the line.
func TestFailingRunNamesItsLine(t *testing.T) {
	need(t)
	dir := app(t, map[string]string{"Dockerfile": "FROM oci:./base:latest\nRUN true\n\nRUN echo about to fail && \\\n  exit 3\nRUN echo never\n"})
	progress := &syncBuffer{}
	_, err := dockerfile.Build(context.Background(), options(t, dir, progress))
	var le *dockerfile.LineError
	if !errors.As(err, &le) || le.Line != 4 || le.Kind != pier.Failed || pier.KindOf(err) != pier.Failed {
		t.Fatalf("error %v (%#v)", err, le)
	}
	if !strings.Contains(err.Error(), "exit code 3") || !strings.Contains(progress.String(), "about to fail") || strings.Contains(progress.String(), "never") {
		t.Errorf("error %v; progress:\n%s", err, progress)
	}
}

// TestFromStaysInTheContext: FROM reads images from the app's directory
// only, and a registry that cannot be reached says so.
func TestFromStaysInTheContext(t *testing.T) {
	need(t)
	outside := t.TempDir()
	writeBaseImage(t, filepath.Join(outside, "img"))
	for name, tc := range map[string]struct {
		from string
		kind pier.Kind
	}{
		"absolute":    {"oci:" + filepath.Join(outside, "img") + ":latest", pier.Invalid},
		"dotdot":      {"oci:../img:latest", pier.Invalid},
		"symlink out": {"oci:./link:latest", pier.Invalid},
		"no base":     {"pier/nosuch", pier.Invalid},
		"registry":    {"registry.invalid/library/alpine:3.20", pier.Unavailable},
	} {
		t.Run(name, func(t *testing.T) {
			dir := app(t, map[string]string{"Dockerfile": "FROM " + tc.from + "\nRUN echo hi\n"})
			os.Symlink(filepath.Join(outside, "img"), filepath.Join(dir, "link"))
			o := options(t, dir, nil)
			o.Bases = noBases{}
			_, err := dockerfile.Build(context.Background(), o)
			var le *dockerfile.LineError
			if !errors.As(err, &le) || le.Line != 1 || pier.KindOf(err) != tc.kind {
				t.Fatalf("error %v, want kind %v at line 1", err, tc.kind)
			}
		})
	}
}

// TestFromPierBase: FROM pier/<base> stacks the base's unpacked directory
// and reuses its layer as it is.
func TestFromPierBase(t *testing.T) {
	need(t)
	if testing.Short() {
		t.Skip("assembles a base image from the host's packages")
	}
	bases := baseimage.New(filepath.Join(t.TempDir(), "bases"), nil)
	dir := app(t, map[string]string{"Dockerfile": "FROM pier/minimal\nRUN echo from-base > /from-base.txt && read first < /etc/os-release && echo \"$first\"\n"})
	progress := &syncBuffer{}
	o := options(t, dir, progress)
	o.Bases = bases
	res, err := dockerfile.Build(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress)
	}
	base, err := bases.Get(context.Background(), "minimal", nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := res.Image.Layers()
	if len(layers) != 2 {
		t.Fatalf("%d layers", len(layers))
	}
	if d, _ := layers[0].Digest(); d != base.Digest {
		t.Errorf("base layer %s, want the base's own %s", d, base.Digest)
	}
	if !strings.Contains(progress.String(), "NAME=") {
		t.Errorf("the RUN step did not see the base's /etc/os-release:\n%s", progress)
	}
}

// TestScratchWithoutRun: an image of COPY and metadata alone needs no
// build machine.
func TestScratchWithoutRun(t *testing.T) {
	need(t)
	dir := app(t, map[string]string{"srv": "binary", "Dockerfile": "FROM scratch\nCOPY --chmod=755 srv /srv\nENTRYPOINT [\"/srv\"]\nCMD [\"--port\", \"8080\"]\nEXPOSE 8080 53/udp\nSTOPSIGNAL SIGINT\n"})
	o := options(t, dir, nil)
	o.Runner = nil
	res, err := dockerfile.Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	c := res.Config
	if strings.Join(dockerfile.StartCommand(c), " ") != "/srv --port 8080" || dockerfile.Port(c) != 8080 || c.StopSignal != "SIGINT" || len(c.ExposedPorts) != 2 {
		t.Errorf("config %+v", c)
	}
	layers, _ := res.Image.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers", len(layers))
	}
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	h, err := tr.Next()
	if err != nil || h.Name != "srv" || h.Mode != 0o755 || h.Uid != 0 {
		t.Errorf("layer entry %+v %v", h, err)
	}
	cf, _ := res.Image.ConfigFile()
	if cf.OS != "linux" || cf.Architecture != goarch() || len(cf.History) != 5 {
		t.Errorf("config file os %s arch %s history %d", cf.OS, cf.Architecture, len(cf.History))
	}
}
