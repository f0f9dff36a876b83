// Package graph is pier's dependency graph: apps and resources as nodes,
// connections as edges, joined to the traffic the mesh observed (see
// Observe). Its JSON shape is the API's /v1/graph, which the web console
// draws; Text, DOT and Mermaid render it for people.
package graph

import (
	"fmt"
	"github.com/pier-dev/pier/internal/metrics"
	"io"
	"sort"
	"strings"
)

// Graph is every app, resource and connection.
type Graph struct {
	Nodes []Node `json:"nodes"`
	Edges []Edge `json:"edges"`
}

// Node is an app, a resource, or the public edge proxy.
type Node struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // app, resource, or edge (only when it sent traffic)
	// "app", the resource type (postgres, redis, bucket), or "proxy".
	Type   string `json:"type"`
	Status string `json:"status"`
	// Apps only: the current release and machines serving it.
	Release  int `json:"release,omitempty"`
	Machines int `json:"machines,omitempty"`
}

// Edge is a connection (From may use To with Access), traffic the mesh
// saw from From to To, or both; State says which.
type Edge struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Access and As are those of the connection; both are empty when there
	// is none (states denied and undeclared).
	Access string `json:"access"`
	As     string `json:"as"`
	// State is declared, used, denied or undeclared (see the constants);
	// empty from a server that does not observe traffic.
	State string `json:"state"`
	// Observed is the traffic seen on the edge; nil when none was.
	Observed *Traffic `json:"observed,omitempty"`
}

// kindRank orders nodes: the edge proxy (where traffic enters), apps,
// then resources.
func kindRank(kind string) int {
	switch kind {
	case KindEdge:
		return 0
	case "app":
		return 1
	}
	return 2
}

// Sort orders nodes (the edge proxy, then apps, then resources) and edges
// by name, for stable output.
func (g *Graph) Sort() {
	sort.Slice(g.Nodes, func(i, j int) bool {
		a, b := g.Nodes[i], g.Nodes[j]
		if ra, rb := kindRank(a.Kind), kindRank(b.Kind); ra != rb {
			return ra < rb
		}
		return a.ID < b.ID
	})
	sort.Slice(g.Edges, func(i, j int) bool {
		a, b := g.Edges[i], g.Edges[j]
		if a.From != b.From {
			return a.From < b.From
		}
		return a.To < b.To
	})
}

func (g *Graph) node(id string) Node {
	for _, n := range g.Nodes {
		if n.ID == id {
			return n
		}
	}
	return Node{ID: id}
}

func label(n Node) string {
	if n.Kind == "app" {
		return fmt.Sprintf("%s (app)", n.ID)
	}
	return fmt.Sprintf("%s (%s)", n.ID, n.Type)
}

// Text writes the graph for a terminal: the edge proxy and each app with
// their connections and observed calls, then resources nobody is connected
// to.
func Text(w io.Writer, g Graph) {
	g.Sort()
	if len(g.Nodes) == 0 {
		fmt.Fprintln(w, "No apps or resources yet (see `pier launch` and `pier resources create`).")
		return
	}
	used := map[string]bool{}
	for _, n := range g.Nodes {
		if n.Kind == "resource" {
			continue
		}
		fmt.Fprintf(w, "%s\n", label(n))
		for _, e := range g.Edges {
			if e.From != n.ID {
				continue
			}
			used[e.To] = true
			as := ""
			if e.As != "" && e.As != e.To {
				as = " as " + e.As
			}
			fmt.Fprintf(w, "  └─%s─▶ %s%s%s\n", arrowLabel(e), label(g.node(e.To)), as, textState(e, n, g.node(e.To)))
		}
	}
	var lonely []string
	for _, n := range g.Nodes {
		if n.Kind == "resource" && !used[n.ID] {
			lonely = append(lonely, label(n))
		}
	}
	if len(lonely) > 0 {
		fmt.Fprintf(w, "not connected: %s\n", strings.Join(lonely, ", "))
	}
}

// arrowLabel names an edge on its arrow: the connection's access, or what
// happened without one.
func arrowLabel(e Edge) string {
	switch {
	case e.State == StateDenied:
		return "denied"
	case e.Access == "":
		return "calls"
	}
	return e.Access
}

// textState is the suffix of an edge's line saying what the mesh saw on it.
// Connections to resources do not go through the mesh: nothing is said of
// their traffic.
func textState(e Edge, from, to Node) string {
	t := e.Observed
	switch e.State {
	case StateUsed:
		return " (used: " + trafficText(t) + ")"
	case StateDeclared:
		if to.Kind != "app" {
			return ""
		}
		if t != nil && t.Denied > 0 {
			return fmt.Sprintf(" (unused, %s)", plural(t.Denied, "denied attempt"))
		}
		return " (unused)"
	case StateDenied:
		return fmt.Sprintf(" (DENIED %s)", plural(deniedOf(t), "attempt"))
	case StateUndeclared:
		if from.Kind == KindEdge {
			return " (public: " + trafficText(t) + ")"
		}
		return " (undeclared: " + trafficText(t) + ")"
	}
	return ""
}

func deniedOf(t *Traffic) int64 {
	if t == nil {
		return 0
	}
	return t.Denied
}

// trafficText summarizes observed traffic: "12.0 rps, 99.5% ok, p99 3.1ms,
// 1520 requests", with the TCP connections of traffic that is not HTTP and
// the denials.
func trafficText(t *Traffic) string {
	if t == nil {
		return "no traffic"
	}
	var parts []string
	if t.Requests > 0 {
		parts = append(parts, metrics.FormatRPS(t.RPS)+" rps", metrics.FormatPercent(t.SuccessRate, t.Requests)+" ok", "p99 "+metrics.FormatMillis(t.P99), plural(t.Requests, "request"))
	} else if t.Connections > 0 {
		parts = append(parts, plural(t.Connections, "TCP connection"))
	}
	if t.Denied > 0 {
		parts = append(parts, fmt.Sprintf("%d denied", t.Denied))
	}
	if len(parts) == 0 {
		return "no traffic"
	}
	return strings.Join(parts, ", ")
}

// shortTraffic is trafficText without the counts, for diagram labels.
func shortTraffic(t *Traffic) string {
	if t == nil || t.Requests == 0 {
		if t != nil && t.Connections > 0 {
			return plural(t.Connections, "TCP connection")
		}
		return "no traffic"
	}
	return metrics.FormatRPS(t.RPS) + " rps, " + metrics.FormatPercent(t.SuccessRate, t.Requests) + " ok, p99 " + metrics.FormatMillis(t.P99)
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// DOT writes the graph in Graphviz's language: calls in use are solid and
// labelled with their traffic, declared but unused ones dashed, denied
// attempts red, and undeclared traffic (the edge proxy's) dotted.
func DOT(w io.Writer, g Graph) {
	g.Sort()
	fmt.Fprintln(w, "digraph pier {")
	fmt.Fprintln(w, "  rankdir=LR;")
	for _, n := range g.Nodes {
		shape := "box"
		switch n.Kind {
		case "resource":
			shape = "cylinder"
		case KindEdge:
			shape = "oval"
		}
		fmt.Fprintf(w, "  %q [label=%q, shape=%s];\n", n.ID, label(n), shape)
	}
	for _, e := range g.Edges {
		attrs := fmt.Sprintf("label=%q", e.Access)
		switch e.State {
		case StateUsed:
			attrs = fmt.Sprintf("label=%q", e.Access+"\n"+shortTraffic(e.Observed))
		case StateDeclared:
			if g.node(e.To).Kind == "app" {
				attrs = fmt.Sprintf("label=%q, style=dashed", e.Access+" (unused)")
			}
		case StateDenied:
			attrs = fmt.Sprintf("label=%q, color=red, fontcolor=red", "DENIED "+plural(deniedOf(e.Observed), "attempt"))
		case StateUndeclared:
			attrs = fmt.Sprintf("label=%q, style=dotted", shortTraffic(e.Observed))
		}
		fmt.Fprintf(w, "  %q -> %q [%s];\n", e.From, e.To, attrs)
	}
	fmt.Fprintln(w, "}")
}

// Mermaid writes the graph as a Mermaid flowchart, with the same
// conventions as DOT: dotted links for unused calls and undeclared
// traffic, red ones for denied attempts.
func Mermaid(w io.Writer, g Graph) {
	g.Sort()
	fmt.Fprintln(w, "flowchart LR")
	id := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	for _, n := range g.Nodes {
		switch n.Kind {
		case "resource":
			fmt.Fprintf(w, "  %s[(\"%s\")]\n", id(n.ID), label(n))
		case KindEdge:
			fmt.Fprintf(w, "  %s([\"%s\"])\n", id(n.ID), label(n))
		default:
			fmt.Fprintf(w, "  %s[\"%s\"]\n", id(n.ID), label(n))
		}
	}
	var red []string
	for i, e := range g.Edges {
		arrow, text := "-->", e.Access
		switch e.State {
		case StateUsed:
			text = fmt.Sprintf("%q", e.Access+": "+shortTraffic(e.Observed))
		case StateDeclared:
			if g.node(e.To).Kind == "app" {
				arrow, text = "-.->", fmt.Sprintf("%q", e.Access+" (unused)")
			}
		case StateDenied:
			arrow, text = "-.->", fmt.Sprintf("%q", "DENIED "+plural(deniedOf(e.Observed), "attempt"))
			red = append(red, fmt.Sprint(i))
		case StateUndeclared:
			arrow, text = "-.->", fmt.Sprintf("%q", shortTraffic(e.Observed))
		}
		fmt.Fprintf(w, "  %s %s|%s| %s\n", id(e.From), arrow, text, id(e.To))
	}
	if len(red) > 0 {
		fmt.Fprintf(w, "  linkStyle %s stroke:red,color:red\n", strings.Join(red, ","))
	}
}
