package e2e

// Attacks from the red team's report (issue 11), each performed from the
// attacker's side against a real pier server.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// TestUploadTarSlipRefused uploads the red team's chain of links that each
// look local (a/b -> .., a/b/c -> .., x -> a/b/c/.., y -> x/..) and a file
// under y/: before the fix it was written, as the server's user, three
// levels above the upload dir. The upload must be refused and the file must
// exist nowhere.
func TestUploadTarSlipRefused(t *testing.T) {
	s := startProcessServer(t)
	s.mustPier("apps", "create", "slip")
	const marker = "pier-tar-slip-marker"
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range []*tar.Header{
		{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "a/b", Typeflag: tar.TypeSymlink, Linkname: ".."},
		{Name: "a/b/c", Typeflag: tar.TypeSymlink, Linkname: ".."},
		{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "a/b/c/.."},
		{Name: "y", Typeflag: tar.TypeSymlink, Linkname: "x/.."},
		{Name: "y/" + marker, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(marker))},
		{Name: "index.html", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(marker))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(marker))
		}
	}
	tw.Close()
	gz.Close()
	code, body := s.apiSend("/v1/apps/slip/deploys", "application/gzip", &buf)
	if code != http.StatusBadRequest || !strings.Contains(body, "source upload has") {
		t.Errorf("deploy of the tar slip = %d %s; want 400 naming the bad entry", code, body)
	}
	// Everything the test owns: the data dir, HOME, and what is above
	// them up to the test's temp root.
	top := filepath.Dir(filepath.Dir(s.dataDir))
	filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == marker {
			t.Errorf("the upload wrote %s", p)
		}
		return nil
	})
	if out := s.mustPier("releases", "-a", "slip"); strings.Contains(out, "v1") {
		t.Errorf("a refused upload made a release:\n%s", out)
	}
}
