package cli

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exportServer fakes the export route: the current release exports
// "ARCHIVE(format)", v3 breaks off midway and v1 has no image.
func exportServer(t *testing.T) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/apps/web/releases/{version}/image", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer pier_test" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.PathValue("version") {
		case "current":
			w.Write([]byte("ARCHIVE(" + r.URL.Query().Get("format") + ")"))
		case "v3":
			w.Write(bytes.Repeat([]byte("x"), 64<<10))
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error": "release v1 of web has no image (it was built before pier kept images): deploy again to make one"}`))
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Setenv("PIER_API", srv.URL)
	t.Setenv("PIER_TOKEN", "pier_test")
}

func runCLI(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	root := NewRoot(strings.NewReader(""), &out, &errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func TestReleasesExport(t *testing.T) {
	exportServer(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "web.tar")
	onlyOut := func(t *testing.T, want string) {
		t.Helper()
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if len(names) != 1 || names[0] != "web.tar" {
			t.Errorf("%s holds %v, want web.tar alone", dir, names)
		}
		if b, _ := os.ReadFile(out); string(b) != want {
			t.Errorf("web.tar holds %.40q, want %q", b, want)
		}
	}

	_, stderr, err := runCLI("releases", "export", "-a", "web", "-o", out)
	if err != nil {
		t.Fatal(err)
	}
	onlyOut(t, "ARCHIVE(docker)")
	if !strings.Contains(stderr, "wrote the current release of web to "+out+" (docker-archive") {
		t.Errorf("stderr: %q", stderr)
	}
	if _, _, err := runCLI("releases", "export", "-a", "web", "--format", "oci", "-o", out); err != nil {
		t.Fatal(err)
	}
	onlyOut(t, "ARCHIVE(oci)")

	// Failures leave the earlier file as it was and no temporary file.
	_, _, err = runCLI("releases", "export", "-a", "web", "v3", "-o", out)
	if err == nil || !strings.Contains(err.Error(), "broke off") {
		t.Errorf("an export cut off midway: %v", err)
	}
	onlyOut(t, "ARCHIVE(oci)")
	_, _, err = runCLI("releases", "export", "-a", "web", "v1", "-o", out)
	if err == nil || !strings.Contains(err.Error(), "deploy again") {
		t.Errorf("a release without an image: %v", err)
	}
	onlyOut(t, "ARCHIVE(oci)")

	stdout, _, err := runCLI("releases", "export", "-a", "web", "-o", "-")
	if err != nil || stdout != "ARCHIVE(docker)" {
		t.Errorf("-o -: %q, %v", stdout, err)
	}

	for _, args := range [][]string{
		{"releases", "export", "-a", "web", "--format", "zip", "-o", out},
		{"releases", "export", "-a", "web"},
	} {
		if _, _, err := runCLI(args...); err == nil {
			t.Errorf("%v succeeded", args)
		}
	}
}

func TestReleasesExportHelp(t *testing.T) {
	stdout, _, err := runCLI("releases", "export", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--format", "-o, --output", "docker-archive", "oci-archive", "skopeo inspect docker-archive:web.tar",
		"podman load -i web.tar", "ctr images import", "-o -", "current", "deploy again"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
