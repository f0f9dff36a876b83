package cli

import (
	"bytes"
	"context"
	"fmt"

	"github.com/pier-dev/pier/internal/pier"

	"github.com/spf13/cobra"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/client"
)

func (e *env) deployCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "deploy [DIR]",
		Short: "Build the app in DIR (default .) and roll out a new release",
		Long: `Upload the source in DIR, build it on the server and roll the new release
out with zero downtime: new machines must pass their health checks before
they take traffic, and old ones drain before they stop. If the build or the
checks fail, the running release keeps serving untouched.`,
		Example: `  pier deploy
  pier deploy ./web -a web`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := dirArg(args)
			if err != nil {
				return err
			}
			app := e.app
			if app == "" {
				cfg, err := appconfig.Load(dir)
				if err != nil {
					return err
				}
				if cfg == nil || cfg.App == "" {
					return fmt.Errorf("no app given: pass -a APP, or run `pier launch` first to create the app and its pier.toml in %s", dir)
				}
				app = cfg.App
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			return e.deployDir(cmd.Context(), c, app, dir)
		},
	}
	e.addAppFlag(cmd)
	return cmd
}

// deployDir uploads dir as app's source and follows the build and rollout.
func (e *env) deployDir(ctx context.Context, c *client.Client, app, dir string) error {
	var src bytes.Buffer
	if err := build.Pack(dir, &src); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "==> Uploading %s (%s compressed)\n", dir, pier.Bytes(int64(src.Len())))
	rel, err := c.Deploy(ctx, app, &src, e.untrustedOut())
	if err != nil {
		return fmt.Errorf("deploy of %s failed: %w", app, err)
	}
	st, err := c.App(ctx, app)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\n%s v%d is live at %s\n", app, rel.Version, st.URL)
	return nil
}
