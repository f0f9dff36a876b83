package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/pier-dev/pier/internal/api"
	"github.com/spf13/cobra"
)

func (e *env) resourcesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "resources",
		Aliases: []string{"resource", "res"},
		Short:   "Create and manage resources: postgres, redis, bucket",
		Long: `A resource is a typed piece of infrastructure that pier runs for you (or
administers, if it exists already): a PostgreSQL database, a Redis server, an
S3-compatible bucket. Parameters are checked against the type's schema (see
'pier resources types'). Apps get access only through a connection
('pier connect APP RESOURCE'), which creates credentials for that app alone.`,
	}
	cmd.AddCommand(e.resourcesTypesCmd(), e.resourcesCreateCmd(), e.resourcesListCmd(), e.resourcesShowCmd(),
		e.resourcesDeleteCmd(), e.resourcesBackupCmd(), e.resourcesBackupsCmd(), e.resourcesRestoreCmd())
	return cmd
}

func (e *env) resourcesTypesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "types",
		Short:   "List resource types with their parameters and access levels",
		Example: `  pier resources types`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			types, err := c.ResourceTypes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, types)
			}
			for i, t := range types {
				if i > 0 {
					fmt.Fprintln(e.stdout)
				}
				access := make([]string, len(t.Access))
				for i, a := range t.Access {
					access[i] = string(a)
				}
				fmt.Fprintf(e.stdout, "%s — %s\n", t.Name, t.Description)
				fmt.Fprintf(e.stdout, "  access:   %s (default %s)\n", strings.Join(access, ", "), access[0])
				fmt.Fprintf(e.stdout, "  provides: %s\n", strings.Join(t.Provides, ", "))
				printParams(e, t.Schema)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (with each type's full JSON Schema)")
	return cmd
}

// printParams lists the parameters of a type's JSON Schema.
func printParams(e *env, schema json.RawMessage) {
	var s struct {
		Properties map[string]struct {
			Type        any    `json:"type"`
			Description string `json:"description"`
			Default     any    `json:"default"`
			Enum        []any  `json:"enum"`
			Minimum     any    `json:"minimum"`
			Maximum     any    `json:"maximum"`
		} `json:"properties"`
	}
	if json.Unmarshal(schema, &s) != nil || len(s.Properties) == 0 {
		return
	}
	names := make([]string, 0, len(s.Properties))
	for n := range s.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(e.stdout, "  parameters:")
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for _, n := range names {
		p := s.Properties[n]
		typ := fmt.Sprint(p.Type)
		if len(p.Enum) > 0 {
			var vs []string
			for _, v := range p.Enum {
				vs = append(vs, fmt.Sprint(v))
			}
			typ = strings.Join(vs, "|")
		} else if p.Minimum != nil && p.Maximum != nil {
			typ = fmt.Sprintf("%s %v..%v", typ, p.Minimum, p.Maximum)
		}
		def := ""
		if p.Default != nil {
			def = fmt.Sprintf(" (default %v)", p.Default)
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s%s\n", n, typ, p.Description, def)
	}
	tw.Flush()
}

func (e *env) resourcesCreateCmd() *cobra.Command {
	var params []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create TYPE NAME",
		Short: "Create a resource of a type",
		Long: `Create a resource. pier runs the server itself (managed), or, given
--param admin_url=..., administers one that exists already (external).
Parameters are checked first: a bad one changes nothing.`,
		Example: `  pier resources create postgres db
  pier resources create redis cache --param maxmemory_mb=128
  pier resources create bucket uploads
  pier resources create postgres legacy --param admin_url=postgres://admin:pw@10.0.0.5:5432/app`,
		Args: exactArgs(2, "TYPE NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps := map[string]any{}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok || k == "" {
					return fmt.Errorf("--param %q is not NAME=VALUE; nothing was created", p)
				}
				ps[k] = v
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			out := e.stdout
			if asJSON {
				out = e.stderr
			}
			r, err := c.CreateResource(cmd.Context(), api.CreateResourceRequest{Name: args[1], Type: args[0], Params: ps}, out)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, r)
			}
			fmt.Fprintf(e.stdout, "\n%s %s created. Connect an app with:\n  pier connect APP %s\n", r.Type, r.Name, r.Name)
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&params, "param", "p", nil, "a parameter NAME=VALUE (repeatable; see `pier resources types`)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the created resource as JSON")
	return cmd
}

func (e *env) resourcesListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List resources",
		Example: `  pier resources list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			rs, err := c.Resources(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, rs)
			}
			if len(rs) == 0 {
				fmt.Fprintln(e.stdout, "No resources yet. Create one with `pier resources create postgres db`.")
				return nil
			}
			conns, err := c.Connections(cmd.Context(), "", "")
			if err != nil {
				return err
			}
			apps := map[string][]string{}
			for _, cn := range conns {
				apps[cn.Target] = append(apps[cn.Target], cn.App+" ("+string(cn.Access)+")")
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tMODE\tSTATUS\tADDRESS\tCONNECTED\tCREATED")
			for _, r := range rs {
				mode, addr := "external", "-"
				if r.Managed {
					mode = "managed"
					if r.Port > 0 {
						addr = fmt.Sprintf("%s:%d", r.Host, r.Port)
					}
				}
				connected := strings.Join(apps[r.Name], ", ")
				if connected == "" {
					connected = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", r.Name, r.Type, mode, r.Status, addr, connected, ago(r.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) resourcesShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "show NAME",
		Short:   "Show a resource, its connections and recent events",
		Example: `  pier resources show db`,
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			r, err := c.Resource(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, r)
			}
			evs, err := c.ResourceEvents(cmd.Context(), args[0], 10)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s (%s), %s\n", r.Name, r.Type, r.Status)
			keys := make([]string, 0, len(r.Params))
			for k := range r.Params {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(e.stdout, "  %s = %v\n", k, r.Params[k])
			}
			fmt.Fprintln(e.stdout, "\nConnections:")
			if len(r.Connections) == 0 {
				fmt.Fprintf(e.stdout, "  none (connect one with `pier connect APP %s`)\n", r.Name)
			}
			for _, cn := range r.Connections {
				fmt.Fprintf(e.stdout, "  %s  %s  env: %s\n", cn.App, cn.Access, strings.Join(cn.Env, " "))
			}
			fmt.Fprintln(e.stdout, "\nEvents:")
			for _, ev := range evs {
				fmt.Fprintf(e.stdout, "  %s  %s\n", ev.At.Local().Format("2006-01-02 15:04:05"), ev.Message)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) resourcesDeleteCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"destroy", "rm"},
		Short:   "Delete a resource and its data",
		Long: `Delete a resource: a managed server is stopped and its data and backups
are removed. A resource that apps are connected to is kept unless --force,
which first disconnects them (revoking their credentials and rolling them).`,
		Example: `  pier resources delete cache
  pier resources delete db --force`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			return c.DeleteResource(cmd.Context(), args[0], force, e.stdout)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "disconnect connected apps first")
	return cmd
}

func (e *env) resourcesBackupCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "backup NAME",
		Short:   "Back a resource up now",
		Example: `  pier resources backup db`,
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "==> Backing up %s\n", args[0])
			b, err := c.Backup(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "backup %s of %s taken (%s)\nrestore it with: pier resources restore %s %s\n", b.ID, b.Resource, size(b.Size), b.Resource, b.ID)
			return nil
		},
	}
}

func (e *env) resourcesBackupsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "backups NAME",
		Short:   "List a resource's backups, newest first",
		Example: `  pier resources backups db`,
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			bs, err := c.Backups(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, bs)
			}
			if len(bs) == 0 {
				fmt.Fprintf(e.stdout, "%s has no backups yet (take one with `pier resources backup %s`)\n", args[0], args[0])
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTRIGGER\tSIZE\tTAKEN")
			for _, b := range bs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\n", b.ID, b.Trigger, size(b.Size), ago(b.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) resourcesRestoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore NAME BACKUP_ID",
		Short: "Replace a resource's data with a backup",
		Long: `Restore a resource from one of its backups (see 'pier resources backups').
Sessions open during the restore are ended; connected apps keep their access.`,
		Example: `  pier resources restore db 20261122T101500Z-3fa2c1`,
		Args:    exactArgs(2, "NAME BACKUP_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			return c.RestoreBackup(cmd.Context(), args[0], args[1], e.stdout)
		},
	}
}

// size formats a byte count.
func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
