package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func (e *env) connectionsCmd() *cobra.Command {
	var asJSON bool
	var target string
	cmd := &cobra.Command{
		Use:     "connections",
		Aliases: []string{"conns"},
		Short:   "List connections and the env vars they inject",
		Example: `  pier connections            # all of them
  pier connections -a web     # web's
  pier connections --resource db
  pier connections show web db --reveal`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			conns, err := c.Connections(cmd.Context(), e.app, target)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, conns)
			}
			if len(conns) == 0 {
				fmt.Fprintln(e.stdout, "No connections. Connect an app with `pier connect APP RESOURCE`.")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "APP\tRESOURCE\tTYPE\tACCESS\tENV")
			for _, cn := range conns {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cn.App, cn.Target, cn.Type, cn.Access, strings.Join(cn.Env, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&e.app, "app", "a", "", "only this app's connections")
	cmd.Flags().StringVar(&target, "resource", "", "only connections to this resource")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(e.connectionsShowCmd())
	return cmd
}

func (e *env) connectionsShowCmd() *cobra.Command {
	var reveal, asJSON bool
	cmd := &cobra.Command{
		Use:   "show APP RESOURCE",
		Short: "Show one connection; --reveal prints its credentials",
		Long: `Show a connection and the env vars it gives the app. Values are hidden
unless --reveal, which prints the credentials (and records that they were
revealed in the app's events).`,
		Example: `  pier connections show web db
  pier connections show web db --reveal`,
		Args: exactArgs(2, "APP RESOURCE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			d, err := c.Connection(cmd.Context(), args[0], args[1], reveal)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, d)
			}
			fmt.Fprintf(e.stdout, "%s -> %s (%s), access %s, since %s\n", d.App, d.Target, d.Type, d.Access, d.CreatedAt.Local().Format("2006-01-02 15:04"))
			for _, name := range d.Env {
				if reveal {
					fmt.Fprintf(e.stdout, "  %s=%s\n", name, d.Values[name])
				} else {
					fmt.Fprintf(e.stdout, "  %s=********\n", name)
				}
			}
			if !reveal {
				fmt.Fprintln(e.stdout, "(values hidden; pass --reveal to print them)")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&reveal, "reveal", false, "print the credentials")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
