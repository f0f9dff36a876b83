package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pier-dev/pier/internal/pier"
)

func (e *env) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [APP]",
		Short: "Show an app's URL, current release and machines",
		Example: `  pier status
  pier status -a web --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient(args...)
			if err != nil {
				return err
			}
			st, err := c.App(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, st)
			}
			fmt.Fprintf(e.stdout, "App:      %s\nURL:      %s\n", st.Name, st.URL)
			if st.Current != nil {
				fmt.Fprintf(e.stdout, "Release:  v%d (%s, %s builder, deployed %s ago)\n", st.Current.Version, st.Current.Description, st.Current.Builder, ago(st.Current.CreatedAt))
			} else {
				fmt.Fprintf(e.stdout, "Release:  none yet (run `pier deploy`)\n")
			}
			fmt.Fprintf(e.stdout, "Machines: %d wanted, %d running\n\n", st.Count, running(st.Machines))
			if len(st.Machines) == 0 {
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tRELEASE\tSTATE\tHEALTH\tADDRESS\tPID\tRESTARTS\tUP")
			for _, m := range st.Machines {
				health := "failing"
				if m.Healthy {
					health = "passing"
				}
				fmt.Fprintf(tw, "%s\tv%d\t%s\t%s\t%s\t%d\t%d\t%s\n", m.ID, m.Release, m.State, health, m.Addr, m.PID, m.Restarts, ago(m.StartedAt))
			}
			return tw.Flush()
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// running counts the machines that are started (an idle app's stopped
// machines are listed too).
func running(ms []pier.Machine) int {
	n := 0
	for _, m := range ms {
		if m.State == pier.MachineStarted {
			n++
		}
	}
	return n
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	case d < 48*time.Hour:
		return d.Round(time.Hour).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
