package mesh

import (
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/metrics"
)

func declaredGraph() graph.Graph {
	return graph.Graph{
		Nodes: []graph.Node{
			{ID: "web", Kind: "app", Type: "app"},
			{ID: "api", Kind: "app", Type: "app"},
			{ID: "billing", Kind: "app", Type: "app"},
			{ID: "worker", Kind: "app", Type: "app"},
			{ID: "db", Kind: "resource", Type: "postgres"},
		},
		Edges: []graph.Edge{
			{From: "web", To: "api", Access: "call", As: "api"},
			{From: "web", To: "billing", Access: "call", As: "billing"},
			{From: "worker", To: "api", Access: "call", As: "api"},
			{From: "web", To: "db", Access: "readwrite", As: "db"},
		},
	}
}

func TestGraphJoinsObservedTraffic(t *testing.T) {
	seen := time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)
	observed := []metrics.Stat{
		{Src: "edge", Dst: "web", Requests: 900, Successes: 899, SuccessRate: 899.0 / 900, P99: 12, LastSeen: seen},
		{Src: "web", Dst: "api", Requests: 100, Successes: 100, SuccessRate: 1, P99: 3.5, LastSeen: seen},
		{Src: "worker", Dst: "api", TCPOpen: 1, LastSeen: seen}, // opaque TCP, opened over 24h ago
		{Src: "api", Dst: "billing", Denied: 4, LastSeen: seen},
		{Src: "gone", Dst: "api", Requests: 2, LastSeen: seen},
	}
	recent := []metrics.Stat{{Src: "web", Dst: "api", RPS: 2.5}}

	g := declaredGraph()
	g.Observe(observations(observed, recent))

	type want struct {
		state    string
		requests int64
		rps      float64
		denied   int64
	}
	wants := map[[2]string]want{
		{"web", "api"}:     {graph.StateUsed, 100, 2.5, 0},
		{"web", "billing"}: {graph.StateDeclared, -1, 0, 0},
		{"worker", "api"}:  {graph.StateUsed, 0, 0, 0},
		{"web", "db"}:      {graph.StateDeclared, -1, 0, 0},
		{"api", "billing"}: {graph.StateDenied, 0, 0, 4},
		{"edge", "web"}:    {graph.StateUndeclared, 900, 0, 0},
	}
	for _, e := range g.Edges {
		k := [2]string{e.From, e.To}
		w, ok := wants[k]
		if !ok {
			t.Errorf("unexpected edge %v (%s)", k, e.State)
			continue
		}
		delete(wants, k)
		if e.State != w.state {
			t.Errorf("%v: state %q, want %q", k, e.State, w.state)
		}
		if w.requests < 0 {
			if e.Observed != nil {
				t.Errorf("%v: observed %+v, want none", k, e.Observed)
			}
			continue
		}
		if e.Observed == nil {
			t.Errorf("%v: no observed traffic", k)
			continue
		}
		if o := e.Observed; o.Requests != w.requests || o.RPS != w.rps || o.Denied != w.denied || !o.LastSeen.Equal(seen) {
			t.Errorf("%v: observed %+v, want %+v", k, *o, w)
		}
	}
	for k := range wants {
		t.Errorf("missing edge %v", k)
	}
	if g.Nodes[0].ID != graph.EdgeID || g.Nodes[0].Kind != graph.KindEdge {
		t.Errorf("first node %+v, want the edge proxy", g.Nodes[0])
	}
}

// TestGraphWithoutMetrics: a mesh service without metrics (no mesh) still states
// every edge, as declared.
func TestGraphWithoutMetrics(t *testing.T) {
	g := declaredGraph()
	(&Service{}).observe(&g)
	for _, e := range g.Edges {
		if e.State != graph.StateDeclared || e.Observed != nil {
			t.Errorf("%s -> %s: %q %+v, want declared without traffic", e.From, e.To, e.State, e.Observed)
		}
	}
	if len(g.Nodes) != 5 {
		t.Errorf("nodes %+v: want no edge proxy", g.Nodes)
	}
}
