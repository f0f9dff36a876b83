package appconfig

import (
	"errors"
	"strings"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

// FuzzParse feeds Parse arbitrary documents: it must never panic, a
// rejection must be an *Error naming the file, and what it accepts must be
// safe to run (check paths on the machine's own address, a usable
// RunConfig).
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"app = \"web\"\n[build]\ncommand = \"make\"\nnetwork = \"none\"\n",
		"[[checks]]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"1s\"\n",
		"[[checks]]\npath = \"@127.0.0.1:4280/v1/status\"\n",
		"[env]\nA = \"b\"\n[[routes]]\npath = \"/r/\"\ntimeout = \"3s\"\nretries = 2\n",
		"[http_service]\nauto_stop_machines = \"stop\"\nidle_timeout = \"1m\"\n[[connections]]\nresource = \"db\"\naccess = \"read\"\n",
		"[deploy]\nstrategy = \"rolling\"\nwait_timeout = \"-1s\"\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := Parse(FileName, doc)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.File != FileName || !strings.Contains(err.Error(), FileName) {
				t.Fatalf("rejection %v (%T) does not name %s", err, err, FileName)
			}
			return
		}
		rc := c.RunConfig()
		for _, ch := range rc.Checks {
			if ch.Type == "http" {
				if _, err := pier.CheckURL("10.0.0.1:8080", ch.Path); err != nil {
					t.Fatalf("accepted check path %q is unsafe: %v", ch.Path, err)
				}
			}
			if ch.Interval.Duration <= 0 || ch.Timeout.Duration <= 0 {
				t.Fatalf("accepted check with interval %v timeout %v", ch.Interval, ch.Timeout)
			}
		}
	})
}
