package cli

import (
	"fmt"
	"strings"

	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/spf13/cobra"
)

func (e *env) connectCmd() *cobra.Command {
	var access, as string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "connect APP RESOURCE",
		Short: "Give an app access to a resource, or let it call another app",
		Long: `Connect an app to a resource. pier creates credentials for this app alone
with exactly the access asked for (a Postgres role with grants, a Redis ACL user
limited to the app's keys, an access key limited to the bucket), stores them
encrypted, and rolls the app with zero downtime so its machines get them as env
vars. The variables are named after the resource, or --as NAME:

  postgres  DB_URL DB_HOST DB_PORT DB_USER DB_PASSWORD DB_DATABASE (+ DATABASE_URL)
  redis     CACHE_URL CACHE_HOST ... CACHE_KEY_PREFIX (+ REDIS_URL)
  bucket    UPLOADS_BUCKET UPLOADS_ACCESS_KEY_ID UPLOADS_SECRET_ACCESS_KEY
            UPLOADS_ENDPOINT ... (+ AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
            AWS_ENDPOINT_URL_S3 AWS_REGION BUCKET_NAME)

The names in parentheses are given to the app's only connection of that type.
Access levels: read, readwrite (the default), admin (postgres: owns the schema,
for migrations).

The target may also be another app: ` + "`pier connect web api`" + ` lets web call api
through the mesh at http://api.internal (web's machines get API_URL), over
mutual TLS with each app's identity; calls without a connection are denied.
Its access is call; it needs the runc runtime. See ` + "`pier stat`" + ` and
` + "`pier graph`" + ` for the traffic, and ` + "`pier mesh`" + ` for identities.`,
		Example: `  pier connect web db                    # readwrite
  pier connect reports db --access read  # SELECT only
  pier connect web cache
  pier connect web uploads --as media    # MEDIA_BUCKET, MEDIA_ACCESS_KEY_ID, ...
  pier connect web api                   # web may call http://api.internal`,
		Args: exactArgs(2, "APP RESOURCE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			out := e.stdout
			if asJSON {
				out = e.stderr
			}
			conn, err := c.Connect(cmd.Context(), args[0], api.ConnectRequest{Target: args[1], Access: resources.Access(access), As: as}, out)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, conn)
			}
			fmt.Fprintf(e.stdout, "\n%s is connected to %s (%s). Its machines have: %s\n", conn.App, conn.Target, conn.Access, strings.Join(conn.Env, " "))
			return nil
		},
	}
	cmd.Flags().StringVar(&access, "access", "", "read, readwrite or admin (default: the type's default, readwrite); call for an app (its only access)")
	cmd.Flags().StringVar(&as, "as", "", "name of the connection, which prefixes its env vars (default: the resource's name)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the connection as JSON")
	return cmd
}

func (e *env) disconnectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "disconnect APP RESOURCE",
		Short: "Remove an app's access to a resource",
		Long: `Disconnect an app from a resource: the app is rolled without the
credentials, then they are revoked (the role, ACL user or access key is deleted
and sessions opened with it are ended).`,
		Example: `  pier disconnect reports db`,
		Args:    exactArgs(2, "APP RESOURCE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.Disconnect(cmd.Context(), args[0], args[1], e.stdout); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "\n%s is disconnected from %s; its credentials are revoked\n", args[0], args[1])
			return nil
		},
	}
}
