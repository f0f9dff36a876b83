package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/pier"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDetect(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		cfg     string
		builder string
		steps   []string
		start   string
		err     string
	}{
		{"go", map[string]string{"go.mod": "module x"}, "", "go", []string{"go build -o .pier/bin/app ."}, "./.pier/bin/app", ""},
		{"node main", map[string]string{"package.json": `{"main":"srv.js"}`}, "", "node", nil, "node srv.js", ""},
		{"node start script with lock", map[string]string{"package.json": `{"scripts":{"start":"node a.js","build":"tsc"},"dependencies":{"x":"1"}}`, "package-lock.json": "{}"}, "", "node",
			[]string{"npm ci --no-audit --no-fund", "npm run build"}, "npm start", ""},
		{"node deps without lock", map[string]string{"package.json": `{"dependencies":{"x":"1"}}`, "index.js": ""}, "", "node", []string{"npm install --no-audit --no-fund"}, "node index.js", ""},
		{"node bad json", map[string]string{"package.json": `{`}, "", "", nil, "", "package.json is not valid JSON"},
		{"python stdlib", map[string]string{"app.py": "", "requirements.txt": "# nothing\n\n"}, "", "python", nil, "python3 app.py", ""},
		{"python deps", map[string]string{"main.py": "", "requirements.txt": "flask\n"}, "", "python",
			[]string{"python3 -m venv .venv", ".venv/bin/pip install --disable-pip-version-check -r requirements.txt"}, ".venv/bin/python main.py", ""},
		{"python without entry", map[string]string{"requirements.txt": ""}, "", "", nil, "", "python app in"},
		{"procfile wins start", map[string]string{"app.py": "", "Procfile": "web: gunicorn app:app\nworker: x\n"}, "", "python", nil, "gunicorn app:app", ""},
		{"procfile only", map[string]string{"Procfile": "web: ./run.sh"}, "", "procfile", nil, "./run.sh", ""},
		{"procfile without web", map[string]string{"Procfile": "worker: ./w"}, "", "", nil, "", "Procfile has no `web:` process"},
		{"procfile malformed", map[string]string{"Procfile": "just a command"}, "", "", nil, "", "Procfile:1"},
		{"static", map[string]string{"index.html": "<h1>"}, "", "static", nil, "", ""},
		{"nothing", map[string]string{"README": ""}, "", "", nil, "", "no app detected in"},
		{"config start only", map[string]string{"README": ""}, "[build]\nstart = \"./x\"\n", "procfile", nil, "./x", ""},
		{"config overrides", map[string]string{"go.mod": ""}, "[build]\nbuilder = \"go\"\ncommand = \"make\"\nstart = \"./bin/x\"\n", "go", []string{"make"}, "./bin/x", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeTree(t, tt.files)
			var cfg *appconfig.Config
			if tt.cfg != "" {
				var err error
				if cfg, err = appconfig.Parse("pier.toml", []byte(tt.cfg)); err != nil {
					t.Fatal(err)
				}
			}
			p, err := Detect(dir, cfg)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || pier.KindOf(err) != pier.Invalid {
					t.Fatalf("err = %v, want Invalid containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Builder != tt.builder || p.Start != tt.start || strings.Join(p.Steps, "|") != strings.Join(tt.steps, "|") {
				t.Fatalf("plan = %+v; want builder %s steps %v start %q", p, tt.builder, tt.steps, tt.start)
			}
		})
	}
}

func TestPackExtractRoundTripSkipsCaches(t *testing.T) {
	src := writeTree(t, map[string]string{"main.go": "package main", "sub/a.txt": "a", ".git/HEAD": "x", "node_modules/m/i.js": "x"})
	os.Symlink("sub/a.txt", filepath.Join(src, "link"))
	var buf bytes.Buffer
	if err := Pack(src, &buf); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := Extract(&buf, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "link")); err != nil || string(b) != "a" {
		t.Errorf("link: %q %v", b, err)
	}
	for _, gone := range []string{".git", "node_modules"} {
		if _, err := os.Stat(filepath.Join(dst, gone)); !os.IsNotExist(err) {
			t.Errorf("%s was uploaded", gone)
		}
	}
}

func tarOf(t *testing.T, hdrs ...*tar.Header) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = 1
		}
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("x"))
		}
	}
	tw.Close()
	gz.Close()
	return &buf
}

func TestExtractRejectsEscapes(t *testing.T) {
	tests := map[string]*tar.Header{
		"dotdot":        {Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644},
		"absolute":      {Name: "/etc/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		"link out":      {Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../../etc/passwd"},
		"absolute link": {Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
	}
	for name, hdr := range tests {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "d")
			os.Mkdir(dst, 0o755)
			err := Extract(tarOf(t, hdr), dst)
			if err == nil || pier.KindOf(err) != pier.Invalid {
				t.Fatalf("Extract = %v, want an Invalid error", err)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dst), "evil")); err == nil {
				t.Fatal("a file was written outside the target")
			}
		})
	}
	if err := Extract(strings.NewReader("not gzip"), t.TempDir()); pier.KindOf(err) != pier.Invalid {
		t.Fatalf("garbage upload: %v", err)
	}
}

// TestExtractLinkChainsStayInside is the red team's tar slip: links that
// each look local on their own but, chained, lead out of the upload dir,
// then a file written through them. Nothing may land outside, and the
// upload is refused.
func TestExtractLinkChainsStayInside(t *testing.T) {
	link := func(name, target string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}
	}
	file := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644} }
	dir := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	tests := map[string][]*tar.Header{
		"red team chain":             {dir("a"), link("a/b", ".."), link("a/b/c", ".."), link("x", "a/b/c/.."), link("y", "x/.."), file("y/evil")},
		"file under a link to a dir": {dir("a"), link("a/b", ".."), file("a/b/evil")},
		"dir under a link":           {dir("a"), link("a/b", ".."), dir("a/b/sub"), file("a/b/sub/evil")},
		"link through a link":        {dir("a"), dir("a/d"), link("a/d/up", ".."), link("a/x", "d/up/../.."), file("ok")},
		"file over a link":           {link("l", "f"), file("l")},
		"loop":                       {link("p", "q"), link("q", "p/r")},
	}
	for name, hdrs := range tests {
		t.Run(name, func(t *testing.T) {
			// outer/in is the upload dir; outer/in2 and outer/evil must
			// stay absent.
			outer := t.TempDir()
			dst := filepath.Join(outer, "in")
			os.Mkdir(dst, 0o755)
			err := Extract(tarOf(t, hdrs...), dst)
			if pier.KindOf(err) != pier.Invalid {
				t.Fatalf("Extract = %v, want an Invalid error", err)
			}
			filepath.WalkDir(outer, func(p string, d fs.DirEntry, err error) error {
				if err == nil && p != outer && p != dst && !strings.HasPrefix(p, dst+string(filepath.Separator)) {
					t.Errorf("%s was written outside the upload dir", p)
				}
				return err
			})
		})
	}
	t.Run("links inside the tree are kept", func(t *testing.T) {
		dst := t.TempDir()
		err := Extract(tarOf(t, dir("a"), dir("a/d"), file("a/d/f"), link("a/up", "d/../d/f"), link("top", "a/d"), link("dangling", "not/yet")), dst)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(dst, "top", "f")); err != nil || string(b) != "x" {
			t.Fatalf("top/f = %q, %v", b, err)
		}
	})
}

func TestExtractBoundsEntries(t *testing.T) {
	hdrs := make([]*tar.Header, MaxSourceEntries+1)
	for i := range hdrs {
		// FIFOs are counted and never made: the test stays quick.
		hdrs[i] = &tar.Header{Name: fmt.Sprintf("f%d", i), Typeflag: tar.TypeFifo, Mode: 0o644}
	}
	dst := t.TempDir()
	err := Extract(tarOf(t, hdrs...), dst)
	if pier.KindOf(err) != pier.Invalid || !strings.Contains(err.Error(), "more than 50000 files") {
		t.Fatalf("Extract = %v, want the entry limit", err)
	}
}

// FuzzExtract feeds Extract arbitrary tar streams: it must never write
// outside its dir, nor panic.
func FuzzExtract(f *testing.F) {
	f.Add([]byte("a\x00"), "..", "a/b/evil")
	f.Add([]byte("x"), "a/b/c/..", "y/evil")
	f.Fuzz(func(t *testing.T, body []byte, linkTarget, name string) {
		outer := t.TempDir()
		dst := filepath.Join(outer, "in")
		os.Mkdir(dst, 0o755)
		var buf bytes.Buffer
		gz := gzip.NewWriter(&buf)
		tw := tar.NewWriter(gz)
		parts := strings.Split(name, "/")
		for i := range parts {
			p := strings.Join(parts[:i+1], "/")
			tw.WriteHeader(&tar.Header{Name: p + "l", Typeflag: tar.TypeSymlink, Linkname: linkTarget})
			tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeDir, Mode: 0o755})
		}
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
		tw.WriteHeader(&tar.Header{Name: strings.ReplaceAll(name, "/", "l/") + "2", Typeflag: tar.TypeReg, Mode: 0o644})
		tw.Close()
		gz.Close()
		Extract(&buf, dst)
		entries, _ := os.ReadDir(outer)
		if len(entries) != 1 {
			t.Fatalf("Extract wrote outside its dir: %v", entries)
		}
	})
}

func TestBuildFailureLeavesNothingAndSuccessIsStored(t *testing.T) {
	b := &Builder{Dir: t.TempDir()}
	src := writeTree(t, map[string]string{"f": "x"})
	_, err := b.Build(context.Background(), "web", src, Plan{Steps: []string{"echo building; exit 4"}}, &bytes.Buffer{})
	if pier.KindOf(err) != pier.Failed || !strings.Contains(err.Error(), "exit 4") {
		t.Fatalf("failed build: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(b.Dir, "web")); len(entries) != 0 {
		t.Fatalf("a failed build left %v", entries)
	}

	src = writeTree(t, map[string]string{"f": "x"})
	var out bytes.Buffer
	res, err := b.Build(context.Background(), "web", src, Plan{Steps: []string{"echo built > out.txt", "echo step two"}}, &out)
	id := res.ID
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(b.Path("web", id), "out.txt")); string(got) != "built\n" {
		t.Fatalf("build output file = %q", got)
	}
	if !strings.Contains(out.String(), "$ echo step two\nstep two\n") {
		t.Fatalf("build log:\n%s", out.String())
	}
}

func TestBuildStepIsKilledOnTimeout(t *testing.T) {
	b := &Builder{Dir: t.TempDir()}
	ctx, cancel := context.WithTimeoutCause(context.Background(), 200*time.Millisecond, errors.New("too slow"))
	defer cancel()
	begin := time.Now()
	_, err := b.Build(ctx, "web", writeTree(t, map[string]string{"f": ""}), Plan{Steps: []string{"sleep 30 & sleep 30; wait"}}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "too slow") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(begin) > 20*time.Second {
		t.Fatal("the step's processes were not killed")
	}
}

func TestBuildEnvDropsPierSettings(t *testing.T) {
	t.Setenv("PIER_TOKEN", "secret")
	for _, kv := range BuildEnv() {
		if strings.HasPrefix(kv, "PIER_") {
			t.Fatalf("build env has %s", kv)
		}
	}
}
