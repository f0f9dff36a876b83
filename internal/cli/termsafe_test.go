package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/pier"
)

func TestTermSafe(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"plain text, tabs\tand ünïcode", "plain text, tabs\tand ünïcode"},
		{"line\rFAKE", `line\rFAKE`},
		{"\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\x07`},
		{"del\x7f c1\u009b31m", `del\x7f c1\x9b31m`},
		{"bad utf8 \xc2", `bad utf8 \ufffd`},
	} {
		if got := termSafe(tt.in); got != tt.want {
			t.Errorf("termSafe(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// openPTY returns a pseudo-terminal's two ends: the test reads from master
// what a command printed to slave, as a user's terminal would get it.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no pseudo-terminals here: %v", err)
		}
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestLogsEscapeAppControlCharacters: an app's output that tries to
// overwrite pier's prefix (\r) and drive the terminal (ESC sequences)
// reaches a terminal escaped, and --json keeps it exactly.
func TestLogsEscapeAppControlCharacters(t *testing.T) {
	hostile := "innocent\r2026-01-01T00:00:00.000Z [build] \x1b[2K\x1b]0;owned\x07forged"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/apps/web/logs" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(pier.LogLine{Time: time.Now(), App: "web", Machine: "m-1", Stream: "stdout", Line: hostile})
	}))
	t.Cleanup(srv.Close)
	t.Setenv("PIER_API", srv.URL)
	t.Setenv("PIER_TOKEN", "tok")

	master, slave := openPTY(t)
	root := NewRoot(strings.NewReader(""), slave, &bytes.Buffer{})
	root.SetArgs([]string{"logs", "web"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	buf := make([]byte, 4096)
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := master.Read(buf)
	got := string(buf[:n])
	// The terminal's line discipline turns pier's own "\n" into "\r\n".
	got = strings.ReplaceAll(got, "\r\n", "\n")
	if strings.ContainsAny(got, "\r\x1b\x07") {
		t.Errorf("raw control characters reached the terminal: %q", got)
	}
	if !strings.Contains(got, `innocent\r2026-01-01T00:00:00.000Z [build] \x1b[2K\x1b]0;owned\x07forged`) {
		t.Errorf("terminal got %q, want the line escaped", got)
	}

	var out bytes.Buffer
	root = NewRoot(strings.NewReader(""), &out, &bytes.Buffer{})
	root.SetArgs([]string{"logs", "web", "--json"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	var l pier.LogLine
	if err := json.Unmarshal(out.Bytes(), &l); err != nil || l.Line != hostile {
		t.Errorf("--json line = %q (%v), want it as the app wrote it", l.Line, err)
	}
}
