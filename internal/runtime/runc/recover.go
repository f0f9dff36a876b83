package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/runtime/shim"
)

// Machines outlive the server: each runs under a monitor of its own
// (internal/runtime/shim) that holds its output and exit status. A server
// that stops Detaches; the next one Recovers each machine, with no
// restart and no lost output.

// machineState is what Recover needs of a machine beyond what runc and the
// monitor know, kept in its bundle (on the run dir's tmpfs).
type machineState struct {
	Addr      string `json:"addr"` // host:port of its PORT
	HostPorts []int  `json:"host_ports,omitempty"`
}

const stateFile = "machine.json"

func writeState(run string, st machineState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(run, stateFile), b, 0o600)
}

// Detach lets go of every machine without stopping it: their Wait returns
// an Exit with Detached set, and they run on under their monitors for the
// next server to Recover. The driver starts nothing afterwards.
func (d *Driver) Detach() {
	d.detaching.Store(true)
	d.releaseSpares()
	d.mu.Lock()
	procs := make([]*proc, 0, len(d.procs))
	for _, p := range d.procs {
		procs = append(procs, p)
	}
	d.mu.Unlock()
	for _, p := range procs {
		p.att.Detach()
	}
	for _, p := range procs {
		<-p.done
	}
}

// ErrNotRecoverable says a machine cannot be adopted: it has no monitor
// (it was started by a server without them, or its monitor died), or it
// was a machine that ends with its server.
var ErrNotRecoverable = errors.New("machine cannot be recovered")

// Recover adopts machine id, left running by a previous server, as if
// this driver had started it: its output from where the previous server
// stopped reading goes to stdout and stderr, and Wait, Signal and Exec
// work on it. A machine that exited meanwhile is returned too; its Wait
// returns at once with how it ended. Errors wrap ErrNotRecoverable when the
// machine is not one to adopt (Cleanup then removes it).
func (d *Driver) Recover(ctx context.Context, id string, stdout, stderr io.Writer) (runtime.Process, error) {
	if !validID.MatchString(id) || id == runcRoot {
		return nil, fmt.Errorf("machine id %q: %w", id, ErrNotRecoverable)
	}
	run := d.bundle(id)
	data, err := os.ReadFile(filepath.Join(run, stateFile))
	if err != nil {
		return nil, fmt.Errorf("recover machine %s: %w (%v)", id, ErrNotRecoverable, err)
	}
	var st machineState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("recover machine %s: %w (state: %v)", id, ErrNotRecoverable, err)
	}
	ap, err := netip.ParseAddrPort(st.Addr)
	if err != nil || !d.ipam.prefix.Contains(ap.Addr()) {
		return nil, fmt.Errorf("recover machine %s: %w (address %q)", id, ErrNotRecoverable, st.Addr)
	}
	d.mu.Lock()
	if d.live[id] {
		d.mu.Unlock()
		return nil, fmt.Errorf("recover machine %s: already running", id)
	}
	d.live[id] = true
	d.mu.Unlock()
	ok := false
	defer func() {
		if !ok {
			d.forget(id)
		}
	}()
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	att, err := shim.Attach(actx, run, stdout, stderr)
	if err != nil {
		return nil, fmt.Errorf("recover machine %s: %w (%v)", id, ErrNotRecoverable, err)
	}
	if !d.ipam.claim(ap.Addr()) {
		att.Detach()
		return nil, fmt.Errorf("recover machine %s: address %s is taken", id, ap.Addr())
	}
	// The firewall's chains were rebuilt when the driver started: the
	// machine's reach to its resources goes back in.
	if len(st.HostPorts) > 0 {
		if err := d.fw.allowHost(ctx, id, ap.Addr().String(), d.ipam.gateway.String(), st.HostPorts); err != nil {
			att.Detach()
			d.ipam.release(ap.Addr())
			return nil, fmt.Errorf("recover machine %s: %w", id, err)
		}
	}
	p := &proc{d: d, id: id, log: d.log.With("machine", id), addr: st.Addr, att: att, exited: make(chan struct{}), done: make(chan struct{})}
	if data, err := os.ReadFile(filepath.Join(run, "pid")); err == nil {
		p.pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	d.track(p)
	go p.wait(ap.Addr())
	ok = true
	d.log.Info("machine recovered", "machine", id, "addr", p.addr, "pid", p.pid)
	return p, nil
}

// claim takes address a for a recovered machine; false if it is in use.
func (m *ipam) claim(a netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.taken[a] {
		return false
	}
	m.taken[a] = true
	return true
}

// track records a running machine, for Detach.
func (d *Driver) track(p *proc) {
	d.mu.Lock()
	d.procs[p.id] = p
	d.mu.Unlock()
}
