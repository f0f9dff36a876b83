// Package build turns an app's source directory into a release artifact: it
// detects what kind of app it is (Go, Node, Python, static site, Procfile),
// runs the build, and says how to start the result.
package build

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/pier"
)

// Plan says how to build and start an app.
type Plan struct {
	Builder string   // dockerfile, go, node, python, static or procfile
	Steps   []string // shell commands run in order in the artifact directory
	Start   string   // shell command that runs the app; empty for static sites
	// NoNetwork: build steps reach nothing beyond their build machine.
	NoNetwork bool
}

// Detect works out the plan for the source in dir, honouring overrides from
// pier.toml (cfg may be nil).
func Detect(dir string, cfg *appconfig.Config) (Plan, error) {
	var b appconfig.Build
	if cfg != nil {
		b = cfg.Build
	}
	builder := b.Builder
	if builder == "" {
		builder = detectBuilder(dir)
	}
	if builder == "" {
		if b.Start != "" {
			builder = "procfile" // a start command alone is enough to run
		} else {
			return Plan{}, pier.Errorf(pier.Invalid, "no app detected in %s: add a Dockerfile, go.mod, package.json, requirements.txt, app.py, index.html or Procfile, or set [build] start in pier.toml", dir)
		}
	}
	var p Plan
	var err error
	switch builder {
	case "dockerfile":
		if !exists(dir, "Dockerfile") {
			return Plan{}, pier.Errorf(pier.Invalid, "pier.toml says builder = \"dockerfile\" but %s has no Dockerfile", dir)
		}
		if b.Command != "" {
			return Plan{}, pier.Errorf(pier.Invalid, "pier.toml: [build] command does not apply to Dockerfile builds: put build steps in the Dockerfile's RUN lines")
		}
		p = Plan{}
	case "go":
		p = Plan{Steps: []string{"go build -o .pier/bin/app ."}, Start: "./.pier/bin/app"}
	case "node":
		p, err = nodePlan(dir)
	case "python":
		p, err = pythonPlan(dir)
	case "static":
		p = Plan{}
	case "procfile":
		p = Plan{}
	default:
		return Plan{}, pier.Errorf(pier.Invalid, "unknown builder %q", builder)
	}
	if err != nil {
		return Plan{}, err
	}
	p.Builder = builder
	// A Procfile's web process wins over the builder's start command.
	if web, err := procfileWeb(dir); err != nil {
		return Plan{}, err
	} else if web != "" && builder != "static" && builder != "dockerfile" {
		p.Start = web
	}
	if b.Command != "" {
		p.Steps = []string{b.Command}
	}
	if b.Start != "" {
		p.Start = b.Start
	}
	p.NoNetwork = b.Network == "none"
	if p.Start == "" && builder != "static" && builder != "dockerfile" {
		return Plan{}, pier.Errorf(pier.Invalid, "%s app in %s has no start command: add a Procfile with a `web:` line or set [build] start in pier.toml", builder, dir)
	}
	return p, nil
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

func detectBuilder(dir string) string {
	switch {
	case exists(dir, "Dockerfile"):
		return "dockerfile"
	case exists(dir, "go.mod"):
		return "go"
	case exists(dir, "package.json"):
		return "node"
	case exists(dir, "requirements.txt"), exists(dir, "pyproject.toml"), exists(dir, "app.py"), exists(dir, "main.py"):
		return "python"
	case exists(dir, "Procfile"):
		return "procfile"
	case exists(dir, "index.html"):
		return "static"
	}
	return ""
}

func nodePlan(dir string) (Plan, error) {
	b, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil {
		return Plan{}, err
	}
	var pkg struct {
		Main            string            `json:"main"`
		Scripts         map[string]string `json:"scripts"`
		Dependencies    map[string]string `json:"dependencies"`
		DevDependencies map[string]string `json:"devDependencies"`
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		return Plan{}, pier.Errorf(pier.Invalid, "package.json is not valid JSON: %v", err)
	}
	var p Plan
	switch {
	case exists(dir, "package-lock.json"):
		p.Steps = append(p.Steps, "npm ci --no-audit --no-fund")
	case len(pkg.Dependencies)+len(pkg.DevDependencies) > 0:
		p.Steps = append(p.Steps, "npm install --no-audit --no-fund")
	}
	if _, ok := pkg.Scripts["build"]; ok {
		p.Steps = append(p.Steps, "npm run build")
	}
	switch {
	case pkg.Scripts["start"] != "":
		p.Start = "npm start"
	case pkg.Main != "":
		p.Start = "node " + shellQuote(pkg.Main)
	case exists(dir, "server.js"):
		p.Start = "node server.js"
	case exists(dir, "index.js"):
		p.Start = "node index.js"
	}
	return p, nil
}

func pythonPlan(dir string) (Plan, error) {
	var p Plan
	python := "python3"
	if needsVenv(dir) {
		p.Steps = append(p.Steps, "python3 -m venv .venv")
		if exists(dir, "requirements.txt") {
			p.Steps = append(p.Steps, ".venv/bin/pip install --disable-pip-version-check -r requirements.txt")
		} else {
			p.Steps = append(p.Steps, ".venv/bin/pip install --disable-pip-version-check .")
		}
		python = ".venv/bin/python"
	}
	for _, f := range []string{"app.py", "main.py", "server.py"} {
		if exists(dir, f) {
			p.Start = python + " " + f
			break
		}
	}
	return p, nil
}

// needsVenv reports whether the app declares third-party packages; a
// stdlib-only app (no requirements, or an empty requirements.txt) runs on the
// system python without touching a package index.
func needsVenv(dir string) bool {
	if f, err := os.Open(filepath.Join(dir, "requirements.txt")); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line != "" && !strings.HasPrefix(line, "#") {
				return true
			}
		}
		return false
	}
	return exists(dir, "pyproject.toml")
}

// procfileWeb returns the command of the Procfile's web process, if any.
func procfileWeb(dir string) (string, error) {
	f, err := os.Open(filepath.Join(dir, "Procfile"))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	var first string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, cmd, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(cmd) == "" {
			return "", pier.Errorf(pier.Invalid, "Procfile:%d: want `name: command`, got %q", n, line)
		}
		if strings.TrimSpace(name) == "web" {
			return strings.TrimSpace(cmd), nil
		}
		if first == "" {
			first = strings.TrimSpace(cmd)
		}
	}
	if first != "" {
		return "", pier.Errorf(pier.Invalid, "Procfile has no `web:` process; pier serves the web process (rename the one that listens on $PORT to web)")
	}
	return "", sc.Err()
}

func shellQuote(s string) string {
	if strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Describe is a one-line summary for progress output.
func (p Plan) Describe() string {
	steps := "no build step"
	if len(p.Steps) > 0 {
		steps = strings.Join(p.Steps, " && ")
	}
	start := p.Start
	switch {
	case p.Builder == "static":
		start = "pier serves the files"
	case p.Builder == "dockerfile":
		steps = "the Dockerfile, in build machines"
		if start == "" {
			start = "the image's ENTRYPOINT and CMD"
		}
	}
	return fmt.Sprintf("builder %s (build: %s; start: %s)", p.Builder, steps, start)
}
