package cli

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pier-dev/pier/internal/client"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/spf13/cobra"
)

func (e *env) topCmd() *cobra.Command {
	var window, interval time.Duration
	var once, asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "top [APP]",
		Short: "Watch an app's busiest routes and its machines, live",
		Long: `Show APP's busiest routes over the last --window (default 10s) and what
each of its machines served, redrawn every --interval until Ctrl-C.

Routes are METHOD and PATH as the app saw them, with segments that look like
ids (numbers, UUIDs, long hex) shown as :id; past 100 distinct routes, the
rest are counted as (other). Columns are those of ` + "`pier stat`" + `: SUCCESS
is the share of requests that succeeded (1xx-4xx), RPS the rate over the
window, P50 and P99 latency percentiles, REQUESTS the count in the window.
Traffic from the internet (the edge proxy) and from other apps (the mesh) is
counted alike.

When stdout is not a terminal, or with --once or --json, one snapshot is
printed and the command exits.`,
		Example: `  pier top web
  pier top web --window 1m --interval 5s
  pier top web --once --limit 5
  pier top web --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval < time.Second {
				return fmt.Errorf("--interval %s is too short: use 1s or more", interval)
			}
			if limit < 1 || limit > 100 {
				return fmt.Errorf("--limit %d: show between 1 and 100 routes", limit)
			}
			app, c, err := e.appClient(args...)
			if err != nil {
				return err
			}
			// Ctrl-C ends the live view, not the process: the deferred
			// stop restores the terminal's default handling.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			s, err := c.AppStats(ctx, app, window, limit)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, s)
			}
			if once || !isTerminal(e.stdout) {
				return writeTop(e.stdout, app, window, s)
			}
			return e.topLive(ctx, c, app, window, interval, limit, s)
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().DurationVarP(&window, "window", "w", 10*time.Second, "how far back each snapshot looks, e.g. 10s, 1m (at most 24h)")
	cmd.Flags().DurationVarP(&interval, "interval", "i", 2*time.Second, "time between redraws")
	cmd.Flags().BoolVar(&once, "once", false, "print one snapshot and exit")
	cmd.Flags().IntVarP(&limit, "limit", "n", 20, "how many routes to show (at most 100)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one snapshot as JSON and exit")
	return cmd
}

// topLive redraws the view every interval until ctx is done. A failed
// refresh keeps the last snapshot on screen with the error above it: the
// server may be restarting.
func (e *env) topLive(ctx context.Context, c *client.Client, app string, window, interval time.Duration, limit int, s client.AppStats) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var refreshErr error
	for {
		// One write per frame, so the screen never shows half of one.
		var b bytes.Buffer
		b.WriteString("\x1b[H\x1b[2J") // cursor home, clear screen
		fmt.Fprintf(&b, "%s  every %s, Ctrl-C to stop\n", time.Now().Format("15:04:05"), shortDuration(interval))
		if refreshErr != nil {
			fmt.Fprintf(&b, "refresh failed, showing the last snapshot: %v\n", refreshErr)
		}
		writeTop(&b, app, window, s)
		if _, err := e.stdout.Write(b.Bytes()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		next, err := c.AppStats(ctx, app, window, limit)
		if ctx.Err() != nil {
			return nil
		}
		if refreshErr = err; err == nil {
			s = next
		}
	}
}

// writeTop writes one snapshot: the busiest routes, then the machines.
func writeTop(w io.Writer, app string, window time.Duration, s client.AppStats) error {
	fmt.Fprintf(w, "%s, last %s\n\n", app, shortDuration(window))
	if len(s.Paths) == 0 && len(s.Machines) == 0 {
		fmt.Fprintf(w, "No traffic to %s in the last %s.\n", app, shortDuration(window))
		return nil
	}
	if len(s.Paths) == 0 {
		fmt.Fprintln(w, "No HTTP requests: only TCP connections.")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "METHOD\tPATH\tRPS\tSUCCESS\tP50\tP99\tREQUESTS")
		for _, st := range s.Paths {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", cmp.Or(st.Method, "-"), st.Path, metrics.FormatRPS(st.RPS), metrics.FormatPercent(st.SuccessRate, st.Requests), latency(st, st.P50), latency(st, st.P99), st.Requests)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MACHINE\tRPS\tSUCCESS\tP50\tP99\tTCP\tREQUESTS")
	for _, st := range s.Machines {
		// A request that failed before a machine was chosen has none.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", cmp.Or(st.Machine, "(none)"), metrics.FormatRPS(st.RPS), metrics.FormatPercent(st.SuccessRate, st.Requests), latency(st, st.P50), latency(st, st.P99), st.TCPOpen, st.Requests)
	}
	return tw.Flush()
}

// shortDuration prints a duration without zero units: 1m, not 1m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
