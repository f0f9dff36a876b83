// Command machinesbench is the measuring half of bench/machines.sh: it
// builds the benchmark's image and runc bundles, times machine starts
// through pier's machines API beside bare `runc run -d`, and measures the
// host memory idle machines cost. bench/machines.sh starts pier, runs the
// subcommands in order and cleans up; see it for the whole picture.
//
//	machinesbench image   -guest BIN -out DIR
//	machinesbench latency -api URL -token T -app A -image REF -image-solo REF2 -runc-root R -bundle B -n 100
//	machinesbench memory  -api URL -token T -app A -image REF -runc-root R -bundle-sleep B1 -bundle-server B2 \
//	                      -pier-pid P [-pier-cgroup DIR -raw-cgroup DIR] -n 20
//
// It talks to pier's API on loopback and to machines' private addresses on
// pier's bridge only.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	if len(os.Args) < 2 {
		fatalf("usage: machinesbench image|latency|memory [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "image":
		imageCmd(args)
	case "latency":
		latencyCmd(args)
	case "memory":
		memoryCmd(args)
	default:
		fatalf("unknown subcommand %q", cmd)
	}
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "machinesbench: "+format+"\n", a...)
	os.Exit(1)
}

func progress(format string, a ...any) { fmt.Fprintf(os.Stderr, "    "+format+"\n", a...) }

// ------------------------------------------------------------------ image --

// imageCmd writes, under -out:
//
//	rootfs/         the image's files: /bin/server (the static guest), a
//	                static busybox for /bin/sleep and /bin/sh, /tmp
//	layout/         the same files as a one-layer OCI image layout, tag
//	                "latest"; tag "solo" is the same layer under a config
//	                with one label more, so a different image to pier (its
//	                own unpacked copy, collected on its own)
//	bundle-server/  a runc bundle (`runc spec`, adjusted) running /bin/server
//	bundle-sleep/   the same, running /bin/sleep 3600
//
// pier unpacks layout/ into its own store; raw runc runs rootfs/ directly.
// Both see the same bytes.
func imageCmd(args []string) {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	guest := fs.String("guest", "", "the static guest server binary")
	out := fs.String("out", "", "output directory")
	fs.Parse(args)
	if *guest == "" || *out == "" {
		fatalf("image: -guest and -out are required")
	}
	server, err := os.ReadFile(*guest)
	if err != nil {
		fatalf("%v", err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		fatalf("a static /bin/busybox is needed (apt-get install busybox-static): %v", err)
	}
	type file struct {
		name, link string
		mode       int64
		data       []byte
		dir        bool
	}
	files := []file{
		{name: "bin", mode: 0o755, dir: true},
		{name: "bin/server", mode: 0o755, data: server},
		{name: "bin/busybox", mode: 0o755, data: bb},
		{name: "bin/sleep", link: "busybox"},
		{name: "bin/sh", link: "busybox"},
		{name: "tmp", mode: 0o1777, dir: true},
	}
	rootfs := filepath.Join(*out, "rootfs")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must := func(err error) {
		if err != nil {
			fatalf("image: %v", err)
		}
	}
	must(os.MkdirAll(rootfs, 0o755))
	for _, f := range files {
		p := filepath.Join(rootfs, f.name)
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: time.Unix(0, 0)}
		switch {
		case f.dir:
			h.Name += "/"
			h.Typeflag = tar.TypeDir
			must(os.Mkdir(p, 0o755))
			mode := os.FileMode(f.mode & 0o777)
			if f.mode&0o1000 != 0 {
				mode |= os.ModeSticky
			}
			must(os.Chmod(p, mode))
		case f.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.link, 0o777
			must(os.Symlink(f.link, p))
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
			must(os.WriteFile(p, f.data, os.FileMode(f.mode)))
		}
		must(tw.WriteHeader(h))
		_, err := tw.Write(f.data)
		must(err)
	}
	must(tw.Close())
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	must(err)
	img, err := mutate.AppendLayers(empty.Image, layer)
	must(err)
	img, err = mutate.Config(img, v1.Config{Cmd: []string{"/bin/server"}, Env: []string{"PATH=/bin"}})
	must(err)
	dir := filepath.Join(*out, "layout")
	p, err := layout.Write(dir, empty.Index)
	must(err)
	must(p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "latest"})))
	solo, err := mutate.Config(img, v1.Config{Cmd: []string{"/bin/server"}, Env: []string{"PATH=/bin"}, Labels: map[string]string{"bench": "solo"}})
	must(err)
	must(p.AppendImage(solo, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "solo"})))

	absRootfs, err := filepath.Abs(rootfs)
	must(err)
	must(writeBundle(filepath.Join(*out, "bundle-server"), absRootfs, []string{"/bin/server"}))
	must(writeBundle(filepath.Join(*out, "bundle-sleep"), absRootfs, []string{"/bin/sleep", "3600"}))
	abs, err := filepath.Abs(dir)
	must(err)
	fmt.Println("oci:" + abs + ":latest")
	fmt.Println("oci:" + abs + ":solo")
}

// writeBundle writes `runc spec`'s default config with the few changes the
// benchmark needs: no terminal (detached, output to the caller's files),
// the command, PORT as pier sets it, and the shared rootfs (read-only, as
// `runc spec` has it). Everything else is runc's default: new PID, network
// (empty: loopback only), IPC, UTS and mount namespaces, runc's masked and
// read-only paths, no cgroup limits, no seccomp.
func writeBundle(dir, rootfs string, args []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("runc spec: %v: %s", err, out)
	}
	cfgPath := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		return err
	}
	proc := cfg["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = args
	env, _ := proc["env"].([]any)
	proc["env"] = append(env, "PORT=8080")
	cfg["root"].(map[string]any)["path"] = rootfs
	data, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(cfgPath, data, 0o644)
}

// -------------------------------------------------------------------- api --

type api struct {
	base, token, app string
	c                *http.Client
}

func (a *api) call(method, path string, body any, out any) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+"/v1/apps/"+a.app+"/machines"+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}

type machine struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	PrivateIP string `json:"private_ip"`
}

func apiFlags(fs *flag.FlagSet) (*api, *string) {
	a := &api{c: &http.Client{Timeout: 90 * time.Second}}
	fs.StringVar(&a.base, "api", "", "pier API base URL (http://127.0.0.1:PORT)")
	fs.StringVar(&a.token, "token", "", "API token (pier auth token)")
	fs.StringVar(&a.app, "app", "bench", "app to create machines in")
	ref := fs.String("image", "", "oci:DIR:TAG of the benchmark image")
	return a, ref
}

func (a *api) create(ref string, cmd []string) (machine, error) {
	var m machine
	err := a.call("POST", "", map[string]any{"config": map[string]any{
		"image": ref,
		"guest": map[string]any{"cpus": 1, "memory_mb": 64},
		"init":  map[string]any{"cmd": cmd},
	}}, &m)
	return m, err
}

func (a *api) waitStarted(id string) error {
	var out struct {
		OK    bool   `json:"ok"`
		State string `json:"state"`
	}
	if err := a.call("GET", "/"+id+"/wait?state=started&timeout=30", nil, &out); err != nil {
		return err
	}
	if out.State != "started" {
		return fmt.Errorf("wait for started on %s answered state %q", id, out.State)
	}
	return nil
}

func (a *api) get(id string) (machine, error) {
	var m machine
	err := a.call("GET", "/"+id, nil, &m)
	return m, err
}

// keeper starts an idle machine of ref that keeps its image in use.
func (a *api) keeper(ref string) machine {
	m, err := a.create(ref, []string{"/bin/sleep", "3600"})
	if err != nil {
		fatalf("keeper machine: %v", err)
	}
	if err := a.waitStarted(m.ID); err != nil {
		a.destroy(m.ID)
		fatalf("keeper machine: %v", err)
	}
	return m
}

func (a *api) destroy(id string) error { return a.call("DELETE", "/"+id+"?force=true", nil, nil) }

// firstByte connects to addr until something accepts (bounded by deadline),
// sends one GET and returns when the first byte of the answer arrives. It
// then reads the rest and checks it is the guest's answer.
func firstByte(addr string, deadline time.Time) (time.Time, error) {
	var lastErr error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
		if err != nil {
			lastErr = err
			time.Sleep(500 * time.Microsecond)
			continue
		}
		c.SetDeadline(deadline)
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")); err != nil {
			c.Close()
			lastErr = err
			continue
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			c.Close()
			lastErr = err // accepted then closed: not serving yet
			time.Sleep(500 * time.Microsecond)
			continue
		}
		t := time.Now()
		rest, _ := io.ReadAll(c)
		c.Close()
		answer := string(one[:]) + string(rest)
		if !strings.HasPrefix(answer, "HTTP/1.1 200") || !strings.Contains(answer, "hello from a machine") {
			return t, fmt.Errorf("%s answered %q", addr, answer)
		}
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%s did not answer before the deadline: %v", addr, lastErr)
}

// ------------------------------------------------------------------- runc --

type rawRunc struct {
	root, logDir string
	// cgroup, when set, is a memory cgroup directory `runc run -d` itself
	// runs in (through a one-line shell that joins it and execs runc), so
	// whatever runc leaves charged outside the container can be read.
	cgroup string
}

// run starts container id from bundle with `runc run -d` and returns how
// long runc took to return. The container's stdio (which runc hands over
// without a terminal) is /dev/null in, a log file out, so nothing here
// waits on pipes the container holds.
func (r rawRunc) run(id, bundle string) (time.Duration, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	logf, err := os.Create(filepath.Join(r.logDir, "runc-"+id+".log"))
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command("runc", "--root", r.root, "run", "-d", "--bundle", bundle, id)
	if r.cgroup != "" {
		cmd = exec.Command("sh", "-c", `echo $$ >"$0/cgroup.procs" && exec "$@"`, r.cgroup,
			"runc", "--root", r.root, "run", "-d", "--bundle", bundle, id)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	t0 := time.Now()
	err = cmd.Run()
	d := time.Since(t0)
	if err != nil {
		msg, _ := os.ReadFile(logf.Name())
		return d, fmt.Errorf("runc run -d %s: %v: %s", id, err, bytes.TrimSpace(msg))
	}
	os.Remove(logf.Name())
	return d, nil
}

func (r rawRunc) delete(id string) error {
	if out, err := exec.Command("runc", "--root", r.root, "delete", "-f", id).CombinedOutput(); err != nil {
		return fmt.Errorf("runc delete -f %s: %v: %s", id, err, bytes.TrimSpace(out))
	}
	return nil
}

func (r rawRunc) pid(id string) (int, error) {
	out, err := exec.Command("runc", "--root", r.root, "state", id).Output()
	if err != nil {
		return 0, fmt.Errorf("runc state %s: %v", id, err)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	err = json.Unmarshal(out, &st)
	return st.Pid, err
}

// ---------------------------------------------------------------- latency --

// pierSample is one pier machine: create → started → first byte → destroyed.
type pierSample struct {
	at                                time.Time // when the create was sent
	post, started, firstByte, destroy time.Duration
}

// rawSample is one `runc run -d` and its delete.
type rawSample struct{ run, delete time.Duration }

func latencyCmd(args []string) {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	a, ref := apiFlags(fs)
	soloRef := fs.String("image-solo", "", "a second image (same files) that no other machine uses")
	root := fs.String("runc-root", "", "runc --root for the raw containers")
	bundle := fs.String("bundle", "", "runc bundle running the guest server")
	n := fs.Int("n", 100, "measured machines per side")
	warm := fs.Int("warmup", 3, "unmeasured machines per side first (image unpack, caches)")
	tsv := fs.String("tsv", "", "write every sample here")
	fs.Parse(args)
	if a.base == "" || *ref == "" || *soloRef == "" || *root == "" || *bundle == "" {
		fatalf("latency: -api, -image, -image-solo, -runc-root and -bundle are required")
	}
	r := rawRunc{root: *root, logDir: filepath.Dir(*root)}

	pierOne := func(ref string) (s pierSample, err error) {
		t0 := time.Now()
		s.at = t0
		m, err := a.create(ref, []string{"/bin/server"})
		if err != nil {
			return s, err
		}
		s.post = time.Since(t0)
		if err := a.waitStarted(m.ID); err != nil {
			a.destroy(m.ID)
			return s, err
		}
		s.started = time.Since(t0)
		// The wait answer is Fly's {"ok":true,"state":...}; the address
		// comes from the machine itself (a client does the same).
		w, err := a.get(m.ID)
		if err != nil || w.PrivateIP == "" {
			a.destroy(m.ID)
			return s, fmt.Errorf("machine %s: no private_ip (%v)", m.ID, err)
		}
		if w.State != "started" {
			a.destroy(m.ID)
			return s, fmt.Errorf("machine %s is %s after waiting for started", m.ID, w.State)
		}
		t, err := firstByte(net.JoinHostPort(w.PrivateIP, "8080"), time.Now().Add(10*time.Second))
		if err != nil {
			a.destroy(m.ID)
			return s, err
		}
		s.firstByte = t.Sub(t0)
		t1 := time.Now()
		if err := a.destroy(m.ID); err != nil {
			return s, err
		}
		s.destroy = time.Since(t1)
		return s, nil
	}
	seq := 0
	rawOne := func() (s rawSample, err error) {
		seq++
		id := fmt.Sprintf("bench-raw-%d-%d", os.Getpid(), seq)
		if s.run, err = r.run(id, *bundle); err != nil {
			r.delete(id)
			return s, err
		}
		t1 := time.Now()
		err = r.delete(id)
		s.delete = time.Since(t1)
		return s, err
	}

	// One idle machine of the "latest" image runs throughout, so pier
	// keeps that image unpacked: its creates find it ready, as they do
	// whenever some machine of the image runs. The "solo" image has no
	// such machine: pier collects unpacked images no machine uses (since
	// commit "unused images are kept for a grace period", only 10 minutes
	// after the last destroy), so the results depend on that grace.
	keeper := a.keeper(*ref)
	defer a.destroy(keeper.ID)

	var warmS, soloS []pierSample
	var rawS []rawSample
	sides := []func() error{
		func() error { s, err := pierOne(*ref); warmS = append(warmS, s); return err },
		func() error { s, err := pierOne(*soloRef); soloS = append(soloS, s); return err },
		func() error { s, err := rawOne(); rawS = append(rawS, s); return err },
	}
	progress("warm-up: %d machines per side, not measured", *warm)
	for i := 0; i < *warm; i++ {
		for _, side := range sides {
			if err := side(); err != nil {
				a.destroy(keeper.ID)
				fatalf("warm-up: %v", err)
			}
		}
	}
	warmS, soloS, rawS = nil, nil, nil
	// Interleaved, the order rotating, so all sides see the same machine
	// conditions (other sessions' load comes and goes).
	for i := 0; i < *n; i++ {
		for k := range sides {
			if err := sides[(i+k)%len(sides)](); err != nil {
				a.destroy(keeper.ID)
				fatalf("iteration %d: %v", i+1, err)
			}
		}
		if (i+1)%20 == 0 {
			progress("%d/%d: last create→started: pier %s (image in use), %s (solo image); runc run -d %s", i+1, *n,
				ms(warmS[i].started), ms(soloS[i].started), ms(rawS[i].run))
		}
	}
	if *tsv != "" {
		var b strings.Builder
		b.WriteString("i\tt_s\tpier_post_ms\tpier_started_ms\tpier_first_byte_ms\tpier_destroy_ms\tsolo_post_ms\tsolo_started_ms\tsolo_first_byte_ms\tsolo_destroy_ms\trunc_run_d_ms\trunc_delete_ms\n")
		for i := range warmS {
			w, s, r := warmS[i], soloS[i], rawS[i]
			fmt.Fprintf(&b, "%d\t%.2f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\n", i+1, w.at.Sub(warmS[0].at).Seconds(),
				msf(w.post), msf(w.started), msf(w.firstByte), msf(w.destroy),
				msf(s.post), msf(s.started), msf(s.firstByte), msf(s.destroy), msf(r.run), msf(r.delete))
		}
		if err := os.WriteFile(*tsv, []byte(b.String()), 0o644); err != nil {
			fatalf("%v", err)
		}
	}

	col := func(ss []pierSample, f func(pierSample) time.Duration) []time.Duration {
		out := make([]time.Duration, len(ss))
		for i, s := range ss {
			out[i] = f(s)
		}
		slices.Sort(out)
		return out
	}
	rawCol := func(f func(rawSample) time.Duration) []time.Duration {
		out := make([]time.Duration, len(rawS))
		for i, s := range rawS {
			out[i] = f(s)
		}
		slices.Sort(out)
		return out
	}
	started := func(s pierSample) time.Duration { return s.started }
	raw := rawCol(func(s rawSample) time.Duration { return s.run })

	fmt.Printf("\n%d machines per side, one after another, the three sides interleaved (order rotating), after %d unmeasured each;\n", *n, *warm)
	fmt.Println("percentiles are nearest-rank. \"image in use\": another machine of the same image runs meanwhile (pier keeps")
	fmt.Println("it unpacked). \"solo image\": no other machine uses it, so pier collects it after each destroy and unpacks it")
	fmt.Println("again at the next create.")
	fmt.Println()
	fmt.Println("| measurement | p50 | p99 | mean | min | max |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	row := func(name string, d []time.Duration) {
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", name, ms(pct(d, 50)), ms(pct(d, 99)), ms(mean(d)), ms(d[0]), ms(d[len(d)-1]))
	}
	row("**pier, image in use: POST create → wait?state=started answers**", col(warmS, started))
	row("**pier, solo image: POST create → wait?state=started answers**", col(soloS, started))
	row("**raw: `runc run -d` (start → return)**", raw)
	row("pier, image in use: POST create → first HTTP byte from private_ip:8080", col(warmS, func(s pierSample) time.Duration { return s.firstByte }))
	row("pier, solo image: POST create → first HTTP byte from private_ip:8080", col(soloS, func(s pierSample) time.Duration { return s.firstByte }))
	row("pier, image in use: POST create alone (until its answer)", col(warmS, func(s pierSample) time.Duration { return s.post }))
	row("pier, solo image: POST create alone (until its answer)", col(soloS, func(s pierSample) time.Duration { return s.post }))
	row("pier, image in use: DELETE ?force=true (not in the above)", col(warmS, func(s pierSample) time.Duration { return s.destroy }))
	row("pier, solo image: DELETE ?force=true (not in the above)", col(soloS, func(s pierSample) time.Duration { return s.destroy }))
	row("raw: `runc delete -f` (not in the above)", rawCol(func(s rawSample) time.Duration { return s.delete }))
	verdict := func(ok bool) string {
		if ok {
			return "MET"
		}
		return "MISSED"
	}
	fmt.Println()
	for _, c := range []struct {
		name string
		ss   []pierSample
	}{{"image in use", warmS}, {"solo image", soloS}} {
		st := col(c.ss, started)
		r50 := float64(pct(st, 50)) / float64(pct(raw, 50))
		r99 := float64(pct(st, 99)) / float64(pct(raw, 99))
		fmt.Printf("pier (%s) / raw runc, create→started: p50 %.2fx, p99 %.2fx -> within 2x: %s; p50 %s under 100 ms: %s\n",
			c.name, r50, r99, verdict(r50 <= 2 && r99 <= 2), ms(pct(st, 50)), verdict(pct(st, 50) < 100*time.Millisecond))
	}
}

func pct(sorted []time.Duration, p float64) time.Duration {
	k := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(k, len(sorted)-1))]
}

func mean(d []time.Duration) time.Duration {
	var t time.Duration
	for _, x := range d {
		t += x
	}
	return t / time.Duration(len(d))
}

func msf(d time.Duration) float64 { return float64(d) / 1e6 }
func ms(d time.Duration) string   { return fmt.Sprintf("%.1f ms", msf(d)) }

// ----------------------------------------------------------------- memory --

// procInfo is one process from /proc.
type procInfo struct {
	pid, ppid int
	comm      string
}

func processes() []procInfo {
	ents, _ := os.ReadDir("/proc")
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:]) // f[0] state, f[1] ppid
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out = append(out, procInfo{pid: pid, ppid: ppid, comm: s[open+1 : close]})
	}
	return out
}

// descendants returns every process below pid, depth first.
func descendants(ps []procInfo, pid int) []procInfo {
	var out []procInfo
	for _, p := range ps {
		if p.ppid == pid {
			out = append(out, p)
			out = append(out, descendants(ps, p.pid)...)
		}
	}
	return out
}

// kbFields reads "Name: N kB" lines from a /proc file.
func kbFields(path string) map[string]int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if f := strings.Fields(v); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			out[k] = n
		}
	}
	return out
}

func rssKB(pid int) int64 { return kbFields(fmt.Sprintf("/proc/%d/status", pid))["VmRSS"] }
func pssKB(pid int) int64 { return kbFields(fmt.Sprintf("/proc/%d/smaps_rollup", pid))["Pss"] }

// hostMem is the median of 5 reads of /proc/meminfo over ~0.8 s, to smooth
// out other programs' short-lived allocations: MemAvailable, and the
// kernel's unreclaimable memory (SUnreclaim + PageTables + KernelStack),
// which is where namespaces, veths, mounts and cgroups show up.
func hostMem() (avail, kernel int64) {
	var a, k []int64
	for i := 0; i < 5; i++ {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		m := kbFields("/proc/meminfo")
		a = append(a, m["MemAvailable"])
		k = append(k, m["SUnreclaim"]+m["PageTables"]+m["KernelStack"])
	}
	slices.Sort(a)
	slices.Sort(k)
	return a[2], k[2]
}

// cgMem is what a memory cgroup holds, in kB: usage (v1
// memory.usage_in_bytes, v2 memory.current), and of it anonymous memory,
// file pages (page cache, tmpfs) and kernel memory charged to it.
type cgMem struct{ usage, anon, file, kernel int64 }

func (a cgMem) add(b cgMem) cgMem {
	return cgMem{a.usage + b.usage, a.anon + b.anon, a.file + b.file, a.kernel + b.kernel}
}

func (a cgMem) sub(b cgMem) cgMem {
	return cgMem{a.usage - b.usage, a.anon - b.anon, a.file - b.file, a.kernel - b.kernel}
}

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func cgStat(dir string) cgMem {
	stat := map[string]int64{}
	if data, err := os.ReadFile(filepath.Join(dir, "memory.stat")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok {
				stat[k], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.usage_in_bytes")); err == nil { // v1
		return cgMem{usage: readInt(filepath.Join(dir, "memory.usage_in_bytes")) / 1024, anon: stat["total_rss"] / 1024,
			file: stat["total_cache"] / 1024, kernel: readInt(filepath.Join(dir, "memory.kmem.usage_in_bytes")) / 1024}
	}
	return cgMem{usage: readInt(filepath.Join(dir, "memory.current")) / 1024, anon: stat["anon"] / 1024,
		file: stat["file"] / 1024, kernel: stat["kernel"] / 1024}
}

// memCgroupOf is the directory of pid's memory cgroup.
func memCgroupOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if slices.Contains(strings.Split(f[1], ","), "memory") {
			return filepath.Join("/sys/fs/cgroup/memory", f[2])
		}
		if f[0] == "0" && f[1] == "" && !isDir("/sys/fs/cgroup/memory") {
			return filepath.Join("/sys/fs/cgroup", f[2])
		}
	}
	return ""
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// busyPct is the share of the machine's CPU (all cores) busy over d, from
// /proc/stat (user+nice+system+steal, as bench/lib.sh's busy_ticks).
func busyPct(d time.Duration) float64 {
	read := func() (busy, total int64) {
		data, _ := os.ReadFile("/proc/stat")
		line, _, _ := strings.Cut(string(data), "\n")
		for i, f := range strings.Fields(line)[1:] {
			n, _ := strconv.ParseInt(f, 10, 64)
			if i < 8 { // user nice system idle iowait irq softirq steal
				total += n
			}
			if i == 0 || i == 1 || i == 2 || i == 7 {
				busy += n
			}
		}
		return
	}
	b0, t0 := read()
	time.Sleep(d)
	b1, t1 := read()
	if t1 == t0 {
		return 0
	}
	return float64(b1-b0) / float64(t1-t0) * 100
}

// waitQuiet waits (at most max) until less than 10% of the machine's CPU is
// busy, as bench/lib.sh's wait_quiet; it returns the last reading.
func waitQuiet(max time.Duration) float64 {
	deadline := time.Now().Add(max)
	for {
		p := busyPct(time.Second)
		if p < 10 || time.Now().After(deadline) {
			return p
		}
	}
}

// memResult is one case of one round. Sizes in kB, totals over n machines.
type memResult struct {
	availDrop, kernDrop, availLeft int64 // host: before - with machines; growth; before - after destroy
	machines                       cgMem // the machines' own memory cgroups, summed
	side                           cgMem // growth of the starter's cgroup: pier server (with its runc children), or raw runc's
	cmdRSS, cmdPSS                 int64 // the machines' commands (sleep / server)
	initPSS                        int64 // pier's pid 1 in each machine (/.pier/init)
	runcN                          int
	runcRSS, runcPSS               int64 // `runc run` processes that stay (pier)
	pierRSS                        int64 // pier server's VmRSS growth
	busy                           float64
}

type memCase struct {
	name string
	kind string // "pier", "raw", "none"
	cmd  []string
	bndl string
}

func memoryCmd(args []string) {
	fs := flag.NewFlagSet("memory", flag.ExitOnError)
	a, ref := apiFlags(fs)
	root := fs.String("runc-root", "", "runc --root for the raw containers")
	bSleep := fs.String("bundle-sleep", "", "runc bundle running /bin/sleep 3600")
	bServer := fs.String("bundle-server", "", "runc bundle running the guest server")
	pierPid := fs.Int("pier-pid", 0, "pid of pier server")
	pierCg := fs.String("pier-cgroup", "", "memory cgroup dir pier server runs in alone (optional)")
	rawCg := fs.String("raw-cgroup", "", "empty memory cgroup dir to run `runc run -d` in (optional)")
	n := fs.Int("n", 20, "idle machines at once")
	rounds := fs.Int("rounds", 3, "rounds; each runs every case once, the order rotated")
	settle := fs.Duration("settle", 2*time.Second, "wait after starting (and after destroying) before reading memory")
	fs.Parse(args)
	if a.base == "" || *ref == "" || *root == "" || *bSleep == "" || *bServer == "" || *pierPid == 0 {
		fatalf("memory: -api, -image, -runc-root, -bundle-sleep, -bundle-server and -pier-pid are required")
	}
	if *pierCg != "" && memCgroupOf(*pierPid) != filepath.Clean(*pierCg) {
		fatalf("pier server (pid %d) is in memory cgroup %s, not %s", *pierPid, memCgroupOf(*pierPid), *pierCg)
	}
	r := rawRunc{root: *root, logDir: filepath.Dir(*root), cgroup: *rawCg}
	cases := []memCase{
		{name: "nothing started (noise floor)", kind: "none"},
		{name: "pier, `sleep 3600`", kind: "pier", cmd: []string{"/bin/sleep", "3600"}},
		{name: "raw `runc run -d`, `sleep 3600`", kind: "raw", bndl: *bSleep},
		{name: "pier, idle guest HTTP server", kind: "pier", cmd: []string{"/bin/server"}},
		{name: "raw `runc run -d`, idle guest HTTP server", kind: "raw", bndl: *bServer},
	}
	sideStat := func(kind string) cgMem {
		switch {
		case kind == "pier" && *pierCg != "":
			return cgStat(*pierCg)
		case kind == "raw" && *rawCg != "":
			return cgStat(*rawCg)
		}
		return cgMem{}
	}
	// One idle machine of the image runs throughout (not counted), so pier
	// keeps the image unpacked: otherwise the first machine of each case
	// would unpack it and its page cache would be charged to pier, while
	// raw runc's rootfs is there already.
	keeper := a.keeper(*ref)
	defer a.destroy(keeper.ID)
	seq := 0
	one := func(c memCase) memResult {
		var res memResult
		res.busy = waitQuiet(30 * time.Second)
		time.Sleep(*settle)
		avail0, kern0 := hostMem()
		rss0, side0 := rssKB(*pierPid), sideStat(c.kind)
		var pierIDs, rawIDs []string
		for i := 0; i < *n && c.kind != "none"; i++ {
			if c.kind == "pier" {
				m, err := a.create(*ref, c.cmd)
				if err != nil {
					fatalf("%s: %v", c.name, err)
				}
				pierIDs = append(pierIDs, m.ID)
				if err := a.waitStarted(m.ID); err != nil {
					fatalf("%s: %v", c.name, err)
				}
			} else {
				seq++
				id := fmt.Sprintf("bench-idle-%d-%d", os.Getpid(), seq)
				rawIDs = append(rawIDs, id)
				if _, err := r.run(id, c.bndl); err != nil {
					fatalf("%s: %v", c.name, err)
				}
			}
		}
		time.Sleep(*settle)
		avail1, kern1 := hostMem()
		res.availDrop, res.kernDrop = avail0-avail1, kern1-kern0
		res.side = sideStat(c.kind).sub(side0)
		ps := processes()
		switch c.kind {
		case "pier":
			res.pierRSS = rssKB(*pierPid) - rss0
			for _, p := range ps {
				if p.ppid != *pierPid || p.comm != "runc" {
					continue
				}
				if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid)); bytes.Contains(cmdline, []byte(keeper.ID)) {
					continue
				}
				res.runcN++
				res.runcRSS += rssKB(p.pid)
				res.runcPSS += pssKB(p.pid)
				for i, d := range descendants(ps, p.pid) {
					if i == 0 {
						res.machines = res.machines.add(cgStat(memCgroupOf(d.pid)))
					}
					if d.comm == "init" && d.ppid == p.pid { // /.pier/init, pid 1 inside
						res.initPSS += pssKB(d.pid)
						continue
					}
					res.cmdRSS += rssKB(d.pid)
					res.cmdPSS += pssKB(d.pid)
				}
			}
			if res.runcN != *n {
				fatalf("%s: %d `runc run` processes under pier (pid %d), want %d", c.name, res.runcN, *pierPid, *n)
			}
		case "raw":
			for _, id := range rawIDs {
				pid, err := r.pid(id)
				if err != nil {
					fatalf("%s: %v", c.name, err)
				}
				cg := cgStat(memCgroupOf(pid))
				res.machines = res.machines.add(cg)
				// runc puts a container without cgroupsPath (as `runc
				// spec` writes it) below its own cgroup: that part of the
				// starter's growth is the container's, counted above.
				if *rawCg != "" && strings.HasPrefix(memCgroupOf(pid), filepath.Clean(*rawCg)+"/") {
					res.side = res.side.sub(cg)
				}
				for _, d := range append([]procInfo{{pid: pid}}, descendants(ps, pid)...) {
					res.cmdRSS += rssKB(d.pid)
					res.cmdPSS += pssKB(d.pid)
				}
			}
			for _, p := range ps { // -d leaves no runc behind: check
				if !strings.HasPrefix(p.comm, "runc") {
					continue
				}
				if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid)); bytes.Contains(cmdline, []byte(*root)) {
					fatalf("%s: a runc process stayed: pid %d %q", c.name, p.pid, cmdline)
				}
			}
		}
		for _, id := range pierIDs {
			if err := a.destroy(id); err != nil {
				fatalf("%s: %v", c.name, err)
			}
		}
		for _, id := range rawIDs {
			if err := r.delete(id); err != nil {
				fatalf("%s: %v", c.name, err)
			}
		}
		time.Sleep(*settle)
		avail2, _ := hostMem()
		res.availLeft = avail0 - avail2
		return res
	}

	all := make([][]memResult, len(cases))
	for round := 0; round < *rounds; round++ {
		for j := range cases {
			i := (j + round) % len(cases)
			res := one(cases[i])
			all[i] = append(all[i], res)
			progress("round %d/%d, %s: charged %.2f MiB/machine; host MemAvailable %+.1f MiB/machine, kernel %+.2f (machine %.0f%% busy before)",
				round+1, *rounds, cases[i].name, float64(res.machines.usage+res.side.usage)/1024/float64(*n),
				-float64(res.availDrop)/1024/float64(*n), float64(res.kernDrop)/1024/float64(*n), res.busy)
		}
	}

	// med is the median over rounds of one field, per machine, in MiB.
	med := func(rs []memResult, f func(memResult) int64) float64 {
		v := make([]float64, len(rs))
		for i, x := range rs {
			v[i] = float64(f(x)) / 1024 / float64(*n)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	spread := func(rs []memResult, f func(memResult) int64) string {
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, x := range rs {
			v := float64(f(x)) / 1024 / float64(*n)
			lo, hi = min(lo, v), max(hi, v)
		}
		return fmt.Sprintf("%.1f to %.1f", lo, hi)
	}
	f2 := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	charged := func(x memResult) int64 { return x.machines.usage + x.side.usage }
	// hard is what is charged less page cache: anonymous and kernel memory,
	// which the kernel cannot just drop under pressure. Page cache (mostly
	// binaries' pages) is charged once, to whichever cgroup reads a page
	// first, so it lands on one case or another by chance.
	hard := func(x memResult) int64 {
		return x.machines.anon + x.machines.kernel + x.side.anon + x.side.kernel
	}
	parts := func(rs []memResult, g func(memResult) cgMem) string {
		return fmt.Sprintf("%s / %s / %s", f2(med(rs, func(x memResult) int64 { return g(x).anon })),
			f2(med(rs, func(x memResult) int64 { return g(x).file })), f2(med(rs, func(x memResult) int64 { return g(x).kernel })))
	}
	haveCg := *pierCg != "" && *rawCg != ""

	fmt.Printf("\nN = %d idle machines at once, %d rounds (cases rotated each round). Every figure is MiB per machine\n", *n, *rounds)
	fmt.Println("(total / N), the median over rounds. One more idle pier machine of the image runs throughout and is not")
	fmt.Println("counted (it keeps the image unpacked, as raw runc's rootfs is already there).")
	if haveCg {
		fmt.Println()
		fmt.Println("Memory charged to cgroups: each machine's own memory cgroup, plus the growth of the cgroup of whoever")
		fmt.Println("started it. pier server runs alone in a memory cgroup of its own, with the `runc run` processes it")
		fmt.Println("keeps; the network namespaces, veths and overlay mounts it sets up are charged there too, as far as")
		fmt.Println("the kernel accounts them. Raw `runc run -d` runs in another (it exits; what it left counts). These do")
		fmt.Println("not move with other programs on the host, unlike MemAvailable below.")
		fmt.Println()
		fmt.Println("| case | **total charged** | of it anon + kernel | machine cgroups: total (anon / file / kernel) | starter's cgroup growth: total (anon / file / kernel) |")
		fmt.Println("|---|---:|---:|---:|---:|")
		for i, c := range cases[1:] {
			rs := all[i+1]
			fmt.Printf("| %s | **%s** | %s | %s (%s) | %s (%s) |\n", c.name, f2(med(rs, charged)), f2(med(rs, hard)),
				f2(med(rs, func(x memResult) int64 { return x.machines.usage })), parts(rs, func(x memResult) cgMem { return x.machines }),
				f2(med(rs, func(x memResult) int64 { return x.side.usage })), parts(rs, func(x memResult) cgMem { return x.side }))
		}
	}
	fmt.Println()
	fmt.Println("Processes (PSS: shared pages split among the processes mapping them; RSS in brackets) and the host.")
	fmt.Println("MemAvailable and kernel unreclaimable memory (SUnreclaim + PageTables + KernelStack) are host-wide:")
	fmt.Println("other programs move them too, and the \"nothing started\" row (same procedure, no machines) shows by how much.")
	fmt.Println()
	fmt.Println("| case | command PSS (RSS) | pier's init PSS | `runc run` PSS (RSS) | pier server RSS growth | host MemAvailable drop (range over rounds) | host kernel unreclaimable growth | MemAvailable not back after destroy |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	for i, c := range cases {
		rs := all[i]
		field := func(f func(memResult) int64) string { return f2(med(rs, f)) }
		dash := func(ok bool, s string) string {
			if ok {
				return s
			}
			return "-"
		}
		isPier, isMachine := c.kind == "pier", c.kind != "none"
		fmt.Printf("| %s | %s | %s | %s | %s | %s (%s) | %s | %s |\n", c.name,
			dash(isMachine, field(func(x memResult) int64 { return x.cmdPSS })+" ("+field(func(x memResult) int64 { return x.cmdRSS })+")"),
			dash(isPier, field(func(x memResult) int64 { return x.initPSS })),
			dash(isPier, field(func(x memResult) int64 { return x.runcPSS })+" ("+field(func(x memResult) int64 { return x.runcRSS })+")"),
			dash(isPier, field(func(x memResult) int64 { return x.pierRSS })),
			field(func(x memResult) int64 { return x.availDrop }), spread(rs, func(x memResult) int64 { return x.availDrop }),
			field(func(x memResult) int64 { return x.kernDrop }),
			field(func(x memResult) int64 { return x.availLeft }))
	}
	fmt.Println()
	for _, pair := range [][2]int{{1, 2}, {3, 4}} {
		p, raw := all[pair[0]], all[pair[1]]
		name := strings.TrimPrefix(cases[pair[0]].name, "pier, ")
		if haveCg {
			fmt.Printf("%s: pier adds %.2f MiB per machine over raw runc in anon + kernel memory (%.2f vs %.2f); total charged with page cache %.2f vs %.2f; host MemAvailable drop %.2f vs %.2f\n",
				name, med(p, hard)-med(raw, hard), med(p, hard), med(raw, hard), med(p, charged), med(raw, charged),
				med(p, func(x memResult) int64 { return x.availDrop }), med(raw, func(x memResult) int64 { return x.availDrop }))
		} else {
			fmt.Printf("%s: host MemAvailable drop %.2f MiB per pier machine vs %.2f raw\n", name,
				med(p, func(x memResult) int64 { return x.availDrop }), med(raw, func(x memResult) int64 { return x.availDrop }))
		}
	}
}
