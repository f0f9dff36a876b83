// Command pier is a self-hostable developer cloud. See `pier help`.
package main

import (
	"context"
	"os"

	"github.com/pier-dev/pier/internal/cli"
)

func main() {
	os.Exit(cli.Execute(context.Background(), os.Args[1:]))
}
