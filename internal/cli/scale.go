package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
)

func (e *env) scaleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Change how many machines an app runs",
	}
	count := &cobra.Command{
		Use:   "count N",
		Short: "Run N machines of the app (0 stops it; the proxy then answers 503)",
		Example: `  pier scale count 3
  pier scale count 1 -a web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 0 {
				return fmt.Errorf("count %q is not a whole number of machines (0 or more)", args[0])
			}
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			st, err := c.Scale(cmd.Context(), app, n)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s scaled to %d machine(s); new ones join traffic once healthy (see `pier status`)\n", st.Name, st.Count)
			return nil
		},
	}
	e.addAppFlag(count)
	cmd.AddCommand(count)
	return cmd
}
