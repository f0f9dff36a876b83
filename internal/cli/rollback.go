package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func (e *env) rollbackCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback [VERSION]",
		Short: "Roll an earlier release out again (default: the previous one)",
		Long: `Deploy the build and config of an earlier release again, as a new release,
with the same zero-downtime rollout as a deploy. Secrets stay as they are now.`,
		Example: `  pier rollback       # back to the release before the current one
  pier rollback 3     # or v3`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			version := 0
			if len(args) == 1 {
				v, err := strconv.Atoi(strings.TrimPrefix(args[0], "v"))
				if err != nil || v < 1 {
					return fmt.Errorf("release %q is not a version number like 3 or v3 (see `pier releases`)", args[0])
				}
				version = v
			}
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			rel, err := c.Rollback(cmd.Context(), app, version, e.stdout)
			if err != nil {
				return fmt.Errorf("rollback of %s failed: %w", app, err)
			}
			fmt.Fprintf(e.stdout, "\n%s v%d (%s) is live\n", app, rel.Version, rel.Description)
			return nil
		},
	}
	e.addAppFlag(cmd)
	return cmd
}
