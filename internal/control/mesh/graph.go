package mesh

import (
	"context"
	"time"

	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/store"
)

// Graph returns every app, resource and connection, joined to the traffic
// the mesh observed: each edge is declared (no traffic), used, denied (no
// connection, every attempt refused) or undeclared (traffic without a
// connection, such as the edge proxy's, which gets a node of its own).
func (s *Service) Graph(ctx context.Context) (graph.Graph, error) {
	var g graph.Graph
	apps, err := s.Store.Apps(ctx)
	if err != nil {
		return g, err
	}
	for _, a := range apps {
		status := "created"
		if a.Release > 0 {
			status = "deployed"
		}
		g.Nodes = append(g.Nodes, graph.Node{ID: a.Name, Kind: "app", Type: "app", Status: status, Release: a.Release, Machines: s.Fleet.Serving(a.Name)})
	}
	rows, err := s.Store.Resources(ctx)
	if err != nil {
		return g, err
	}
	for _, r := range rows {
		g.Nodes = append(g.Nodes, graph.Node{ID: r.Name, Kind: "resource", Type: r.Type, Status: string(r.Status)})
	}
	conns, err := s.Store.Connections(ctx, "", "")
	if err != nil {
		return g, err
	}
	for _, c := range conns {
		if c.Status == store.ConnActive {
			g.Edges = append(g.Edges, graph.Edge{From: c.App, To: c.Target, Access: string(c.Access), As: c.As})
		}
	}
	s.observe(&g) // also sorts nodes and edges
	if g.Nodes == nil {
		g.Nodes = []graph.Node{}
	}
	if g.Edges == nil {
		g.Edges = []graph.Edge{}
	}
	return g, nil
}

// observedRateWindow is the window of the current rate (RPS) shown on the
// graph's edges; their other numbers cover what Metrics.Observed covers,
// the last 24 hours.
const observedRateWindow = time.Minute

// observe joins the traffic the mesh observed to g's connections, setting
// every edge's state (declared, used, denied or undeclared). Without
// metrics (a server with no mesh, or tests) every edge is declared.
func (s *Service) observe(g *graph.Graph) {
	if s.Metrics == nil {
		g.Observe(nil)
		return
	}
	g.Observe(observations(s.Metrics.Observed(), s.Metrics.Edges(observedRateWindow)))
}

// observations turns the learned edges (24-hour totals) into the graph's
// observations, with the current rate from recent (a shorter window).
func observations(observed, recent []metrics.Stat) []graph.Observation {
	rps := make(map[[2]string]float64, len(recent))
	for _, st := range recent {
		rps[[2]string{st.Src, st.Dst}] = st.RPS
	}
	out := make([]graph.Observation, 0, len(observed))
	for _, st := range observed {
		out = append(out, graph.Observation{From: st.Src, To: st.Dst, Traffic: graph.Traffic{
			Requests:    st.Requests,
			SuccessRate: st.SuccessRate,
			RPS:         rps[[2]string{st.Src, st.Dst}],
			P99:         st.P99,
			// A connection opened more than 24 hours ago and still open
			// is not in TCPOpened; it still makes the edge used.
			Connections: max(st.TCPOpened, st.TCPOpen),
			Denied:      st.Denied,
			LastSeen:    st.LastSeen,
		}})
	}
	return out
}
