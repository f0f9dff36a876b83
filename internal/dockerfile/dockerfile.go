// Package dockerfile builds images from Dockerfiles without a Docker
// daemon, in pier's own build isolation.
//
// # Why pier's own executor
//
// Debian ships buildah (1.28), and BuildKit is a Go module. Neither fits
// as well as a small executor of our own on pier's runc driver:
//
//   - BuildKit needs its daemon (buildkitd) with its own snapshotters,
//     content store, OCI worker and runc invocation: a second container
//     runtime beside pier's, with its own cache and garbage collection,
//     whose build containers get BuildKit's isolation, not pier's (cgroup
//     limits, the build firewall, no host services, [build] network).
//     Embedding it as a library drags in most of containerd.
//   - buildah run by pier as root on the host is a second sandbox too,
//     with different defaults, storage under /var/lib/containers that it
//     reads and writes as root, and its own notion of networks. Run inside
//     one of our build machines instead (rootless), it needs nested user
//     namespaces and mount privileges that the machines' seccomp filter
//     and capability set deny on purpose.
//
// So pier parses Dockerfiles with BuildKit's parser and instruction
// packages (the syntax and error messages are Docker's; those packages
// pull in no daemon) and carries the instructions out itself: every RUN
// is one build machine of the runc driver (build.Sandbox.RunImage), whose
// root is the image's layers stacked as overlay lower directories under a
// fresh upper directory that pier keeps (runtime.Spec.Upper). That
// directory, turned into an OCI layer, is the step's layer, and it is the
// topmost lower directory of the steps after it. COPY and ADD write their
// layer directory themselves, no machine needed.
//
// # Isolation
//
// A RUN step's machine sees the image and nothing of the host: no /usr,
// no pier data dir, no build tree; only what COPY put into the image. It
// runs as the Dockerfile's USER, root by default. Machines have no user
// namespace yet, so root in a build machine is the host's root with the
// reduced capability set (no CAP_SYS_ADMIN, CAP_NET_RAW, ...), no_new_privs,
// a seccomp filter and every namespace but the user one — the same model as
// machines of the machines API. Steps get the build sandbox's cgroup
// limits, its firewall (no host services, no other machines) and network
// egress unless the app sets [build] network = "none".
//
// Layers keep their set-id bits, as in any image: they are unpacked under
// the build's work directory (0700, under pier's data dir), where no other
// host user reaches them, and machines run with no_new_privs, so the bits
// raise no privileges inside either.
//
// # What is supported
//
// FROM (one stage), ARG (before and after FROM; no --build-arg), ENV,
// WORKDIR, USER, RUN (shell and exec form), COPY and ADD of files of the
// build context (--chown, --chmod in octal, --exclude, --link accepted;
// .dockerignore honoured; symbolic links are copied as links, never
// followed; ADD refuses URLs and archives, which Docker would fetch or
// unpack), EXPOSE, CMD, ENTRYPOINT, LABEL, STOPSIGNAL, SHELL, MAINTAINER.
// $VAR, ${VAR}, ${VAR:-default} and the rest of Docker's substitutions
// apply where Docker applies them. Multi-stage builds (FROM ... AS,
// COPY --from), RUN --mount and other RUN flags, heredocs, HEALTHCHECK,
// VOLUME and ONBUILD are refused with the line that uses them.
//
// FROM takes:
//
//	pier/<base>               one of pier's base images (internal/baseimage:
//	                          minimal, go, static, node, python, procfile)
//	scratch                   nothing
//	oci:DIR[:TAG]             an OCI layout, oci-archive:FILE[:TAG] a tar of
//	docker-archive:FILE[:REF] one, or a `docker save` tarball: paths are
//	                          relative to the build context and must stay in
//	                          it (the Dockerfile is untrusted: it reads no
//	                          host file)
//	anything else             a registry reference (alpine:3.20), pulled
//	                          when a registry is reachable
//
// Steps are not cached between builds.
package dockerfile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"

	"github.com/pier-dev/pier/internal/baseimage"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// Runner runs a RUN step: a machine whose root is spec.Rootfs alone, its
// changes kept in spec.Upper (build.Sandbox.RunImage). It returns once
// the machine is gone; the error says how the step failed.
type Runner interface {
	RunImage(ctx context.Context, spec runtime.Spec) error
}

// Bases gives pier's base images (baseimage.Bases).
type Bases interface {
	Get(ctx context.Context, name string, progress io.Writer) (baseimage.Base, error)
}

// Images opens image references (image.Store.Open).
type Images interface {
	Open(ctx context.Context, ref string) (v1.Image, func(), error)
}

// DefaultMaxSize bounds what the FROM image may unpack to when
// Options.MaxSize is 0.
const DefaultMaxSize int64 = 8 << 30

// BasePrefix starts FROM references to pier's base images: FROM pier/node.
// (A Docker Hub image of such a name is docker.io/pier/node.)
const BasePrefix = "pier/"

// Options say what to build and with what.
type Options struct {
	// Context is the build context, the app's source directory; required.
	// COPY and ADD read from it, and oci: references of FROM are relative
	// to it.
	Context string
	// Dockerfile is the Dockerfile's path in Context (default "Dockerfile").
	Dockerfile string
	// WorkDir holds the build's layers and is the caller's to remove once
	// the image is stored (imagestore.Put), or once Build failed: the
	// image's layers are files in it. It is created (0700) when missing;
	// put it under pier's data dir, on the filesystem of the runc driver's
	// StateDir. Its path must not contain ':' or ','.
	WorkDir string
	// ID names the build machines, ID-<step> (default: random); letters,
	// digits, '_', '.' and '-', at most 60 characters.
	ID string
	// App is the app's name, for the machines' logs.
	App string
	// Runner runs RUN steps; required when the Dockerfile has any.
	Runner Runner
	// Bases gives FROM pier/<base>; nil refuses those.
	Bases Bases
	// Images opens every other FROM reference; nil refuses those.
	Images Images
	// NoNetwork cuts RUN steps off from every network ([build] network =
	// "none").
	NoNetwork bool
	// Progress receives "STEP 2/7: RUN make" lines and the steps' output;
	// nil discards them.
	Progress io.Writer
	// MaxSize bounds what the FROM image may unpack to, in bytes (default
	// DefaultMaxSize).
	MaxSize int64
}

// Result is a built image.
type Result struct {
	// Image is an OCI image (OCI manifest and media types) for linux and
	// this machine's architecture. Layers of the FROM image keep their
	// digests; its layer blobs are files under Options.WorkDir, or pier's
	// base cache.
	Image v1.Image
	// Config is the image's runtime configuration: Env, WorkingDir, User,
	// ExposedPorts, Entrypoint, Cmd, Labels, StopSignal.
	Config v1.Config
}

// StartCommand is what a machine of an image with config c runs: its
// entrypoint followed by its command. Empty when the image says nothing.
func StartCommand(c v1.Config) []string {
	return append(slices.Clone(c.Entrypoint), c.Cmd...)
}

// Port is the first TCP port an image with config c exposes (the lowest
// number), or 0 when it exposes none.
func Port(c v1.Config) int {
	best := 0
	for p := range c.ExposedPorts {
		num, proto, _ := strings.Cut(p, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		if n, err := strconv.Atoi(num); err == nil && n > 0 && (best == 0 || n < best) {
			best = n
		}
	}
	return best
}

// Build builds the image the Dockerfile in o.Context describes. Errors of
// the Dockerfile are *LineErrors (in a *pier.Error of the same kind): a
// bad or unsupported instruction, a FROM image that cannot be had, a RUN
// that failed.
func Build(ctx context.Context, o Options) (*Result, error) {
	res, err := build(ctx, o)
	return res, kindOf(err)
}

func build(ctx context.Context, o Options) (*Result, error) {
	if o.Context == "" || o.WorkDir == "" {
		return nil, errors.New("dockerfile: Context and WorkDir are required")
	}
	if o.Dockerfile == "" {
		o.Dockerfile = "Dockerfile"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.ID == "" {
		b := make([]byte, 6)
		rand.Read(b)
		o.ID = "dockerfile-" + hex.EncodeToString(b)
	}
	var err error
	if o.Context, err = filepath.Abs(o.Context); err != nil {
		return nil, err
	}
	if o.WorkDir, err = filepath.Abs(o.WorkDir); err != nil {
		return nil, err
	}
	if strings.ContainsAny(o.WorkDir, ":,") {
		return nil, fmt.Errorf("dockerfile: work directory %s: its path must not contain ':' or ','", o.WorkDir)
	}
	for _, d := range []string{o.WorkDir, filepath.Join(o.WorkDir, "layers"), filepath.Join(o.WorkDir, "blobs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("dockerfile: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("dockerfile: %w", err)
		}
	}
	bc, err := openContext(o.Context)
	if err != nil {
		return nil, pier.Errorf(pier.Invalid, "%v", err)
	}
	defer bc.Close()
	data, err := readDockerfile(bc, o.Dockerfile)
	if err != nil {
		return nil, err
	}
	df, err := parse(data)
	if err != nil {
		return nil, err
	}
	for _, w := range df.warnings {
		fmt.Fprintf(o.Progress, "warning: %s\n", w)
	}
	b := &builder{o: o, ctx: bc, lex: shell.NewLex(df.escape), budget: o.MaxSize, meta: map[string]string{}, args: map[string]string{}}
	if err := b.run(ctx, df); err != nil {
		return nil, err
	}
	return b.image()
}

func readDockerfile(bc *buildContext, name string) ([]byte, error) {
	rel := strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(name)), "/")
	f, err := bc.root.Open(rel)
	if err != nil {
		return nil, pier.Errorf(pier.Invalid, "no %s in the app's directory: %v", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxDockerfile+1))
	if err != nil {
		return nil, pier.Errorf(pier.Invalid, "read %s: %v", name, err)
	}
	return data, nil
}

// builder carries out a Dockerfile.
type builder struct {
	o      Options
	ctx    *buildContext
	lex    *shell.Lex
	budget int64 // bytes the FROM image may still unpack to

	layerSeq int
	lowers   stack      // the image's layer directories, topmost first
	layers   []v1.Layer // the image's layers, bottom first
	history  []v1.History
	cfg      v1.Config
	author   string
	cmdSet   bool // CMD was set by this Dockerfile (ENTRYPOINT then keeps it)

	meta     map[string]string // ARGs before FROM, and the platform ARGs
	args     map[string]string // ARGs of the stage
	argOrder []string
}

func (b *builder) run(ctx context.Context, df *dockerfile) error {
	total := len(df.steps) + 1
	goarch := goruntime.GOARCH
	platform := map[string]string{
		"TARGETPLATFORM": "linux/" + goarch, "TARGETOS": "linux", "TARGETARCH": goarch, "TARGETVARIANT": "",
		"BUILDPLATFORM": "linux/" + goarch, "BUILDOS": "linux", "BUILDARCH": goarch, "BUILDVARIANT": "",
	}
	for k, v := range platform {
		b.meta[k] = v
	}
	for _, a := range df.metaArgs {
		for _, kv := range a.Args {
			v := ""
			if kv.Value != nil {
				var err error
				if v, err = b.expandWith(*kv.Value, mapEnv(b.meta)); err != nil {
					return &LineError{Kind: pier.Invalid, Line: df.fromLine, Instruction: a.String(), Err: err}
				}
			}
			b.meta[kv.Key] = v
		}
	}
	fromErr := func(err error) error {
		return &LineError{Kind: fromKind(err), Line: df.fromLine, Instruction: df.fromText, Err: err}
	}
	ref, err := b.expandWith(df.from, mapEnv(b.meta))
	if err != nil {
		return fromErr(err)
	}
	fmt.Fprintf(b.o.Progress, "STEP 1/%d: %s\n", total, df.fromText)
	if err := b.from(ctx, ref); err != nil {
		return fromErr(err)
	}
	for i, s := range df.steps {
		fmt.Fprintf(b.o.Progress, "STEP %d/%d: %s\n", i+2, total, s.text)
		start := time.Now()
		if err := b.step(ctx, i+2, s); err != nil {
			kind := pier.Invalid
			var ran *stepFailed
			if errors.As(err, &ran) {
				kind, err = pier.Failed, ran.err
			}
			if ctx.Err() != nil {
				return fmt.Errorf("Dockerfile line %d: %s: stopped: %w", s.line, s.text, context.Cause(ctx))
			}
			return &LineError{Kind: kind, Line: s.line, Instruction: s.text, Err: err}
		}
		if _, ok := s.cmd.(*instructions.RunCommand); ok {
			fmt.Fprintf(b.o.Progress, "  done in %s\n", time.Since(start).Round(10*time.Millisecond))
		}
	}
	return nil
}

// stepFailed is a RUN whose command ran and failed (not a bad instruction).
type stepFailed struct{ err error }

func (s *stepFailed) Error() string { return s.err.Error() }

func (b *builder) step(ctx context.Context, n int, s step) error {
	// Docker substitutes variables in these instructions' words; RUN, CMD
	// and ENTRYPOINT are left to the shell.
	if e, ok := s.cmd.(instructions.SupportsSingleWordExpansion); ok {
		if _, isRun := s.cmd.(*instructions.RunCommand); !isRun {
			if err := e.Expand(b.expand); err != nil {
				return err
			}
		}
	}
	switch c := s.cmd.(type) {
	case *instructions.ArgCommand:
		for _, kv := range c.Args {
			v, ok := b.meta[kv.Key]
			if kv.Value != nil {
				v, ok = *kv.Value, true
			}
			if !ok {
				v = ""
			}
			if _, seen := b.args[kv.Key]; !seen {
				b.argOrder = append(b.argOrder, kv.Key)
			}
			b.args[kv.Key] = v
		}
		b.note(s, false)
	case *instructions.EnvCommand:
		for _, kv := range c.Env {
			b.cfg.Env = setEnv(b.cfg.Env, kv.Key, kv.Value)
		}
		b.note(s, false)
	case *instructions.LabelCommand:
		if b.cfg.Labels == nil {
			b.cfg.Labels = map[string]string{}
		}
		for _, kv := range c.Labels {
			b.cfg.Labels[kv.Key] = kv.Value
		}
		b.note(s, false)
	case *instructions.MaintainerCommand:
		b.author = c.Maintainer
		b.note(s, false)
	case *instructions.WorkdirCommand:
		wd := c.Path
		if !path.IsAbs(wd) {
			wd = path.Join(cmp(b.cfg.WorkingDir, "/"), wd)
		}
		b.cfg.WorkingDir = path.Clean(wd)
		b.note(s, false)
	case *instructions.UserCommand:
		b.cfg.User = c.User
		b.note(s, false)
	case *instructions.StopSignalCommand:
		b.cfg.StopSignal = c.Signal
		b.note(s, false)
	case *instructions.ShellCommand:
		b.cfg.Shell = c.Shell
		b.note(s, false)
	case *instructions.ExposeCommand:
		if b.cfg.ExposedPorts == nil {
			b.cfg.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range c.Ports {
			p, err := b.expand(p)
			if err != nil {
				return err
			}
			ports, err := exposed(p)
			if err != nil {
				return err
			}
			for _, port := range ports {
				b.cfg.ExposedPorts[port] = struct{}{}
			}
		}
		b.note(s, false)
	case *instructions.CmdCommand:
		b.cfg.Cmd = b.command(c.ShellDependantCmdLine)
		b.cmdSet = true
		b.note(s, false)
	case *instructions.EntrypointCommand:
		b.cfg.Entrypoint = b.command(c.ShellDependantCmdLine)
		if !b.cmdSet {
			b.cfg.Cmd = nil // the base image's CMD was for its own entrypoint
		}
		b.note(s, false)
	case *instructions.RunCommand:
		return b.runStep(ctx, n, s, c)
	case *instructions.CopyCommand:
		return b.copyStep(s, copySpec{sources: c.SourcePaths, dest: c.DestPath, chown: c.Chown, chmod: c.Chmod, exclude: c.ExcludePatterns})
	case *instructions.AddCommand:
		return b.copyStep(s, copySpec{add: true, sources: c.SourcePaths, dest: c.DestPath, chown: c.Chown, chmod: c.Chmod, exclude: c.ExcludePatterns})
	default:
		return fmt.Errorf("%s is not supported", strings.ToUpper(s.cmd.Name()))
	}
	return nil
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// command turns a CMD, ENTRYPOINT or RUN line into argv: the JSON form as
// it is, the shell form through the image's shell (SHELL, default
// /bin/sh -c).
func (b *builder) command(c instructions.ShellDependantCmdLine) []string {
	if !c.PrependShell {
		return slices.Clone(c.CmdLine)
	}
	sh := b.cfg.Shell
	if len(sh) == 0 {
		sh = []string{"/bin/sh", "-c"}
	}
	return append(slices.Clone(sh), strings.Join(c.CmdLine, " "))
}

// note records an instruction in the image's history.
func (b *builder) note(s step, layer bool) {
	b.history = append(b.history, v1.History{Created: v1.Time{Time: time.Now().UTC()}, CreatedBy: s.text, Comment: "pier", EmptyLayer: !layer})
}

func (b *builder) runStep(ctx context.Context, n int, s step, c *instructions.RunCommand) error {
	if b.o.Runner == nil {
		return errors.New("RUN needs build machines, which this server does not have (run pier as root with runc installed)")
	}
	argv := b.command(c.ShellDependantCmdLine)
	if len(argv) == 0 {
		return errors.New("RUN without a command")
	}
	dir, err := b.newLayerDir()
	if err != nil {
		return err
	}
	lowers := b.lowers
	if len(lowers) == 0 { // FROM scratch: the driver wants a root to stack on
		empty, err := b.newLayerDir()
		if err != nil {
			return err
		}
		lowers = stack{empty}
	}
	env := b.runEnv()
	err = b.o.Runner.RunImage(ctx, runtime.Spec{
		ID: fmt.Sprintf("%s-%d", b.o.ID, n), App: b.o.App,
		Command: argv, Env: env, Stdout: b.o.Progress, Stderr: b.o.Progress,
		Rootfs: lowers, Upper: dir, WorkDir: cmp(b.cfg.WorkingDir, "/"), User: b.cfg.User,
		DenyOutbound: b.o.NoNetwork,
	})
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return &stepFailed{err: err}
	}
	return b.addLayer(s, dir)
}

// runEnv is a RUN step's environment: the image's, then the ARGs the
// image's ENV does not set (as Docker, they are not kept in the image),
// and HOME when neither sets it.
func (b *builder) runEnv() []string {
	env := slices.Clone(b.cfg.Env)
	for _, k := range b.argOrder {
		if _, ok := lookupEnv(env, k); !ok {
			env = append(env, k+"="+b.args[k])
		}
	}
	if _, ok := lookupEnv(env, "HOME"); !ok {
		home := "/"
		if u := b.cfg.User; u == "" || u == "root" || u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root:") {
			home = "/root"
		}
		env = append(env, "HOME="+home)
	}
	return env
}

type copySpec struct {
	add                bool
	sources            []string
	dest, chown, chmod string
	exclude            []string
}

func (b *builder) copyStep(s step, c copySpec) error {
	op := copyOp{add: c.add, sources: c.sources, dest: c.dest, workdir: cmp(b.cfg.WorkingDir, "/")}
	if c.chown != "" {
		uid, gid, err := b.lowers.chownIDs(c.chown)
		if err != nil {
			return fmt.Errorf("--chown=%s: %w", c.chown, err)
		}
		op.uid, op.gid, op.chown = uid, gid, true
	}
	if c.chmod != "" {
		m, err := parseChmod(c.chmod)
		if err != nil {
			return err
		}
		op.chmod = m
	}
	if len(c.exclude) > 0 {
		pm, err := patternmatcher.New(c.exclude)
		if err != nil {
			return fmt.Errorf("--exclude: %w", err)
		}
		op.exclude = pm
	}
	dir, err := b.newLayerDir()
	if err != nil {
		return err
	}
	if err := b.ctx.copyInto(op, dir, b.lowers); err != nil {
		return err
	}
	return b.addLayer(s, dir)
}

// newLayerDir makes the directory of the next layer, its root with the
// image root's attributes (the topmost layer's root is the machine's /).
func (b *builder) newLayerDir() (string, error) {
	b.layerSeq++
	dir := filepath.Join(b.o.WorkDir, "layers", strconv.Itoa(b.layerSeq))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", err
	}
	mode, uid, gid := b.lowers.dirAttrs("")
	if err := os.Lchown(dir, uid, gid); err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, mode)
}

// addLayer turns a finished layer directory into the image's next layer
// and the topmost lower directory of the steps that follow.
func (b *builder) addLayer(s step, dir string) error {
	fl, err := writeLayer(dir, filepath.Join(b.o.WorkDir, "blobs", filepath.Base(dir)+".tar.gz"))
	if err != nil {
		return err
	}
	l, err := fl.layer()
	if err != nil {
		return err
	}
	b.layers = append(b.layers, l)
	b.lowers = append(stack{dir}, b.lowers...)
	b.note(s, true)
	return nil
}

// expand substitutes variables in a word of an instruction: the image's
// ENV first, then the stage's ARGs.
func (b *builder) expand(word string) (string, error) {
	m := map[string]string{}
	for _, k := range b.argOrder {
		m[k] = b.args[k]
	}
	for _, kv := range b.cfg.Env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return b.expandWith(word, mapEnv(m))
}

func (b *builder) expandWith(word string, env mapEnv) (string, error) {
	s, _, err := b.lex.ProcessWord(word, env)
	return s, err
}

// mapEnv is a variable lookup for shell.Lex.
type mapEnv map[string]string

func (m mapEnv) Get(k string) (string, bool) { v, ok := m[k]; return v, ok }

func (m mapEnv) Keys() []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if key, _, _ := strings.Cut(kv, "="); key == k {
			env = slices.Clone(env)
			env[i] = k + "=" + v
			return env
		}
	}
	return append(slices.Clone(env), k+"="+v)
}

func lookupEnv(env []string, k string) (string, bool) {
	for _, kv := range env {
		if key, v, ok := strings.Cut(kv, "="); ok && key == k {
			return v, true
		}
	}
	return "", false
}

// exposed reads an EXPOSE word: 80, 80/tcp, 53/udp, 8000-8002/tcp.
func exposed(spec string) ([]string, error) {
	ports, proto, _ := strings.Cut(spec, "/")
	proto = strings.ToLower(cmp(proto, "tcp"))
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return nil, fmt.Errorf("EXPOSE %s: unknown protocol %q", spec, proto)
	}
	lo, hi, isRange := strings.Cut(ports, "-")
	first, err1 := strconv.Atoi(lo)
	last := first
	var err2 error
	if isRange {
		last, err2 = strconv.Atoi(hi)
	}
	if err1 != nil || err2 != nil || first < 1 || last > 65535 || last < first || last-first > 1000 {
		return nil, fmt.Errorf("EXPOSE %s: want a port (1-65535) or a range of ports, with /tcp or /udp", spec)
	}
	var out []string
	for p := first; p <= last; p++ {
		out = append(out, fmt.Sprintf("%d/%s", p, proto))
	}
	return out, nil
}

// image assembles the built image: OCI media types, the FROM image's
// layers as they were, then the build's.
func (b *builder) image() (*Result, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(b.layers))
	for _, l := range b.layers {
		mt, err := l.MediaType()
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{Layer: l, MediaType: ociMediaType(mt)})
	}
	img, err := mutate.Append(base, adds...)
	if err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Config = b.cfg
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	cf.Author = b.author
	cf.Created = v1.Time{Time: time.Now().UTC()}
	cf.History = b.history
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	return &Result{Image: img, Config: b.cfg}, nil
}

// ociMediaType is the OCI name of a layer's media type (Docker's gzip
// layers are the same bytes as OCI's).
func ociMediaType(mt types.MediaType) types.MediaType {
	switch mt {
	case types.DockerLayer, "":
		return types.OCILayer
	case types.DockerUncompressedLayer:
		return types.OCIUncompressedLayer
	}
	return mt
}
