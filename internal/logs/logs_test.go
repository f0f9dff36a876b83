package logs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func TestWriterSplitsLinesAndTailReturnsLast(t *testing.T) {
	h, err := NewHub(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	w := h.Writer("web", "m1", "stdout")
	fmt.Fprint(w, "one\ntw")
	fmt.Fprint(w, "o\r\nthree")
	w.Flush()
	lines, err := h.Tail("web", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || lines[0].Line != "two" || lines[1].Line != "three" || lines[1].Machine != "m1" || lines[1].Stream != "stdout" {
		t.Fatalf("tail = %+v", lines)
	}
	if other, _ := h.Tail("other", 10); len(other) != 0 {
		t.Fatalf("another app's tail = %+v", other)
	}
}

func TestSubscribeSeesNewLinesOfItsAppOnly(t *testing.T) {
	h, _ := NewHub(t.TempDir())
	defer h.Close()
	ch, cancel := h.Subscribe("web")
	defer cancel()
	h.Append(pier.LogLine{App: "api", Line: "not mine"})
	h.Append(pier.LogLine{App: "web", Line: "mine"})
	select {
	case l := <-ch:
		if l.Line != "mine" {
			t.Fatalf("got %+v", l)
		}
	case <-time.After(time.Second):
		t.Fatal("no line")
	}
}

func TestRotationKeepsOneOldFile(t *testing.T) {
	dir := t.TempDir()
	h, _ := NewHub(dir)
	defer h.Close()
	big := make([]byte, 64*1024)
	for i := range big {
		big[i] = 'x'
	}
	n := MaxFileBytes/len(big) + 10
	for i := 0; i < n; i++ {
		h.Append(pier.LogLine{App: "web", Line: fmt.Sprintf("%d %s", i, big)})
	}
	if _, err := os.Stat(filepath.Join(dir, "web.log.1")); err != nil {
		t.Fatalf("no rotated file: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "web.log"))
	if err != nil || fi.Size() > MaxFileBytes {
		t.Fatalf("current file size %v, %v", fi.Size(), err)
	}
	lines, _ := h.Tail("web", 1)
	if want := fmt.Sprintf("%d ", n-1); len(lines) != 1 || lines[0].Line[:len(want)] != want {
		t.Fatalf("last line after rotation: %.20q", lines)
	}
	h.Remove("web")
	if _, err := os.Stat(filepath.Join(dir, "web.log")); !os.IsNotExist(err) {
		t.Fatalf("Remove left the file: %v", err)
	}
}
