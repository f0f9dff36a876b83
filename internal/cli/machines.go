package cli

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/pier-dev/pier/internal/machines"
	"github.com/spf13/cobra"
)

// exitCodeError makes the CLI exit with a machine command's exit code.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("command exited with code %d", e.code) }

func (e *env) machinesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "machines",
		Aliases: []string{"machine", "m"},
		Short:   "Run and manage machines: an app's, and sandboxes or jobs of your own",
		Long: `Machines are pier's compute primitive: one isolated process tree with its own
namespaces, cgroup limits and network address, from an OCI image. The API is
shaped like the Fly.io Machines API (/v1/apps/{app}/machines). Machines you
create need the runc runtime (pier server as root with runc installed).

An app's releases run on machines too: deploys create and retire them, and
they show here beside your own, with the same states and events. Stop, start
and exec work on them (pier machines exec ID -- sh, to look inside a running
app); their config is the release's, so change pier.toml and deploy instead
of updating them.

Images: oci:PATH[:TAG] (an OCI layout directory), oci-archive:PATH[:TAG],
docker-archive:PATH (a docker save tarball), a registry reference, or
release:APP[:vN] (an app's release, as apps run).`,
	}
	cmd.AddCommand(e.machinesRunCmd(), e.machinesListCmd(), e.machineShowCmd(), e.machineActionCmd("start"),
		e.machineStopCmd(), e.machineWaitCmd(), e.machineExecCmd(), e.machineDestroyCmd())
	return cmd
}

func (e *env) machinesRunCmd() *cobra.Command {
	var req machines.CreateRequest
	var envs []string
	var port int
	var detach bool
	cmd := &cobra.Command{
		Use:   "run IMAGE [-- CMD...]",
		Short: "Create and start a machine from an image",
		Example: `  pier machines run oci:./layout:latest -a sbx -- /bin/sh -c 'echo hi'
  pier machines run docker-archive:app.tar -a sbx --cpus 1 --memory 256 --port 8080 --rm`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Config.Image = args[0]
			if len(args) > 1 {
				req.Config.Init.Cmd = args[1:]
			}
			for _, kv := range envs {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--env %q is not NAME=VALUE", kv)
				}
				if req.Config.Env == nil {
					req.Config.Env = map[string]string{}
				}
				req.Config.Env[k] = v
			}
			if port > 0 {
				req.Config.Services = []machines.Service{{Protocol: "tcp", InternalPort: port}}
			}
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			m, err := c.CreateMachine(cmd.Context(), app, req)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "machine %s (%s) created from %s\n", m.ID, m.Name, m.ImageRef.Digest)
			if detach {
				return nil
			}
			if err := c.WaitMachine(cmd.Context(), app, m.ID, machines.StateStarted, "60"); err != nil {
				return fmt.Errorf("machine %s did not start: %w (see `pier logs %s`)", m.ID, err, app)
			}
			got, err := c.Machine(cmd.Context(), app, m.ID)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "machine %s is %s at %s\n", m.ID, got.State, got.PrivateIP)
			return nil
		},
	}
	e.addAppFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "machine name (default: generated)")
	f.IntVar(&req.Config.Guest.CPUs, "cpus", 1, "CPU cores")
	f.IntVar(&req.Config.Guest.MemoryMB, "memory", 256, "memory limit in MB (exceeding it gets the machine OOM-killed)")
	f.IntVar(&req.Config.Guest.RootfsSizeMB, "disk", 0, "what the machine may write to its root filesystem, in MB (default: the server's --machine-disk-mb)")
	f.StringArrayVarP(&envs, "env", "e", nil, "environment variable NAME=VALUE (repeatable)")
	f.IntVar(&port, "port", 0, "port the machine listens on (passed as PORT)")
	f.StringVar(&req.Config.Restart.Policy, "restart", "", "restart policy: no, always or on-failure (default)")
	f.BoolVar(&req.Config.AutoDestroy, "rm", false, "destroy the machine when it exits")
	f.BoolVarP(&detach, "detach", "d", false, "return once created instead of waiting for it to start")
	return cmd
}

func (e *env) machinesListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List an app's machines: its releases' and those made with `pier machines run`",
		Example: `  pier machines list -a sbx --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			ms, err := c.Machines(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, ms)
			}
			if len(ms) == 0 {
				fmt.Fprintf(e.stdout, "%s has no machines (create one with `pier machines run`)\n", app)
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tIMAGE\tADDRESS\tCPUS\tMEMORY\tUPDATED")
			for _, m := range ms {
				// An app's release machines have the server's default size.
				cpus, mem := "default", "default"
				if m.Config.Guest.CPUs > 0 {
					cpus = strconv.Itoa(m.Config.Guest.CPUs)
				}
				if m.Config.Guest.MemoryMB > 0 {
					mem = fmt.Sprintf("%d MB", m.Config.Guest.MemoryMB)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", m.ID, m.Name, m.State, m.Config.Image, m.PrivateIP, cpus, mem, ago(m.UpdatedAt))
			}
			return tw.Flush()
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) machineShowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "show ID",
		Short:   "Show a machine's config, state and events (JSON)",
		Example: `  pier machines show 3d8d9b1c2e4f5a -a sbx`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			m, err := c.Machine(cmd.Context(), app, args[0])
			if err != nil {
				return err
			}
			return printJSON(e.stdout, m)
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().Bool("json", true, "print JSON (the only format)")
	return cmd
}

func (e *env) machineActionCmd(action string) *cobra.Command {
	cmd := &cobra.Command{
		Use:     action + " ID",
		Short:   "Start a created or stopped machine",
		Example: `  pier machines start 3d8d9b1c2e4f5a -a sbx`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			if err := c.StartMachine(cmd.Context(), app, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "machine %s starting\n", args[0])
			return nil
		},
	}
	e.addAppFlag(cmd)
	return cmd
}

func (e *env) machineStopCmd() *cobra.Command {
	var req machines.StopRequest
	cmd := &cobra.Command{
		Use:     "stop ID",
		Short:   "Stop a machine: send a signal, then SIGKILL after the timeout",
		Example: `  pier machines stop 3d8d9b1c2e4f5a -a sbx --signal SIGINT --timeout 5s`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			if err := c.StopMachine(cmd.Context(), app, args[0], req); err != nil {
				return err
			}
			if err := c.WaitMachine(cmd.Context(), app, args[0], machines.StateStopped, "60"); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "machine %s stopped\n", args[0])
			return nil
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().StringVar(&req.Signal, "signal", "", "signal to send first (default SIGTERM)")
	cmd.Flags().StringVar(&req.Timeout, "timeout", "", "time before SIGKILL (default 10s)")
	return cmd
}

func (e *env) machineWaitCmd() *cobra.Command {
	var state, timeout string
	cmd := &cobra.Command{
		Use:     "wait ID",
		Short:   "Wait until a machine reaches a state",
		Example: `  pier machines wait 3d8d9b1c2e4f5a -a sbx --state stopped --timeout 30s`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			if err := c.WaitMachine(cmd.Context(), app, args[0], state, timeout); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "machine %s is %s\n", args[0], state)
			return nil
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().StringVar(&state, "state", machines.StateStarted, "state to wait for: started, stopped, destroyed, failed")
	cmd.Flags().StringVar(&timeout, "timeout", "60s", "how long to wait")
	return cmd
}

func (e *env) machineExecCmd() *cobra.Command {
	var timeout int
	cmd := &cobra.Command{
		Use:     "exec ID -- CMD...",
		Short:   "Run a command in a started machine; exits with its exit code",
		Example: `  pier machines exec 3d8d9b1c2e4f5a -a sbx -- cat /etc/os-release`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			res, err := c.ExecMachine(cmd.Context(), app, args[0], machines.ExecRequest{Command: args[1:], Timeout: timeout})
			if err != nil {
				return err
			}
			fmt.Fprint(e.stdout, res.Stdout)
			fmt.Fprint(e.stderr, res.Stderr)
			if res.ExitCode != 0 {
				return &exitCodeError{res.ExitCode}
			}
			return nil
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().IntVar(&timeout, "timeout", 30, "seconds before the command is killed")
	return cmd
}

func (e *env) machineDestroyCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "destroy ID",
		Short:   "Destroy a machine (a started one needs --force)",
		Example: `  pier machines destroy 3d8d9b1c2e4f5a -a sbx --force`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			if err := c.DestroyMachine(cmd.Context(), app, args[0], force); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "machine %s destroyed\n", args[0])
			return nil
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill the machine if it is running")
	return cmd
}
