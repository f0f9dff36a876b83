package cli

import (
	"encoding/json"
	"fmt"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/spf13/cobra"
)

func (e *env) logsCmd() *cobra.Command {
	var follow, asJSON bool
	var lines int
	cmd := &cobra.Command{
		Use:   "logs [APP]",
		Short: "Show an app's output (and its builds'), with time and machine id",
		Example: `  pier logs
  pier logs web -f
  pier logs -n 1000 --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient(args...)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(e.stdout)
			return c.Logs(cmd.Context(), app, lines, follow, func(l pier.LogLine) {
				if asJSON {
					enc.Encode(l)
					return
				}
				fmt.Fprintf(e.stdout, "%s [%s] %s\n", l.Time.Local().Format("2006-01-02T15:04:05.000Z07:00"), l.Machine, l.Line)
			})
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().IntVarP(&lines, "lines", "n", 100, "how many past lines to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}
