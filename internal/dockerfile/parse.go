package dockerfile

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/pier-dev/pier/internal/pier"
)

// LineError is a problem at one instruction of the Dockerfile: one that
// is malformed or not supported (Kind pier.Invalid), a FROM image that
// cannot be had (Invalid, or Unavailable for an unreachable registry), or
// a step that ran and failed (Failed).
type LineError struct {
	Kind pier.Kind
	// Line is the instruction's first line, from 1.
	Line int
	// Instruction is its source as written, on one line ("RUN make").
	Instruction string
	Err         error
}

func (e *LineError) Error() string {
	if e.Instruction == "" {
		return fmt.Sprintf("Dockerfile line %d: %v", e.Line, e.Err)
	}
	return fmt.Sprintf("Dockerfile line %d: %s: %v", e.Line, e.Instruction, e.Err)
}

func (e *LineError) Unwrap() error { return e.Err }

// kindOf lets pier.KindOf see a LineError's kind.
func kindOf(err error) error {
	var le *LineError
	if errors.As(err, &le) {
		msg := "invalid Dockerfile"
		switch le.Kind {
		case pier.Failed:
			msg = "Dockerfile build failed"
		case pier.Unavailable:
			msg = "Dockerfile build cannot start"
		}
		return &pier.Error{Kind: le.Kind, Msg: msg, Err: err}
	}
	return err
}

// step is one instruction after FROM.
type step struct {
	line int
	text string
	cmd  instructions.Command
}

// dockerfile is a parsed Dockerfile of one stage.
type dockerfile struct {
	escape   rune
	metaArgs []instructions.ArgCommand // ARGs before FROM
	from     string                    // FROM's image, before expansion
	fromLine int
	fromText string
	steps    []step
	warnings []string
}

// maxDockerfile bounds the Dockerfile read into memory.
const maxDockerfile = 1 << 20

// parse reads a Dockerfile with BuildKit's own parser (so its syntax is
// Docker's: continuation lines, the escape directive, JSON and shell
// forms, heredocs) and checks that every instruction is one pier carries
// out, before anything runs.
func parse(data []byte) (*dockerfile, error) {
	if len(data) > maxDockerfile {
		return nil, &LineError{Kind: pier.Invalid, Line: 1, Err: fmt.Errorf("the Dockerfile is larger than %d bytes", maxDockerfile)}
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, &LineError{Kind: pier.Invalid, Line: errLine(err, 1), Err: errors.Unwrap(err)}
	}
	d := &dockerfile{escape: res.EscapeToken}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		d.warnings = append(d.warnings, fmt.Sprintf("Dockerfile line %d: %s", line, w.Short))
	}
	stages := 0
	for _, n := range res.AST.Children {
		text := oneLine(n.Original)
		bad := func(format string, args ...any) error {
			return &LineError{Kind: pier.Invalid, Line: n.StartLine, Instruction: text, Err: fmt.Errorf(format, args...)}
		}
		v, err := instructions.ParseInstruction(n)
		if err != nil {
			return nil, &LineError{Kind: pier.Invalid, Line: n.StartLine, Instruction: text, Err: err}
		}
		if st, ok := v.(*instructions.Stage); ok {
			if stages++; stages > 1 {
				return nil, bad("multi-stage builds are not supported yet: build with one FROM")
			}
			if st.Platform != "" {
				return nil, bad("FROM --platform is not supported: pier builds for the platform it runs on")
			}
			d.from, d.fromLine, d.fromText = st.BaseName, n.StartLine, text
			continue
		}
		if stages == 0 {
			if a, ok := v.(*instructions.ArgCommand); ok {
				d.metaArgs = append(d.metaArgs, *a)
				continue
			}
			return nil, bad("the first instruction must be FROM (or ARG before it)")
		}
		cmd, ok := v.(instructions.Command)
		if !ok {
			return nil, bad("not an instruction")
		}
		if err := supported(cmd); err != nil {
			return nil, bad("%v", err)
		}
		d.steps = append(d.steps, step{line: n.StartLine, text: text, cmd: cmd})
	}
	if stages == 0 {
		return nil, &LineError{Kind: pier.Invalid, Line: 1, Err: errors.New("no FROM instruction: start the Dockerfile with FROM, e.g. FROM pier/minimal")}
	}
	return d, nil
}

// supported says why pier does not carry out cmd, or nil.
func supported(cmd instructions.Command) error {
	switch c := cmd.(type) {
	case *instructions.EnvCommand, *instructions.LabelCommand, *instructions.WorkdirCommand, *instructions.UserCommand,
		*instructions.ExposeCommand, *instructions.StopSignalCommand, *instructions.ArgCommand, *instructions.ShellCommand,
		*instructions.MaintainerCommand:
		return nil
	case *instructions.RunCommand:
		if len(c.FlagsUsed) > 0 {
			return fmt.Errorf("RUN --%s is not supported", strings.Join(c.FlagsUsed, ", --"))
		}
		if len(c.Files) > 0 {
			return errors.New("heredocs are not supported: write the commands on the RUN line or in a script you COPY")
		}
	case *instructions.CmdCommand:
		if len(c.Files) > 0 {
			return errors.New("heredocs are not supported")
		}
	case *instructions.EntrypointCommand:
		if len(c.Files) > 0 {
			return errors.New("heredocs are not supported")
		}
	case *instructions.CopyCommand:
		switch {
		case c.From != "":
			return errors.New("COPY --from is not supported (multi-stage builds are not supported yet)")
		case c.Parents:
			return errors.New("COPY --parents is not supported")
		case len(c.SourceContents) > 0:
			return errors.New("heredocs are not supported")
		}
	case *instructions.AddCommand:
		switch {
		case c.KeepGitDir != nil, c.Checksum != "":
			return errors.New("ADD of remote sources is not supported: only files of the build context can be added")
		case c.Unpack != nil:
			return errors.New("ADD --unpack is not supported: pier does not extract archives")
		case len(c.SourceContents) > 0:
			return errors.New("heredocs are not supported")
		}
	case *instructions.HealthCheckCommand:
		return errors.New("HEALTHCHECK is not supported: declare health checks in pier.toml ([[checks]])")
	case *instructions.VolumeCommand:
		return errors.New("VOLUME is not supported: pier does not make volumes from images; remove the line")
	case *instructions.OnbuildCommand:
		return errors.New("ONBUILD is not supported")
	default:
		return fmt.Errorf("%s is not supported", strings.ToUpper(cmd.Name()))
	}
	return nil
}

// errLine is the first line a BuildKit parser error points at.
func errLine(err error, def int) int {
	var le *parser.LocationError
	if errors.As(err, &le) {
		for _, rs := range le.Locations {
			for _, r := range rs {
				if r.Start.Line > 0 {
					return r.Start.Line
				}
			}
		}
	}
	return def
}

// oneLine shortens an instruction's source for messages and progress.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}
