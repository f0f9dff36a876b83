package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func (e *env) secretsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secrets",
		Short: "Manage an app's secrets (encrypted at rest, injected as env vars)",
		Long: `Secrets are environment variables whose values are encrypted at rest and
never shown again: list shows names and digests only. Setting or unsetting
secrets rolls the app (a new release with the same build) so every machine
sees the change.`,
	}
	var asJSON bool
	list := &cobra.Command{
		Use:     "list",
		Short:   "List secret names and digests",
		Example: `  pier secrets list -a web`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			infos, err := c.Secrets(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, infos)
			}
			if len(infos) == 0 {
				fmt.Fprintf(e.stdout, "%s has no secrets\n", app)
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tUPDATED")
			for _, s := range infos {
				fmt.Fprintf(tw, "%s\t%s\t%s ago\n", s.Name, s.Digest, ago(s.UpdatedAt))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	e.addAppFlag(list)

	set := &cobra.Command{
		Use:   "set NAME=VALUE...",
		Short: "Set secrets and roll the app",
		Example: `  pier secrets set DATABASE_PASSWORD=s3cret API_KEY=abc123
  pier secrets set -a web TOKEN="$(cat token.txt)"`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			values := map[string]string{}
			for _, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("%q is not NAME=VALUE; nothing was changed", a)
				}
				values[k] = v
			}
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			rel, err := c.SetSecrets(cmd.Context(), app, values, e.stdout)
			return e.secretsDone(app, rel != nil, err)
		},
	}
	e.addAppFlag(set)

	unset := &cobra.Command{
		Use:     "unset NAME...",
		Short:   "Remove secrets and roll the app",
		Example: `  pier secrets unset API_KEY`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			rel, err := c.UnsetSecrets(cmd.Context(), app, args, e.stdout)
			return e.secretsDone(app, rel != nil, err)
		},
	}
	e.addAppFlag(unset)
	cmd.AddCommand(list, set, unset)
	return cmd
}

func (e *env) secretsDone(app string, rolled bool, err error) error {
	if err != nil {
		return fmt.Errorf("secrets of %s: %w", app, err)
	}
	if rolled {
		fmt.Fprintf(e.stdout, "\nsecrets of %s updated; its machines were rolled\n", app)
	} else {
		fmt.Fprintf(e.stdout, "secrets of %s updated\n", app)
	}
	return nil
}
