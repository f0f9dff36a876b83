package control

import (
	"time"

	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/metrics"
)

// observedRateWindow is the window of the current rate (RPS) shown on the
// graph's edges; their other numbers cover what Metrics.Observed covers,
// the last 24 hours.
const observedRateWindow = time.Minute

// observe joins the traffic the mesh observed to g's connections, setting
// every edge's state (declared, used, denied or undeclared). Without
// metrics (a server with no mesh, or tests) every edge is declared.
func (p *Plane) observe(g *graph.Graph) {
	if p.Metrics == nil {
		g.Observe(nil)
		return
	}
	g.Observe(observations(p.Metrics.Observed(), p.Metrics.Edges(observedRateWindow)))
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
