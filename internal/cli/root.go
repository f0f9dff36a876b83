// Package cli is the `pier` command line: one file per subcommand, all of
// them clients of the HTTP API except `pier server`, which runs it.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/auth"
	"github.com/pier-dev/pier/internal/client"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// DefaultAPI is where the CLI looks for the API when nothing else is set.
const DefaultAPI = "http://127.0.0.1:4280"

// env holds what every command shares.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	app    string // -a/--app
}

// NewRoot returns the root command with every subcommand.
func NewRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "pier",
		Short: "pier: your own developer cloud",
		Long: `pier turns this machine into a developer cloud: launch an app from source,
get a URL, and redeploy with zero downtime.

Start the platform with 'pier server'; every other command is a client of its
API at $PIER_API (default ` + DefaultAPI + `), authenticated with $PIER_TOKEN or
the credentials 'pier server' saved for the local user.`,
		Example: `  pier server &
  cd myapp && pier launch --yes
  curl http://myapp.localhost:8080/`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddGroup(&cobra.Group{ID: "apps", Title: "Apps:"}, &cobra.Group{ID: "platform", Title: "Platform:"})
	for _, c := range []*cobra.Command{
		e.launchCmd(), e.deployCmd(), e.statusCmd(), e.logsCmd(), e.releasesCmd(), e.rollbackCmd(),
		e.scaleCmd(), e.secretsCmd(), e.appsCmd(), e.machinesCmd(), e.opsCmd(),
	} {
		c.GroupID = "apps"
		root.AddCommand(c)
	}
	root.AddGroup(&cobra.Group{ID: "resources", Title: "Resources:"})
	for _, c := range []*cobra.Command{e.resourcesCmd(), e.connectCmd(), e.disconnectCmd(), e.connectionsCmd(), e.graphCmd()} {
		c.GroupID = "resources"
		root.AddCommand(c)
	}
	root.AddGroup(&cobra.Group{ID: "mesh", Title: "Mesh:"})
	for _, c := range []*cobra.Command{e.statCmd(), e.topCmd(), e.meshCmd()} {
		c.GroupID = "mesh"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{e.serverCmd(), e.authCmd()} {
		c.GroupID = "platform"
		root.AddCommand(c)
	}
	certs := e.certsCmd()
	certs.GroupID = "apps"
	root.AddCommand(certs)
	root.AddCommand(staticServeCmd())
	return root
}

// Execute runs the CLI and returns the process exit code.
func Execute(ctx context.Context, args []string) int {
	root := NewRoot(os.Stdin, os.Stdout, os.Stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ec *exitCodeError
		if errors.As(err, &ec) {
			return ec.code
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	return 0
}

// client returns an API client from $PIER_API/$PIER_TOKEN or the saved
// credentials.
func (e *env) client() (*client.Client, error) {
	base, token := os.Getenv("PIER_API"), os.Getenv("PIER_TOKEN")
	if base == "" || token == "" {
		creds, ok, err := auth.LoadCredentials()
		if err != nil {
			return nil, err
		}
		if ok {
			if base == "" {
				base = creds.API
			}
			if token == "" && (os.Getenv("PIER_API") == "" || os.Getenv("PIER_API") == creds.API) {
				token = creds.Token
			}
		}
	}
	if base == "" {
		base = DefaultAPI
	}
	if token == "" {
		return nil, fmt.Errorf("no API token: start `pier server` on this machine (it saves one for you), or set PIER_TOKEN (print it with `pier auth token` where the server runs)")
	}
	c := client.New(base, token)
	// Every change is an operation in the server: name it, so that it can
	// be followed from anywhere if this terminal goes away.
	c.OnOperation = func(id string) {
		fmt.Fprintf(e.stderr, "==> Operation %s (follow it from anywhere: pier ops watch %s)\n", id, id)
	}
	return c, nil
}

// addAppFlag adds -a/--app to cmd.
func (e *env) addAppFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&e.app, "app", "a", "", "app to act on (default: the app of ./pier.toml)")
}

// appName resolves the app: --app, else pier.toml in the current directory.
func (e *env) appName() (string, error) {
	if e.app != "" {
		return e.app, nil
	}
	cfg, err := appconfig.Load(".")
	if err != nil {
		return "", err
	}
	if cfg == nil || cfg.App == "" {
		wd, _ := os.Getwd()
		return "", fmt.Errorf("no app given: pass -a APP, or run this in an app's directory (no pier.toml with `app = ...` in %s)", wd)
	}
	return cfg.App, nil
}

// appClient resolves the app and the API client, for commands on one app.
// A command that takes the app as an optional argument passes its args.
func (e *env) appClient(args ...string) (string, *client.Client, error) {
	if len(args) == 1 {
		if e.app != "" && e.app != args[0] {
			return "", nil, fmt.Errorf("two apps given: %s and -a %s", args[0], e.app)
		}
		e.app = args[0]
	}
	app, err := e.appName()
	if err != nil {
		return "", nil, err
	}
	c, err := e.client()
	return app, c, err
}

// dirArg is the optional DIR argument of launch and deploy, made absolute.
func dirArg(args []string) (string, error) {
	if len(args) == 1 {
		return absDir(args[0])
	}
	return absDir(".")
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether f is a terminal (for prompts).
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	// A character device is not enough: /dev/null is one too.
	_, err := unix.IoctlGetTermios(int(file.Fd()), unix.TCGETS)
	return err == nil
}

func absDir(arg string) (string, error) {
	dir, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("%s: %w", arg, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s is not a directory", arg)
	}
	return dir, nil
}

// exactArgs wants n arguments and names them in its error.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %s (got %d argument(s)); see `%s --help`", cmd.CommandPath(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}
