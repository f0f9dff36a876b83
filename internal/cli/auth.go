package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func (e *env) authCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Show the credentials the CLI uses",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "token",
		Short: "Print the API token the CLI uses (for curl, scripts and CI)",
		Example: `  curl -H "Authorization: Bearer $(pier auth token)" http://127.0.0.1:4280/v1/apps
  export PIER_TOKEN=$(pier auth token)   # then use it from another machine with PIER_API`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, c.Token)
			return nil
		},
	})
	return cmd
}
