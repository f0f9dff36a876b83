package graph

import "time"

// KindEdge is the Kind of the node of pier's public edge proxy, which
// forwards the internet's requests to apps. Its ID is EdgeID.
const KindEdge = "edge"

// EdgeID is the ID of the edge proxy's node, and the source of its
// traffic in the mesh's metrics.
const EdgeID = "edge"

// States of an Edge.
const (
	// StateDeclared: a connection exists and no traffic was seen on it.
	// Connections to resources, which do not go through the mesh, are
	// always in this state.
	StateDeclared = "declared"
	// StateUsed: a connection exists and traffic was seen on it.
	StateUsed = "used"
	// StateDenied: no connection, and every attempt was refused.
	StateDenied = "denied"
	// StateUndeclared: traffic without a connection: the edge proxy's
	// requests to apps, or calls made before a connection was removed.
	StateUndeclared = "undeclared"
)

// Traffic is what the mesh saw on an edge. The counts, rate of success,
// latency and last-seen time cover the observation window (the last 24
// hours on pier's server); RPS is the current rate (the last minute).
type Traffic struct {
	Requests    int64   `json:"requests"`
	SuccessRate float64 `json:"success_rate"` // 0..1; 0 without requests
	RPS         float64 `json:"rps"`
	P99         float64 `json:"p99_ms"`
	// Connections counts TCP connections, for traffic that is not HTTP.
	Connections int64     `json:"connections,omitempty"`
	Denied      int64     `json:"denied"` // attempts refused: no connection allows them
	LastSeen    time.Time `json:"last_seen,omitzero"`
}

// active reports whether anything but denials was seen.
func (t *Traffic) active() bool {
	return t != nil && (t.Requests > 0 || t.Connections > 0)
}

// Observation is the traffic seen from From to To.
type Observation struct {
	From, To string
	Traffic
}

// Observe joins observed traffic to g's connections and sets every edge's
// State. An observation without a connection becomes an edge of its own
// (denied or undeclared), if both its ends are nodes of g or it comes
// from the edge proxy, whose node is then added; traffic of apps that no
// longer exist is dropped.
func (g *Graph) Observe(obs []Observation) {
	byEdge := make(map[[2]string]*Traffic, len(obs))
	for i := range obs {
		byEdge[[2]string{obs[i].From, obs[i].To}] = &obs[i].Traffic
	}
	for i := range g.Edges {
		e := &g.Edges[i]
		k := [2]string{e.From, e.To}
		e.Observed, e.State = byEdge[k], StateDeclared
		if e.Observed.active() {
			e.State = StateUsed
		}
		delete(byEdge, k)
	}
	known := make(map[string]bool, len(g.Nodes))
	for _, n := range g.Nodes {
		known[n.ID] = true
	}
	for _, o := range obs {
		t, ok := byEdge[[2]string{o.From, o.To}]
		if !ok || !known[o.To] {
			continue
		}
		if !known[o.From] {
			if o.From != EdgeID {
				continue
			}
			g.Nodes = append(g.Nodes, Node{ID: EdgeID, Kind: KindEdge, Type: "proxy", Status: "serving"})
			known[EdgeID] = true
		}
		state := StateUndeclared
		if !t.active() {
			state = StateDenied
		}
		g.Edges = append(g.Edges, Edge{From: o.From, To: o.To, State: state, Observed: t})
	}
	g.Sort()
}
