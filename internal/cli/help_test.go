package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandDocumented walks the command tree: every runnable command
// has a short description and an example, and every read command has --json.
func TestEveryCommandDocumented(t *testing.T) {
	root := NewRoot(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	readCommands := map[string]bool{"pier status": true, "pier releases": true, "pier apps list": true, "pier secrets list": true, "pier logs": true, "pier certs list": true}
	var walk func(c *cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Hidden || !c.Runnable() || c.Name() == "help" || strings.HasPrefix(c.CommandPath(), "pier completion") {
			return
		}
		seen++
		if c.Short == "" {
			t.Errorf("%s has no short description", c.CommandPath())
		}
		if c.Example == "" {
			t.Errorf("%s has no example in --help", c.CommandPath())
		}
		if readCommands[c.CommandPath()] && c.Flags().Lookup("json") == nil {
			t.Errorf("%s is a read command without --json", c.CommandPath())
		}
	}
	walk(root)
	if seen < 15 {
		t.Errorf("walked only %d commands; the tree is not what this test expects", seen)
	}
}

func TestNameFromDir(t *testing.T) {
	tests := map[string]string{
		"/src/web":                        "web",
		"/src/My_App":                     "my-app",
		"/src/2fast":                      "app-2fast",
		"/src/--x--":                      "x",
		"/src/" + strings.Repeat("a", 80): strings.Repeat("a", 63),
	}
	for in, want := range tests {
		if got := nameFromDir(in); got != want {
			t.Errorf("nameFromDir(%q) = %q, want %q", in, got, want)
		}
	}
}
