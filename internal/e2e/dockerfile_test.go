package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-dev/pier/internal/testimage"
)

// TestDockerfileApp launches an app built from its Dockerfile, whose FROM
// is a local OCI image the test makes: its RUN steps run isolated (they
// cannot read the host's files), EXPOSE and CMD are honoured, and
// pier.toml can still override the start command.
func TestDockerfileApp(t *testing.T) {
	needRunc(t)
	if _, err := os.Stat(testimage.Busybox); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("static busybox is required in CI (scripts/deps.sh installs busybox-static)")
		}
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	s := startRuncServer(t)
	dir := t.TempDir()
	if _, err := testimage.WriteBusybox(filepath.Join(dir, "base"), "latest"); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "site"), 0o755)
	writeFile(t, filepath.Join(dir, "site", "index.html"), "hello from a Dockerfile")
	writeFile(t, filepath.Join(dir, "Dockerfile"), `FROM oci:./base:latest
ENV GREETING=hi
RUN cat /etc/shadow && echo LEAKED-SHADOW || echo no-host-shadow
RUN ls `+s.dataDir+` /usr/lib /work && echo LEAKED-HOST-DIRS || echo no-host-dirs
COPY site /www
RUN echo "built as $(id -u) with $GREETING" > /www/built.txt
EXPOSE 9000
CMD ["httpd", "-f", "-p", "9000", "-h", "/www"]
`)
	out, err := s.pier("launch", dir, "--name", "docker", "--yes")
	if err != nil {
		t.Fatalf("launch: %v\n%s", err, out)
	}
	for _, want := range []string{"Detected a dockerfile app", "STEP", "no-host-shadow", "no-host-dirs"} {
		if !strings.Contains(out, want) {
			t.Errorf("launch output lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if l := strings.TrimSpace(line); l == "LEAKED-SHADOW" || l == "LEAKED-HOST-DIRS" {
			t.Errorf("a RUN step saw the host's files (%s):\n%s", l, out)
		}
	}
	s.mustGet("docker", "/", "hello from a Dockerfile")
	s.mustGet("docker", "/built.txt", "built as 0 with hi")
	if rels := s.mustPier("releases", "-a", "docker"); !strings.Contains(rels, "dockerfile") || !strings.Contains(rels, "sha256:") {
		t.Errorf("releases:\n%s", rels)
	}

	// [build] start overrides the image's CMD; PORT is still the EXPOSEd port.
	writeFile(t, filepath.Join(dir, "pier.toml"), "app = \"docker\"\n[build]\nstart = \"echo overridden > /tmp/index.html && httpd -f -p $PORT -h /tmp\"\n")
	if out, err := s.pier("deploy", dir); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	s.mustGet("docker", "/", "overridden")
}

// TestDockerfileNeedsIsolation: a server that cannot isolate builds
// refuses a Dockerfile app with the fix, and changes nothing.
func TestDockerfileNeedsIsolation(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "Dockerfile"), "FROM pier/minimal\nCMD [\"true\"]\n")
	out, err := s.pier("launch", dir, "--name", "docker", "--yes")
	if err == nil || !strings.Contains(out, "Dockerfile builds need isolated build machines") {
		t.Fatalf("launch: %v\n%s", err, out)
	}
	if rels, _ := s.pier("releases", "-a", "docker"); strings.Contains(rels, "v1") {
		t.Errorf("a refused deploy made a release:\n%s", rels)
	}
}
