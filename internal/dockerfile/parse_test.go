package dockerfile

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/pier-dev/pier/internal/pier"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestParseErrors: every Dockerfile pier refuses is refused before
// anything runs, with the line and instruction at fault; the messages are
// kept in testdata/parse_errors.golden.
func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, src string
		line      int
	}{
		{"no from", "RUN echo\n", 1},
		{"empty", "# just a comment\n", 1},
		{"unknown instruction", "FROM scratch\nFROB x\n", 2},
		{"multi-stage", "FROM pier/go AS build\nRUN go build\nFROM pier/minimal\n", 3},
		{"copy from", "FROM scratch\nCOPY --from=build /app /app\n", 2},
		{"run mount", "FROM scratch\nRUN --mount=type=cache,target=/root/.cache make\n", 2},
		{"run network", "FROM scratch\n\nRUN --network=none make\n", 3},
		{"heredoc", "FROM scratch\nRUN <<EOF\necho hi\nEOF\n", 2},
		{"healthcheck", "FROM scratch\nHEALTHCHECK CMD curl -f http://localhost/\n", 2},
		{"volume", "FROM scratch\nVOLUME /data\n", 2},
		{"onbuild", "FROM scratch\nONBUILD RUN make\n", 2},
		{"platform", "FROM --platform=linux/arm64 scratch\n", 1},
		{"add checksum", "FROM scratch\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.com/x /x\n", 2},
		{"continuation", "FROM scratch\nRUN echo a \\\n  && echo b\nHEALTHCHECK NONE\n", 4},
		{"bad env", "FROM scratch\nENV\n", 2},
		{"instruction before from", "ENV A=1\nFROM scratch\n", 1},
	}
	var golden strings.Builder
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse([]byte(c.src))
			var le *LineError
			if !errors.As(err, &le) {
				t.Fatalf("error %v is not a *LineError", err)
			}
			if le.Line != c.line || le.Kind != pier.Invalid {
				t.Errorf("line %d kind %v, want line %d, invalid: %v", le.Line, le.Kind, c.line, err)
			}
			if pier.KindOf(kindOf(err)) != pier.Invalid {
				t.Errorf("kind not visible to pier.KindOf: %v", kindOf(err))
			}
			fmt.Fprintf(&golden, "%s: %v\n", c.name, err)
		})
	}
	compareGolden(t, "parse_errors.golden", golden.String())
}

func compareGolden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

func TestParse(t *testing.T) {
	src := `# syntax=docker/dockerfile:1
ARG BASE=pier/node
FROM ${BASE}
ENV NODE_ENV=production \
    PORT=3000
WORKDIR /app
COPY --chown=1000:1000 package.json ./
RUN ["npm", "ci"]
RUN npm run build && \
    rm -rf /tmp/*
EXPOSE 3000
USER 1000
CMD ["node", "server.js"]
`
	d, err := parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if d.from != "${BASE}" || d.fromLine != 3 || len(d.metaArgs) != 1 {
		t.Errorf("from %q line %d meta %d", d.from, d.fromLine, len(d.metaArgs))
	}
	var lines []int
	var names []string
	for _, s := range d.steps {
		lines = append(lines, s.line)
		names = append(names, s.cmd.Name())
	}
	if fmt.Sprint(lines) != "[4 6 7 8 9 11 12 13]" || strings.Join(names, " ") != "ENV WORKDIR COPY RUN RUN EXPOSE USER CMD" {
		t.Errorf("steps at %v: %v", lines, names)
	}
	run := d.steps[4].cmd.(*instructions.RunCommand)
	if !run.PrependShell || d.steps[4].text != "RUN npm run build && rm -rf /tmp/*" {
		t.Errorf("shell RUN %+v %q", run.CmdLine, d.steps[4].text)
	}
}

func TestExposed(t *testing.T) {
	for in, want := range map[string]string{"80": "[80/tcp]", "53/udp": "[53/udp]", "8000-8002/TCP": "[8000/tcp 8001/tcp 8002/tcp]"} {
		got, err := exposed(in)
		if err != nil || fmt.Sprint(got) != want {
			t.Errorf("exposed(%q) = %v %v, want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "http", "0", "70000", "80/icmp", "9-1"} {
		if _, err := exposed(bad); err == nil {
			t.Errorf("exposed(%q) accepted", bad)
		}
	}
}
