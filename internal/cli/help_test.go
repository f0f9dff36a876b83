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
	readCommands := map[string]bool{"pier status": true, "pier releases": true, "pier apps list": true, "pier secrets list": true, "pier logs": true,
		"pier stat": true, "pier top": true, "pier graph": true, "pier mesh identity": true, "pier mesh status": true,
		"pier certs list": true}
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

// TestMeshHelp: the mesh commands' --help explains their flags, columns
// and states.
func TestMeshHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"stat"}, []string{"--edges", "--window", "--json", "SUCCESS", "RPS", "P50 P95 P99", "TCP", "DENIED", "REQUESTS", `"edge"`, "edge proxy", "at most 24h"}},
		{[]string{"top"}, []string{"--window", "--interval", "--once", "--json", "--limit", "Ctrl-C", ":id", "not a terminal"}},
		{[]string{"mesh", "identity"}, []string{"--json", "SPIFFE ID", "issuer", "machines"}},
		{[]string{"mesh", "status"}, []string{"--json", "trust anchors", "issuer", "leaf TTL", "Previous issuers"}},
		{[]string{"mesh", "rotate"}, []string{"--anchor", "--json", "Calls continue", "overlap"}},
		{[]string{"graph"}, []string{"--format", "declared", "used", "denied", "undeclared", `"edge"`, "last 24 hours"}},
		{[]string{"connect"}, []string{"another app", "http://api.internal", "pier connect web api"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			root := NewRoot(strings.NewReader(""), &out, &bytes.Buffer{})
			root.SetArgs(append(tc.args, "--help"))
			if err := root.Execute(); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("--help lacks %q:\n%s", w, out.String())
				}
			}
		})
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
