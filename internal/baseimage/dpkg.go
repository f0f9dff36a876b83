package baseimage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// pkg is one installed package, as dpkg's status file describes it.
type pkg struct {
	Name, Arch, Version string
	// Depends and Pre-Depends, as written (version constraints and all).
	Depends, PreDepends string
	Provides            string
}

// ID is how a base lists the package: name=version.
func (p *pkg) ID() string { return p.Name + "=" + p.Version }

// diversion says that a path's files of every package but By live at To
// (dpkg-divert). By is ":" for a local diversion, which moves everybody's.
type diversion struct{ To, By string }

// dpkgDB is the part of dpkg's database under root that bases are made
// from: installed packages of the native architecture (or "all"), who
// provides which virtual package, and diversions.
type dpkgDB struct {
	root      string // the host's root, "/" but in tests
	native    string
	pkgs      map[string]*pkg
	providers map[string][]string // virtual name -> installed package names, sorted
	divs      map[string]diversion
}

func (db *dpkgDB) admin() string { return filepath.Join(db.root, "var/lib/dpkg") }

// loadDB reads root's dpkg status and diversions files.
func loadDB(root string) (*dpkgDB, error) {
	db := &dpkgDB{root: root, pkgs: map[string]*pkg{}, providers: map[string][]string{}}
	raw, err := os.ReadFile(filepath.Join(db.admin(), "status"))
	if err != nil {
		return nil, fmt.Errorf("read dpkg database (is this a Debian host?): %w", err)
	}
	all := parseStatus(raw)
	for _, p := range all {
		if p.Name == "dpkg" {
			db.native = p.Arch
		}
	}
	if db.native == "" {
		db.native = debianArch(runtime.GOARCH)
	}
	for _, p := range all {
		if p.Arch != db.native && p.Arch != "all" {
			continue // a foreign architecture's copy (multiarch): not for this machine
		}
		db.pkgs[p.Name] = p
	}
	for _, p := range db.pkgs {
		for _, v := range splitList(p.Provides) {
			db.providers[depName(v)] = append(db.providers[depName(v)], p.Name)
		}
	}
	for _, names := range db.providers {
		slices.Sort(names)
	}
	db.divs, err = readDiversions(filepath.Join(db.admin(), "diversions"))
	if err != nil {
		return nil, err
	}
	return db, nil
}

// parseStatus returns the installed packages of a dpkg status file.
func parseStatus(raw []byte) []*pkg {
	var out []*pkg
	for stanza := range bytes.SplitSeq(raw, []byte("\n\n")) {
		var p pkg
		var status, last string
		fields := map[string]*string{
			"Package": &p.Name, "Architecture": &p.Arch, "Version": &p.Version,
			"Depends": &p.Depends, "Pre-Depends": &p.PreDepends, "Provides": &p.Provides,
			"Status": &status,
		}
		for line := range strings.SplitSeq(string(stanza), "\n") {
			if line == "" {
				continue
			}
			if line[0] == ' ' || line[0] == '\t' { // continuation of the last field
				if f := fields[last]; f != nil {
					*f += " " + strings.TrimSpace(line)
				}
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = k
			if f := fields[k]; f != nil {
				*f = strings.TrimSpace(v)
			}
		}
		if p.Name != "" && installed(status) {
			out = append(out, &p)
		}
	}
	return out
}

// installed says whether a Status field ("want flag status") means the
// package's files are on disk and its dependencies satisfied, the states
// in which dpkg counts it as installed.
func installed(status string) bool {
	f := strings.Fields(status)
	if len(f) != 3 {
		return false
	}
	switch f[2] {
	case "installed", "triggers-pending", "triggers-awaited":
		return true
	}
	return false
}

func readDiversions(file string) (map[string]diversion, error) {
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]diversion{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read dpkg diversions: %w", err)
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	m := map[string]diversion{}
	for i := 0; i+2 < len(lines); i += 3 { // from, to, package: three lines each
		m[lines[i]] = diversion{To: lines[i+1], By: lines[i+2]}
	}
	return m, nil
}

// debianArch maps a Go architecture to dpkg's name for it.
func debianArch(goarch string) string {
	switch goarch {
	case "386":
		return "i386"
	case "arm":
		return "armhf"
	case "ppc64le":
		return "ppc64el"
	}
	return goarch
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// depName is the package name of one alternative of a relation such as
// "libc6:amd64 (>= 2.34) [amd64]": version, architecture restrictions and
// qualifiers are ignored, the package installed being the one there is.
func depName(alt string) string {
	alt = strings.TrimSpace(alt)
	if i := strings.IndexAny(alt, " ([<"); i >= 0 {
		alt = alt[:i]
	}
	name, _, _ := strings.Cut(alt, ":")
	return name
}

// resolve returns the installed package that satisfies name: the package
// itself, or else the first (by name) installed package providing it.
func (db *dpkgDB) resolve(name string) *pkg {
	if p := db.pkgs[name]; p != nil {
		return p
	}
	if ps := db.providers[name]; len(ps) > 0 {
		return db.pkgs[ps[0]]
	}
	return nil
}

// closure returns the installed packages that required and the optional
// ones that are installed need, following Depends and Pre-Depends, sorted
// by name. For alternatives ("a | b") the first installed one is taken.
func (db *dpkgDB) closure(base string, required, optional []string) ([]*pkg, error) {
	seen := map[string]*pkg{}
	var queue []*pkg
	add := func(p *pkg) {
		if seen[p.Name] == nil {
			seen[p.Name] = p
			queue = append(queue, p)
		}
	}
	for _, n := range required {
		p := db.resolve(n)
		if p == nil {
			return nil, &MissingPackageError{Base: base, Package: n}
		}
		add(p)
	}
	for _, n := range optional {
		if p := db.resolve(n); p != nil {
			add(p)
		}
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, group := range splitList(p.PreDepends + "," + p.Depends) {
			var dep *pkg
			alts := strings.Split(group, "|")
			for _, alt := range alts {
				if dep = db.resolve(depName(alt)); dep != nil {
					break
				}
			}
			if dep == nil {
				// dpkg does not leave a package installed with a dependency
				// missing, unless forced to: installing the first choice fixes it.
				return nil, &MissingPackageError{Base: base, Package: depName(alts[0]), For: p.Name}
			}
			add(dep)
		}
	}
	out := make([]*pkg, 0, len(seen))
	for _, p := range seen {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *pkg) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// files returns the paths p's .list names, with diverted paths replaced
// by where p's version of them really is. Paths are absolute and clean.
func (db *dpkgDB) files(p *pkg) ([]string, error) {
	info := filepath.Join(db.admin(), "info")
	f, err := os.Open(filepath.Join(info, p.Name+":"+p.Arch+".list"))
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.Open(filepath.Join(info, p.Name+".list"))
	}
	if err != nil {
		return nil, fmt.Errorf("files of package %s: %w", p.Name, err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name := sc.Text()
		if !strings.HasPrefix(name, "/") {
			continue
		}
		if d, ok := db.divs[name]; ok && d.By != p.Name {
			name = d.To
		}
		if name = path.Clean(name); name != "/" {
			out = append(out, name)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("files of package %s: %w", p.Name, err)
	}
	return out, nil
}
