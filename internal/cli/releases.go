package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func (e *env) releasesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "releases",
		Short: "List an app's numbered releases, newest first",
		Example: `  pier releases
  pier releases -a web --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			rels, err := c.Releases(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, rels)
			}
			if len(rels) == 0 {
				fmt.Fprintf(e.stdout, "%s has no releases yet (run `pier deploy`)\n", app)
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSTATUS\tDESCRIPTION\tBUILDER\tBUILD\tCREATED")
			for _, r := range rels {
				fmt.Fprintf(tw, "v%d\t%s\t%s\t%s\t%s\t%s ago\n", r.Version, r.Status, r.Description, r.Builder, r.BuildID, ago(r.CreatedAt))
			}
			return tw.Flush()
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(e.releasesExportCmd())
	return cmd
}
