package runtime

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"sync"
)

// StartWithOutput starts cmd with stdout and stderr on pipes of its own
// (not cmd.StdoutPipe: Wait must not hang on a grandchild holding a pipe)
// and copies them line by line to stdout and stderr (nil discards). The
// returned WaitGroup is done once every process holding the pipes is gone
// and all output is copied.
func StartWithOutput(cmd *exec.Cmd, stdout, stderr io.Writer) (*sync.WaitGroup, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close() // the child holds its own copies
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); copyLines(stdout, outR) }()
	go func() { defer copies.Done(); copyLines(stderr, errR) }()
	return &copies, nil
}

// copyLines writes each line of r to w in one Write, so line-oriented sinks
// (the log hub) never see half lines.
func copyLines(w io.Writer, r *os.File) {
	defer r.Close()
	if w == nil {
		w = io.Discard
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		w.Write(append(sc.Bytes(), '\n'))
	}
	io.Copy(io.Discard, r) // a line over 1 MiB: drain so the writer is not blocked
}
