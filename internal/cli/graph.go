package cli

import (
	"fmt"

	"github.com/pier-dev/pier/internal/graph"
	"github.com/spf13/cobra"
)

func (e *env) graphCmd() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Show apps, resources, their connections and the traffic between apps",
		Long: `Print the graph of apps, resources and connections with their access
levels, as text, Graphviz DOT, Mermaid or JSON (the API's /v1/graph), joined
to the calls the mesh saw in the last 24 hours. Each edge is:

  declared    connected, no traffic seen: "(unused)" on a call connection;
              dashed in dot and mermaid. Connections to resources do not go
              through the mesh and show no traffic.
  used        connected, and called: the current rate (last minute), the
              success rate and p99 latency (24 hours), the requests (24 hours)
  denied      not connected, and every attempt was refused: "DENIED n
              attempts", in red. Run ` + "`pier connect FROM TO`" + ` if the call is wanted.
  undeclared  traffic without a connection: the public edge proxy's requests
              (the "edge" node, shown only when it sent any), or calls made
              before a connection was removed; dotted.

The JSON has each edge's "state" and, when traffic was seen, "observed"
(requests, success_rate, rps, p99_ms, denied, last_seen).`,
		Example: `  pier graph
  pier graph --format dot | dot -Tsvg > graph.svg
  pier graph --format mermaid`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case "text", "dot", "mermaid", "json":
			default:
				return fmt.Errorf("--format %q: use text, dot, mermaid or json", format)
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			g, err := c.Graph(cmd.Context())
			if err != nil {
				return err
			}
			switch format {
			case "dot":
				graph.DOT(e.stdout, g)
			case "mermaid":
				graph.Mermaid(e.stdout, g)
			case "json":
				return printJSON(e.stdout, g)
			default:
				graph.Text(e.stdout, g)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "text", "text, dot, mermaid or json")
	cmd.Flags().Bool("json", false, "same as --format json")
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if j, _ := cmd.Flags().GetBool("json"); j {
			format = "json"
		}
		return nil
	}
	return cmd
}
