package runc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/runtime/shim"
)

// eventuallyHas waits (bounded) until out holds want.
func eventuallyHas(t *testing.T, out *lines, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A server that stops detaches from its machines, which run on under their
// monitors; the next server recovers them: same process, same address,
// and the output written while no server was attached.
func TestMachinesOutliveTheDriver(t *testing.T) {
	need(t)
	subnet := freeSubnet(testBridge, drv.fw.subnet)
	if subnet == "" {
		t.Fatal("no free /24 for a second driver")
	}
	state := filepath.Join(filepath.Dir(stateDir), "state-recover")
	cfg := Config{StateDir: state, Subnet: subnet, Bridge: fmt.Sprintf("pr%d", os.Getpid()%100000)}
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var second *Driver
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, d := range []*Driver{second, first} {
			if d != nil {
				d.Cleanup(ctx, nil)
			}
		}
		if err := first.Uninstall(ctx); err != nil {
			t.Errorf("uninstall: %v", err)
		}
		os.RemoveAll(state)
	})

	out1 := &lines{}
	spec := runtime.Spec{ID: newID(), App: "test", Command: []string{"/bin/machine"}, Stdout: out1, Stderr: out1, Rootfs: []string{rootfsDir},
		HostPorts: []int{9}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p1, err := first.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	m1 := &machineT{Process: p1, id: spec.ID, stdout: out1}
	waitServing(t, m1)
	get(t, m1, "/say", url.Values{"line": {"before the restart"}})
	eventuallyHas(t, out1, "before the restart")
	exiting := &machineT{Process: mustStart(t, first, func(s *runtime.Spec) { s.Command = []string{"/bin/machine"} }), id: ""}
	exiting.id = exiting.Process.(*proc).id
	waitServing(t, exiting)

	// The server goes.
	first.Detach()
	if exit := waitExit(t, m1, 10*time.Second); !exit.Detached {
		t.Fatalf("Wait after Detach = %+v, want Detached", exit)
	}
	if _, err := first.Start(ctx, runtime.Spec{ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}}); err == nil {
		t.Error("a detached driver started a machine")
	}
	// The machines run on, and write and exit with nobody attached.
	if code, body := get(t, m1, "/say", url.Values{"line": {"while no server was attached"}}); code != 200 || body != "said" {
		t.Fatalf("machine after its server left: %d %q", code, body)
	}
	client.Get("http://" + exiting.Addr() + "/exit?code=7")
	time.Sleep(200 * time.Millisecond)

	// The next server.
	if second, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	out2 := &lines{}
	p2, err := second.Recover(ctx, spec.ID, out2, out2)
	if err != nil {
		t.Fatal(err)
	}
	m2 := &machineT{Process: p2, id: spec.ID, stdout: out2}
	if p2.PID() != p1.PID() || p2.Addr() != p1.Addr() {
		t.Errorf("recovered machine: pid %d at %s, want the same process %d at %s", p2.PID(), p2.Addr(), p1.PID(), p1.Addr())
	}
	eventuallyHas(t, out2, "while no server was attached")
	if strings.Contains(out2.String(), "before the restart") {
		t.Errorf("the next server got output the first one had:\n%s", out2)
	}
	get(t, m2, "/say", url.Values{"line": {"after the restart"}})
	eventuallyHas(t, out2, "after the restart")
	// Its reach to the host port it was given is back.
	if rules, err := second.fw.hostRuleIDs(ctx); err != nil || rules[spec.ID] != 1 {
		t.Errorf("host-port rules of the recovered machine: %v %v", rules, err)
	}
	if _, err := second.Recover(ctx, spec.ID, nil, nil); err == nil {
		t.Error("a machine was recovered twice")
	}

	// The one that exited meanwhile comes back exited, with its status.
	out3 := &lines{}
	p3, err := second.Recover(ctx, exiting.id, out3, out3)
	if err != nil {
		t.Fatal(err)
	}
	if exit := waitExit(t, &machineT{Process: p3, id: exiting.id}, 10*time.Second); exit.Code != 7 || exit.Detached {
		t.Errorf("exit of the machine that ended while detached = %+v, want code 7", exit)
	}
	if shim.Running(second.bundle(exiting.id)) {
		t.Error("its monitor still runs after the exit was collected")
	}

	// Recovered machines are machines: signals reach them and the
	// teardown removes everything.
	if err := p2.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if exit := waitExit(t, m2, 10*time.Second); exit.Signal == "" {
		t.Errorf("exit after SIGKILL = %+v", exit)
	}
	if shim.Running(second.bundle(spec.ID)) || exists(second.bundle(spec.ID)) {
		t.Error("the recovered machine's monitor or bundle outlived it")
	}
	if _, err := second.Recover(ctx, spec.ID, nil, nil); !errors.Is(err, ErrNotRecoverable) {
		t.Errorf("Recover of a machine that is gone = %v, want ErrNotRecoverable", err)
	}
}

// mustStart starts a machine of the test server on d.
func mustStart(t *testing.T, d *Driver, edit func(*runtime.Spec)) runtime.Process {
	t.Helper()
	spec := runtime.Spec{ID: newID(), App: "test", Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}}
	if edit != nil {
		edit(&spec)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
