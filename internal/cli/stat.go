package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/pier-dev/pier/internal/metrics"
	"github.com/spf13/cobra"
)

func (e *env) statCmd() *cobra.Command {
	var edges, asJSON bool
	var window time.Duration
	cmd := &cobra.Command{
		Use:   "stat",
		Short: "Show the golden metrics of every app: success rate, rate, latency",
		Long: `Show what the mesh measured over the last --window (default 1m, at most 24h),
one row per app that received traffic, all its callers merged:

  APP          the app called
  SUCCESS      share of requests that succeeded: status 1xx-4xx (and gRPC OK);
               5xx, a failed gRPC call and no answer at all are failures;
               "-" without requests
  RPS          requests per second over the window
  P50 P95 P99  latency percentiles: from the request to the end of the
               answer, measured where the call enters the app (the edge
               proxy, or the callee's side of the mesh)
  TCP          TCP connections that are not HTTP (databases, custom
               protocols) open through the mesh now
  DENIED       attempts refused because no connection allows them
               (` + "`pier connect FROM TO`" + ` lets an app call another)
  REQUESTS     requests in the window

With --edges, one row per caller and callee (FROM, TO). The caller "edge" is
pier's public edge proxy: requests from the internet to APP.<domain>. Other
callers are apps calling through the mesh (http://APP.internal).

Windows up to 10m are read at 1-second resolution, longer ones per minute.
Only traffic through pier is measured: the edge proxy and the mesh.`,
		Example: `  pier stat
  pier stat --edges --window 10m
  pier stat --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			var rows []metrics.Stat
			if edges {
				rows, err = c.EdgeStats(cmd.Context(), window)
			} else {
				rows, err = c.Stats(cmd.Context(), window)
			}
			if err != nil {
				return err
			}
			if asJSON {
				if rows == nil {
					rows = []metrics.Stat{}
				}
				return printJSON(e.stdout, rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(e.stdout, "No traffic in the last %s. Apps get traffic at http://APP.<domain> (the edge) and from each other at http://APP.internal once connected (`pier connect FROM TO`).\n", shortDuration(window))
				return nil
			}
			return writeStats(e.stdout, rows, edges)
		},
	}
	cmd.Flags().BoolVar(&edges, "edges", false, "one row per caller and callee")
	cmd.Flags().DurationVarP(&window, "window", "w", time.Minute, "how far back to look, e.g. 30s, 10m, 1h (at most 24h)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the rows as JSON")
	return cmd
}

// writeStats writes metrics rows as a table, by app or, with edges, by
// caller and callee.
func writeStats(w io.Writer, rows []metrics.Stat, edges bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if edges {
		fmt.Fprint(tw, "FROM\tTO\t")
	} else {
		fmt.Fprint(tw, "APP\t")
	}
	fmt.Fprintln(tw, "SUCCESS\tRPS\tP50\tP95\tP99\tTCP\tDENIED\tREQUESTS")
	for _, st := range rows {
		if edges {
			fmt.Fprintf(tw, "%s\t%s\t", st.Src, st.Dst)
		} else {
			fmt.Fprintf(tw, "%s\t", st.Dst)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", metrics.FormatPercent(st.SuccessRate, st.Requests), metrics.FormatRPS(st.RPS),
			latency(st, st.P50), latency(st, st.P95), latency(st, st.P99), st.TCPOpen, st.Denied, st.Requests)
	}
	return tw.Flush()
}

// latency formats a percentile in milliseconds (0.42ms, 3.1ms, 120ms,
// 1.5s), "-" without requests.
func latency(st metrics.Stat, ms float64) string {
	if st.Requests == 0 {
		return "-"
	}
	return metrics.FormatMillis(ms)
}
