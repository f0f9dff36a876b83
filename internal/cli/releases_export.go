package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pier-dev/pier/internal/pier"

	"github.com/spf13/cobra"
)

func (e *env) releasesExportCmd() *cobra.Command {
	var output, format string
	cmd := &cobra.Command{
		Use:   "export [VERSION] -o FILE",
		Short: "Write a release's image to a file, for docker, podman, skopeo or containerd",
		Long: `Write the OCI image of one of an app's releases to a file. VERSION is vN, N
or current (the default).

--format docker (the default) writes a docker-archive, what 'docker save'
writes: 'docker load', 'podman load' and skopeo's docker-archive: read it,
and it loads as APP:vN. --format oci writes an oci-archive (a tar of an OCI
image layout), read by skopeo's oci-archive:, 'podman load' and containerd's
'ctr images import'.

The file appears only once the whole image is written: an export that fails
leaves nothing behind. '-o -' writes to standard output instead.

Release images can also be pulled from the server's read-only registry at
the API address (plain HTTP), with any user name and the API token as the
password:
  skopeo inspect --tls-verify=false --creds pier:$PIER_TOKEN docker://127.0.0.1:4280/web:v3

Releases built before pier kept images have none: deploy again to make one.`,
		Example: `  pier releases export -o web.tar
  pier releases export -a web v3 -o web-v3.tar
  pier releases export --format oci -o web.oci.tar
  pier releases export -o - | podman load

  skopeo inspect docker-archive:web.tar
  podman load -i web.tar
  docker load -i web.tar
  skopeo copy oci-archive:web.oci.tar docker://registry.example.com/web:v3
  ctr images import web.oci.tar`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "docker" && format != "oci" {
				return fmt.Errorf("unknown --format %q: use docker (a docker-archive) or oci (an oci-archive)", format)
			}
			version := "current"
			if len(args) == 1 {
				version = args[0]
			}
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			if output == "-" {
				_, err := c.ExportImage(cmd.Context(), app, version, format, e.stdout)
				return err
			}
			// Written next to the output and renamed over it when whole.
			f, err := os.CreateTemp(filepath.Dir(output), "."+filepath.Base(output)+".tmp-")
			if err != nil {
				return fmt.Errorf("cannot write %s: %w", output, err)
			}
			done := false
			defer func() {
				if !done {
					f.Close()
					os.Remove(f.Name())
				}
			}()
			n, err := c.ExportImage(cmd.Context(), app, version, format, f)
			if err != nil {
				return err
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("write %s: %w", output, err)
			}
			if err := os.Rename(f.Name(), output); err != nil {
				return fmt.Errorf("write %s: %w", output, err)
			}
			done = true
			what := map[string]string{"docker": "docker-archive", "oci": "oci-archive"}[format]
			fmt.Fprintf(e.stderr, "wrote the %s release of %s to %s (%s, %s)\n", version, app, output, what, pier.Bytes(n))
			return nil
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "", "file to write, replaced only when the export is whole (- for standard output)")
	cmd.Flags().StringVar(&format, "format", "docker", "docker (a docker-archive, for docker/podman load) or oci (an oci-archive)")
	cmd.MarkFlagRequired("output")
	return cmd
}
