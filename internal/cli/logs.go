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
		Long: `Show an app's output (and its builds'), with time and machine id.

On a terminal, control characters in what the app wrote (carriage returns,
escape sequences) are shown escaped, as \r or \x1b, so an app cannot rewrite
pier's prefixes or your terminal; in a pipe or file, and with --json, lines
are as the app wrote them.`,
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
			// An app's output may hold control characters that would
			// rewrite the operator's terminal; --json keeps them as sent.
			safe := isTerminal(e.stdout)
			return c.Logs(cmd.Context(), app, lines, follow, func(l pier.LogLine) {
				if asJSON {
					enc.Encode(l)
					return
				}
				line := l.Line
				if safe {
					line = termSafe(line)
				}
				fmt.Fprintf(e.stdout, "%s [%s] %s\n", l.Time.Local().Format("2006-01-02T15:04:05.000Z07:00"), l.Machine, line)
			})
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().IntVarP(&lines, "lines", "n", 100, "how many past lines to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}
