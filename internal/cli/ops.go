package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pier-dev/pier/internal/ops"
	"github.com/spf13/cobra"
)

func (e *env) opsCmd() *cobra.Command {
	var target string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ops",
		Short: "List running and recent operations (deploys, scales, connections...)",
		Long: `Every change runs in the server as an operation: deploy, rollback, scale,
secrets set/unset, connect, disconnect, apps create/destroy, and resources
create, delete, backup and restore. Each has an id (printed by the command
that started it), a state (pending, running, succeeded, failed, cancelled),
numbered progress events, who started it, and when it started and ended.

An operation keeps running when the terminal that started it goes away.
At most one operation runs per app or resource at a time; the others wait
their turn, in order. If pier server stops in the middle of one, the next
pier server finishes it or rolls it back, and its record says which.`,
		Example: `  pier ops               # the latest operations on every app and resource
  pier ops -a web        # on one app (or resource)
  pier ops watch op_3f2a9c1e5b7d4f60
  pier ops cancel op_3f2a9c1e5b7d4f60`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			list, err := c.Operations(cmd.Context(), target, limit)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, list)
			}
			if len(list) == 0 {
				fmt.Fprintln(e.stdout, "no operations yet")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTATE\tWHO\tSTARTED\tDURATION\tNOTE")
			for _, op := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", op.ID, op.Kind, op.Target, op.State, dash(op.Who),
					when(op), took(op), note(op))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&target, "app", "a", "", "only the operations on this app or resource")
	cmd.Flags().IntVarP(&limit, "limit", "n", 20, "how many to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(e.opsWatchCmd(), e.opsCancelCmd())
	return cmd
}

func (e *env) opsWatchCmd() *cobra.Command {
	var from int
	cmd := &cobra.Command{
		Use:   "watch ID",
		Short: "Follow an operation's progress to its end, from any terminal",
		Long: `Print an operation's progress from its first event (or --from N) and follow
it until it ends. Exits 0 if it succeeded, 1 if it failed or was cancelled.
Interrupting the watch leaves the operation running.`,
		Example: `  pier ops watch op_3f2a9c1e5b7d4f60
  pier ops watch op_3f2a9c1e5b7d4f60 --from 120   # resume after event 119`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			op, err := c.Operation(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "==> %s: %s of %s, started by %s\n", op.ID, op.Kind, op.Target, dash(op.Who))
			var last ops.Event
			out := e.untrustedOut() // build output: escaped on a terminal
			err = c.WatchOperation(cmd.Context(), op.ID, from, true, func(ev ops.Event) {
				switch {
				case ev.Type == ops.EventOutput:
					io.WriteString(out, ev.Text)
				case ev.State.Done():
					last = ev
				case ev.Text != "":
					fmt.Fprintf(e.stdout, "==> %s\n", ev.Text)
				}
			})
			if err != nil {
				return err
			}
			op, err = c.Operation(cmd.Context(), op.ID)
			if err != nil {
				return err
			}
			if !op.State.Done() {
				return fmt.Errorf("%s is %s, and the server that ran it stopped: the next `pier server` settles it", op.ID, op.State)
			}
			if !last.State.Done() && from > op.Events {
				fmt.Fprintf(e.stderr, "==> %s had %d events; nothing from %d on\n", op.ID, op.Events, from)
			}
			if op.State != ops.Succeeded {
				return fmt.Errorf("%s %s: %s", op.ID, op.State, op.Error)
			}
			fmt.Fprintf(e.stdout, "==> %s succeeded in %s\n", op.ID, took(op))
			return nil
		},
	}
	cmd.Flags().IntVar(&from, "from", 1, "start at this event number")
	return cmd
}

func (e *env) opsCancelCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Stop an operation: a pending one at once, a running deploy or rollback as it can",
		Long: `Cancel an operation. One still waiting its turn is dropped at once. A running
deploy, rollback or resource create stops and leaves the app (or nothing)
as it was before; other running operations (scale, secrets, connections,
deletes, backups, restores) cannot be stopped halfway and are refused.`,
		Example: `  pier ops cancel op_3f2a9c1e5b7d4f60`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			op, err := c.CancelOperation(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if op.State == ops.Cancelled {
				fmt.Fprintf(e.stdout, "%s cancelled before it started\n", op.ID)
				return nil
			}
			fmt.Fprintf(e.stdout, "%s is stopping (%s of %s); follow it with `pier ops watch %s`\n", op.ID, op.Kind, op.Target, op.ID)
			return nil
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// when is when op started, or was submitted if it has not.
func when(op ops.Operation) string {
	t := op.CreatedAt
	if op.StartedAt != nil {
		t = *op.StartedAt
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// took is how long op ran (so far).
func took(op ops.Operation) string {
	if op.StartedAt == nil {
		return "-"
	}
	end := time.Now()
	if op.EndedAt != nil {
		end = *op.EndedAt
	}
	return end.Sub(*op.StartedAt).Round(100 * time.Millisecond).String()
}

// note is the first line of what the record says of op's end.
func note(op ops.Operation) string {
	s := op.Recovery
	if s == "" {
		s = op.Error
	}
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > 80 {
		s = string(r[:77]) + "..."
	}
	return s
}
