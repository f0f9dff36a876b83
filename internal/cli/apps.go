package cli

import (
	"bufio"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func (e *env) appsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apps",
		Short: "List, create and destroy apps",
	}
	var asJSON bool
	list := &cobra.Command{
		Use:     "list",
		Short:   "List apps with their URL, release and machines",
		Example: `  pier apps list --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			apps, err := c.Apps(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, apps)
			}
			if len(apps) == 0 {
				fmt.Fprintln(e.stdout, "no apps yet: run `pier launch` in an app's directory")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tRELEASE\tMACHINES\tURL")
			for _, a := range apps {
				rel := "-"
				if a.Release > 0 {
					rel = fmt.Sprintf("v%d", a.Release)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\n", a.Name, rel, running(a.Machines), a.Count, a.URL)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Create an empty app (deploy to it with `pier deploy -a NAME`)",
		Example: `  pier apps create web`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			st, err := c.CreateApp(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "created %s; it will be served at %s\n", st.Name, st.URL)
			return nil
		},
	}

	var yes bool
	destroy := &cobra.Command{
		Use:     "destroy NAME",
		Short:   "Stop an app's machines and delete it with its releases, builds, secrets and logs",
		Example: `  pier apps destroy web --yes`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !yes {
				if !isTerminal(e.stdin) {
					return fmt.Errorf("destroy deletes %s for good: pass --yes to confirm when not running interactively", name)
				}
				fmt.Fprintf(e.stdout, "Destroy %s and everything of it? Type its name to confirm: ", name)
				answer, _ := bufio.NewReader(e.stdin).ReadString('\n')
				if strings.TrimSpace(answer) != name {
					return fmt.Errorf("not confirmed; nothing was changed")
				}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.DestroyApp(cmd.Context(), name); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "destroyed %s\n", name)
			return nil
		},
	}
	destroy.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.AddCommand(list, create, destroy)
	return cmd
}
