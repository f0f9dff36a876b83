package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/pier-dev/pier/internal/pier"

	"github.com/spf13/cobra"
)

func (e *env) releasesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "releases",
		Short: "List an app's numbered releases, newest first",
		Long: `List an app's numbered releases, newest first, with the digest and size of
each release's OCI image (a base image made from the host's Debian packages,
plus the app at /app). Images leave pier with ` + "`pier releases export`" + ` or
from pier's registry at <api address>/v2/<app>:vN (user any, password: the
token of ` + "`pier auth token`" + `). Releases made before images, or by a server
that runs apps as host processes, have none.

The newest releases (--keep-releases of pier server, default 10) keep their
build and image; older ones stay in the history but cannot be rolled back to.`,
		Example: `  pier releases
  pier releases -a web --json
  pier releases export -a web v3 -o web.tar
  skopeo inspect --creds pier:$(pier auth token) --tls-verify=false docker://127.0.0.1:4280/web:v3`,
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
			fmt.Fprintln(tw, "VERSION\tSTATUS\tDESCRIPTION\tBUILDER\tIMAGE\tSIZE\tCREATED")
			for _, r := range rels {
				digest, size := "-", "-"
				if r.Image.Digest != "" {
					digest, size = shortDigest(r.Image.Digest), pier.Bytes(r.Image.Size)
				}
				fmt.Fprintf(tw, "v%d\t%s\t%s\t%s\t%s\t%s\t%s ago\n", r.Version, r.Status, r.Description, r.Builder, digest, size, ago(r.CreatedAt))
			}
			return tw.Flush()
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(e.releasesExportCmd())
	return cmd
}

// shortDigest is a digest as people read it: algorithm and 12 hex digits.
func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}
