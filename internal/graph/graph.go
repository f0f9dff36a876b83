// Package graph is pier's dependency graph: apps and resources as nodes,
// connections as edges. Its JSON shape is the API's /v1/graph, which the
// web console draws; Text, DOT and Mermaid render it for people.
package graph

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Graph is every app, resource and connection.
type Graph struct {
	Nodes []Node `json:"nodes"`
	Edges []Edge `json:"edges"`
}

// Node is an app or a resource.
type Node struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"` // app or resource
	Type   string `json:"type"` // "app", or the resource type (postgres, redis, bucket)
	Status string `json:"status"`
	// Apps only: the current release and machines serving it.
	Release  int `json:"release,omitempty"`
	Machines int `json:"machines,omitempty"`
}

// Edge is a connection: From may use To with Access.
type Edge struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Access string `json:"access"`
	As     string `json:"as"`
}

// Sort orders nodes (apps first) and edges by name, for stable output.
func (g *Graph) Sort() {
	sort.Slice(g.Nodes, func(i, j int) bool {
		a, b := g.Nodes[i], g.Nodes[j]
		if a.Kind != b.Kind {
			return a.Kind == "app"
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

// Text writes the graph for a terminal: each app with its connections,
// then resources nobody is connected to.
func Text(w io.Writer, g Graph) {
	g.Sort()
	if len(g.Nodes) == 0 {
		fmt.Fprintln(w, "No apps or resources yet (see `pier launch` and `pier resources create`).")
		return
	}
	used := map[string]bool{}
	for _, n := range g.Nodes {
		if n.Kind != "app" {
			continue
		}
		fmt.Fprintf(w, "%s\n", label(n))
		for _, e := range g.Edges {
			if e.From != n.ID {
				continue
			}
			used[e.To] = true
			as := ""
			if e.As != e.To {
				as = " as " + e.As
			}
			fmt.Fprintf(w, "  └─%s─▶ %s%s\n", e.Access, label(g.node(e.To)), as)
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

// DOT writes the graph in Graphviz's language.
func DOT(w io.Writer, g Graph) {
	g.Sort()
	fmt.Fprintln(w, "digraph pier {")
	fmt.Fprintln(w, "  rankdir=LR;")
	for _, n := range g.Nodes {
		shape := "box"
		if n.Kind == "resource" {
			shape = "cylinder"
		}
		fmt.Fprintf(w, "  %q [label=%q, shape=%s];\n", n.ID, label(n), shape)
	}
	for _, e := range g.Edges {
		fmt.Fprintf(w, "  %q -> %q [label=%q];\n", e.From, e.To, e.Access)
	}
	fmt.Fprintln(w, "}")
}

// Mermaid writes the graph as a Mermaid flowchart.
func Mermaid(w io.Writer, g Graph) {
	g.Sort()
	fmt.Fprintln(w, "flowchart LR")
	id := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	for _, n := range g.Nodes {
		if n.Kind == "resource" {
			fmt.Fprintf(w, "  %s[(\"%s\")]\n", id(n.ID), label(n))
		} else {
			fmt.Fprintf(w, "  %s[\"%s\"]\n", id(n.ID), label(n))
		}
	}
	for _, e := range g.Edges {
		fmt.Fprintf(w, "  %s -->|%s| %s\n", id(e.From), e.Access, id(e.To))
	}
}
