package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// staticServeCmd is how pier serves static sites: the machine of a static
// app runs the pier binary itself with this hidden command.
func staticServeCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "static-serve",
		Short:  "Serve a directory of files on $PORT (used by static-site machines)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			port := os.Getenv("PORT")
			if port == "" {
				return errors.New("PORT is not set")
			}
			srv := &http.Server{Addr: ":" + port, Handler: http.FileServer(noDotFiles{http.Dir(dir)}), ReadHeaderTimeout: 10 * time.Second}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s on :%s\n", dir, port)
			if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to serve")
	return cmd
}

// noDotFiles hides dot files (.git, .env, .pier) from static sites.
type noDotFiles struct{ fs http.FileSystem }

func (n noDotFiles) Open(name string) (http.File, error) {
	for _, part := range splitPath(name) {
		if len(part) > 0 && part[0] == '.' {
			return nil, os.ErrNotExist
		}
	}
	return n.fs.Open(name)
}

func splitPath(p string) []string {
	var parts []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			parts = append(parts, p[start:i])
			start = i + 1
		}
	}
	return parts
}
