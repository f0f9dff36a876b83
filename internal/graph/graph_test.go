package graph

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func sample() Graph {
	return Graph{
		Nodes: []Node{
			{ID: "db", Kind: "resource", Type: "postgres", Status: "ready"},
			{ID: "web", Kind: "app", Type: "app", Status: "deployed", Release: 3, Machines: 2},
			{ID: "cache", Kind: "resource", Type: "redis", Status: "ready"},
			{ID: "reports", Kind: "app", Type: "app", Status: "deployed", Release: 1, Machines: 1},
			{ID: "spare-bucket", Kind: "resource", Type: "bucket", Status: "ready"},
		},
		Edges: []Edge{
			{From: "web", To: "db", Access: "readwrite", As: "db"},
			{From: "reports", To: "db", Access: "read", As: "primary"},
			{From: "web", To: "cache", Access: "readwrite", As: "cache"},
		},
	}
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct {
		file   string
		render func(*bytes.Buffer, Graph)
	}{
		{"graph.txt", func(b *bytes.Buffer, g Graph) { Text(b, g) }},
		{"graph.dot", func(b *bytes.Buffer, g Graph) { DOT(b, g) }},
		{"graph.mmd", func(b *bytes.Buffer, g Graph) { Mermaid(b, g) }},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var b bytes.Buffer
			tc.render(&b, sample())
			path := filepath.Join("testdata", tc.file)
			if *update {
				os.WriteFile(path, b.Bytes(), 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if b.String() != string(want) {
				t.Errorf("%s differs:\n--- got\n%s--- want\n%s", tc.file, b.String(), want)
			}
		})
	}
}

func TestTextEmpty(t *testing.T) {
	var b bytes.Buffer
	Text(&b, Graph{})
	if !bytes.Contains(b.Bytes(), []byte("No apps or resources")) {
		t.Errorf("empty graph: %q", b.String())
	}
}
