package graph

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// observedSample has an edge in every state: web -> api used, web -> billing
// declared but unused, reports -> api denied, the edge proxy -> web
// undeclared, and connections to resources (declared, not observable).
func observedSample() Graph {
	g := sample()
	g.Nodes = append(g.Nodes,
		Node{ID: "api", Kind: "app", Type: "app", Status: "deployed", Release: 7, Machines: 3},
		Node{ID: "billing", Kind: "app", Type: "app", Status: "deployed", Release: 2, Machines: 1})
	g.Edges = append(g.Edges,
		Edge{From: "web", To: "api", Access: "call", As: "api"},
		Edge{From: "web", To: "billing", Access: "call", As: "payments"})
	seen := time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)
	g.Observe([]Observation{
		{From: "edge", To: "web", Traffic: Traffic{Requests: 86400, SuccessRate: 0.9996, RPS: 12.04, P99: 31.2, LastSeen: seen}},
		{From: "web", To: "api", Traffic: Traffic{Requests: 1520, SuccessRate: 0.995, RPS: 0.42, P99: 3.14, LastSeen: seen}},
		{From: "reports", To: "api", Traffic: Traffic{Denied: 5, LastSeen: seen}},
		{From: "gone", To: "api", Traffic: Traffic{Requests: 3, LastSeen: seen}}, // a destroyed app: dropped
	})
	return g
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct {
		file   string
		graph  func() Graph
		render func(*bytes.Buffer, Graph)
	}{
		{"graph.txt", sample, func(b *bytes.Buffer, g Graph) { Text(b, g) }},
		{"graph.dot", sample, func(b *bytes.Buffer, g Graph) { DOT(b, g) }},
		{"graph.mmd", sample, func(b *bytes.Buffer, g Graph) { Mermaid(b, g) }},
		{"observed.txt", observedSample, func(b *bytes.Buffer, g Graph) { Text(b, g) }},
		{"observed.dot", observedSample, func(b *bytes.Buffer, g Graph) { DOT(b, g) }},
		{"observed.mmd", observedSample, func(b *bytes.Buffer, g Graph) { Mermaid(b, g) }},
		{"observed.json", observedSample, func(b *bytes.Buffer, g Graph) {
			enc := json.NewEncoder(b)
			enc.SetIndent("", "  ")
			enc.Encode(g)
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var b bytes.Buffer
			tc.render(&b, tc.graph())
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

func TestObserveStates(t *testing.T) {
	g := observedSample()
	got := map[string]string{}
	for _, e := range g.Edges {
		got[e.From+"->"+e.To] = e.State
	}
	want := map[string]string{
		"web->db":      StateDeclared, // a resource: the mesh does not see it
		"web->cache":   StateDeclared,
		"reports->db":  StateDeclared,
		"web->api":     StateUsed,
		"web->billing": StateDeclared,
		"reports->api": StateDenied,
		"edge->web":    StateUndeclared,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: state %q, want %q", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("edges %v, want exactly %v (traffic of a destroyed app is dropped)", got, want)
	}
	if n := g.node("edge"); n.Kind != KindEdge || g.Nodes[0].ID != "edge" {
		t.Errorf("edge proxy node %+v, first node %q: want kind edge, sorted first", n, g.Nodes[0].ID)
	}
}

// TestObserveNoEdgeNode: without traffic from the edge proxy, there is no
// node for it, and a declared call with only denials stays declared.
func TestObserveNoEdgeNode(t *testing.T) {
	g := Graph{
		Nodes: []Node{{ID: "a", Kind: "app"}, {ID: "b", Kind: "app"}},
		Edges: []Edge{{From: "a", To: "b", Access: "call", As: "b"}},
	}
	g.Observe([]Observation{{From: "a", To: "b", Traffic: Traffic{Denied: 2}}})
	if len(g.Nodes) != 2 {
		t.Errorf("nodes %+v: want no edge proxy node", g.Nodes)
	}
	if e := g.Edges[0]; e.State != StateDeclared || e.Observed == nil || e.Observed.Denied != 2 {
		t.Errorf("edge %+v: want declared, with the denials attached", e)
	}
	var b bytes.Buffer
	Text(&b, g)
	if !strings.Contains(b.String(), "(unused, 2 denied attempts)") {
		t.Errorf("text:\n%s", b.String())
	}
}
