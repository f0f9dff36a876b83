package cli

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/client"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/spf13/cobra"
)

func (e *env) launchCmd() *cobra.Command {
	var name string
	var yes, noResources bool
	cmd := &cobra.Command{
		Use:   "launch [DIR]",
		Short: "Detect, configure, build and deploy the app in DIR (default .)",
		Long: `Launch a new app from source: detect what it is (Dockerfile, Go, Node,
Python, static site or Procfile), write pier.toml, create the app, build it,
deploy it and print its URL.

Detection: Dockerfile → built from it (RUN steps in build machines, started
with its ENTRYPOINT/CMD on its lowest EXPOSEd port); go.mod → Go; package.json
→ Node (npm ci / npm install, started with scripts.start or main);
requirements.txt, pyproject.toml, app.py or main.py → Python; Procfile → its
web: command; index.html → a static site served by pier. A Procfile's web:
line wins for the start command; [build] in pier.toml overrides both.

Builds run in isolated build machines (under the runc runtime) and become an
OCI image: a base made from the host's Debian packages plus the app at /app.
See pier releases --help for where images go.

Resources: when the code evidently uses Postgres (pgx, lib/pq, pg, psycopg,
asyncpg), Redis (go-redis, redis, ioredis) or S3 (the AWS SDKs, minio), launch
offers to create APP-db, APP-cache or APP-files and connect them; it declares
them in pier.toml ([[connections]]) so every deploy keeps them connected.
--no-resources skips this.

The app must listen on the port in $PORT.`,
		Example: `  pier launch
  pier launch ./web --name web --yes`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := dirArg(args)
			if err != nil {
				return err
			}
			cfg, err := appconfig.Load(dir)
			if err != nil {
				return err
			}
			hadConfig := cfg != nil
			if cfg == nil {
				cfg = &appconfig.Config{}
			}
			switch {
			case name != "" && cfg.App != "" && name != cfg.App:
				return fmt.Errorf("%s says app = %q; drop --name or change pier.toml", filepath.Join(dir, appconfig.FileName), cfg.App)
			case name == "" && cfg.App != "":
				name = cfg.App
			case name == "":
				name = nameFromDir(dir)
			}
			if err := pier.ValidateAppName(name); err != nil {
				return fmt.Errorf("%w (choose one with --name)", err)
			}
			plan, err := build.Detect(dir, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "==> Detected a %s app in %s\n    %s\n", plan.Builder, dir, plan.Describe())
			var wanted []wantedResource
			if !noResources && len(cfg.Connections) == 0 {
				wanted = wantedResources(name, build.Needs(dir))
				for _, w := range wanted {
					fmt.Fprintf(e.stdout, "==> Your code uses %s (%s): pier will create %s %s and connect it\n", w.typ, w.reason, w.typ, w.name)
				}
			}
			if !yes {
				if !isTerminal(e.stdin) {
					return fmt.Errorf("launch asks for confirmation: pass --yes to accept the defaults when not running interactively")
				}
				what := fmt.Sprintf("app %q", name)
				for _, w := range wanted {
					what += fmt.Sprintf(", %s %s", w.typ, w.name)
				}
				fmt.Fprintf(e.stdout, "Create %s and deploy? [Y/n] ", what)
				answer, _ := bufio.NewReader(e.stdin).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(answer)); a != "" && a != "y" && a != "yes" {
					return fmt.Errorf("launch cancelled; nothing was changed")
				}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if _, err := c.App(ctx, name); client.IsNotFound(err) {
				if _, err := c.CreateApp(ctx, name); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "==> Created app %s\n", name)
			} else if err != nil {
				return err
			} else if !hadConfig || cfg.App != name {
				// Only a pier.toml that names the app makes launch reuse it:
				// a name clash must not overwrite someone else's app.
				return fmt.Errorf("an app named %s already exists: choose another name with --name, or deploy to it on purpose with `pier deploy -a %s`", name, name)
			} else {
				fmt.Fprintf(e.stdout, "==> App %s exists (named in pier.toml); deploying a new release\n", name)
			}
			if !hadConfig || cfg.App == "" {
				cfg.App = name
				if err := writeConfig(dir, cfg); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "==> Wrote %s\n", filepath.Join(dir, appconfig.FileName))
			}
			if err := e.createWanted(ctx, c, dir, wanted); err != nil {
				return err
			}
			return e.deployDir(ctx, c, name, dir)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "app name (default: the directory's name)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "accept every default without prompting (for scripts and CI)")
	cmd.Flags().BoolVar(&noResources, "no-resources", false, "do not create or connect the resources the code seems to use")
	return cmd
}

var notName = regexp.MustCompile(`[^a-z0-9-]+`)

// nameFromDir turns a directory name into an app name: "My_App" → "my-app".
func nameFromDir(dir string) string {
	n := notName.ReplaceAllString(strings.ToLower(filepath.Base(dir)), "-")
	n = strings.Trim(n, "-")
	if n == "" || n[0] < 'a' || n[0] > 'z' {
		n = "app-" + n
	}
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	return n
}

// writeConfig writes pier.toml, keeping an existing file's other settings.
func writeConfig(dir string, cfg *appconfig.Config) error {
	path := filepath.Join(dir, appconfig.FileName)
	if old, err := os.ReadFile(path); err == nil {
		// Only app = was missing: prepend it rather than rewrite the user's file.
		return os.WriteFile(path, append([]byte(fmt.Sprintf("app = %q\n", cfg.App)), old...), 0o644)
	}
	return os.WriteFile(path, appconfig.New(cfg.App), 0o644)
}

// wantedResource is a resource launch creates and connects.
type wantedResource struct {
	typ, name, as, reason string
}

// wantedResources names a resource for each need: APP-db, APP-cache,
// APP-files, connected as db, cache and files.
func wantedResources(app string, needs []build.Need) []wantedResource {
	short := map[string]string{"postgres": "db", "redis": "cache", "bucket": "files"}
	var out []wantedResource
	for _, n := range needs {
		s, ok := short[n.Type]
		if !ok {
			continue
		}
		name := app + "-" + s
		if len(name) > 63 {
			name = strings.TrimRight(app[:63-len(s)-1], "-") + "-" + s
		}
		out = append(out, wantedResource{typ: n.Type, name: name, as: s, reason: n.Reason})
	}
	return out
}

// createWanted creates the wanted resources that do not exist (one of the
// same type and name is reused) and declares their connections in
// pier.toml, so the deploy that follows connects them.
func (e *env) createWanted(ctx context.Context, c *client.Client, dir string, wanted []wantedResource) error {
	if len(wanted) == 0 {
		return nil
	}
	var decl strings.Builder
	for _, w := range wanted {
		r, err := c.Resource(ctx, w.name)
		switch {
		case err == nil && r.Type != w.typ:
			return fmt.Errorf("a %s resource named %s exists already; rename it or pass --no-resources", r.Type, w.name)
		case err == nil:
			fmt.Fprintf(e.stdout, "==> Using the existing %s %s\n", w.typ, w.name)
		case client.IsNotFound(err):
			if _, err := c.CreateResource(ctx, api.CreateResourceRequest{Name: w.name, Type: w.typ}, e.stdout); err != nil {
				return err
			}
		default:
			return err
		}
		fmt.Fprintf(&decl, "\n[[connections]]\nresource = %q\nas = %q\n", w.name, w.as)
	}
	path := filepath.Join(dir, appconfig.FileName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(decl.String()); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "==> Declared the connections in %s\n", path)
	return nil
}
