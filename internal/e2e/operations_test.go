package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/ops"
)

var opIDRE = regexp.MustCompile(`==> Operation (op_[0-9a-f]+)`)

// background is a CLI command running on its own, with its output so far.
type background struct {
	cmd  *exec.Cmd
	id   chan string // the operation it started, once printed
	mu   sync.Mutex
	out  strings.Builder
	done chan error
}

func (b *background) output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.String()
}

// pierBackground starts the CLI and returns at once.
func (s *server) pierBackground(args ...string) *background {
	s.t.Helper()
	b := &background{cmd: exec.Command(pierBin, args...), id: make(chan string, 1), done: make(chan error, 1)}
	b.cmd.Env = s.env()
	pr, pw := io.Pipe()
	b.cmd.Stdout, b.cmd.Stderr = pw, pw
	if err := b.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			b.mu.Lock()
			b.out.WriteString(sc.Text() + "\n")
			b.mu.Unlock()
			if m := opIDRE.FindStringSubmatch(sc.Text()); m != nil && !sent {
				b.id <- m[1]
				sent = true
			}
		}
	}()
	go func() { err := b.cmd.Wait(); pw.Close(); b.done <- err }()
	s.t.Cleanup(func() { b.cmd.Process.Kill() })
	return b
}

// opID waits for the operation id the command prints.
func (b *background) opID(t *testing.T) string {
	t.Helper()
	select {
	case id := <-b.id:
		return id
	case err := <-b.done:
		t.Fatalf("%s exited (%v) without naming an operation:\n%s", b.cmd.Args, err, b.output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s named no operation in 2 minutes:\n%s", b.cmd.Args, b.output())
	}
	return ""
}

// operation is `GET /v1/operations/ID`.
func (s *server) operation(id string) ops.Operation {
	s.t.Helper()
	var op ops.Operation
	if err := json.Unmarshal([]byte(s.api("/v1/operations/"+id)), &op); err != nil {
		s.t.Fatal(err)
	}
	return op
}

// waitOutput waits until the operation's output holds want.
func (s *server) waitOutput(id, want string, timeout time.Duration) {
	s.t.Helper()
	eventually(s.t, timeout, "operation output "+want, func() error {
		var text strings.Builder
		for _, line := range strings.Split(strings.TrimSpace(s.api("/v1/operations/"+id+"/events?follow=false")), "\n") {
			var ev ops.Event
			json.Unmarshal([]byte(line), &ev)
			text.WriteString(ev.Text)
		}
		if !strings.Contains(text.String(), want) {
			return fmt.Errorf("not yet: %q", text.String())
		}
		return nil
	})
}

// TestOperationOutlivesItsClient kills the CLI in the middle of a deploy:
// the deploy goes on in the server, `pier ops watch` picks it up from any
// terminal and sees it finish, and `pier ops` keeps the record.
func TestOperationOutlivesItsClient(t *testing.T) {
	s := startServer(t)
	dir := copyApp(t, "go")
	setVersion(t, dir, "opsweb", "one", "")
	s.mustPier("launch", dir, "--yes")
	// Version two takes a few seconds to listen: the rollout waits for it.
	writeFile(t, dir+"/pier.toml", "app = \"opsweb\"\n[env]\nVERSION = \"two\"\nSTART_DELAY = \"4s\"\n")
	deploy := s.pierBackground("deploy", dir)
	id := deploy.opID(t)
	s.waitOutput(id, "==> Releasing v2", 2*time.Minute)
	deploy.cmd.Process.Signal(syscall.SIGKILL)
	<-deploy.done
	if op := s.operation(id); op.State != ops.Running || op.Kind != "deploy" || op.Target != "opsweb" || op.Who != "admin" {
		t.Fatalf("after the CLI was killed: %+v; want a running deploy of opsweb by admin", op)
	}

	out, err := s.pier("ops", "watch", id)
	if err != nil {
		t.Fatalf("pier ops watch: %v\n%s", err, out)
	}
	for _, want := range []string{"==> Building opsweb", "==> Releasing v2", "==> v2 is live", id + " succeeded"} {
		if !strings.Contains(out, want) {
			t.Errorf("ops watch output lacks %q:\n%s", want, out)
		}
	}
	s.mustGet("opsweb", "/", "version=two")
	// Resumed from an event number: only what came after.
	op := s.operation(id)
	rest, err := s.pier("ops", "watch", id, "--from", fmt.Sprint(op.Events))
	if err != nil || strings.Contains(rest, "Building") || !strings.Contains(rest, "succeeded") {
		t.Errorf("watch --from %d: %v\n%s", op.Events, err, rest)
	}
	list := s.mustPier("ops", "-a", "opsweb")
	if !regexp.MustCompile(id + `\s+deploy\s+opsweb\s+succeeded\s+admin`).MatchString(list) {
		t.Errorf("pier ops lacks the deploy:\n%s", list)
	}
	// Every change names its operation: a scale too.
	if out := s.mustPier("scale", "count", "1", "-a", "opsweb"); !opIDRE.MatchString(out) {
		t.Errorf("scale named no operation:\n%s", out)
	}
}

// twoDeploys launches app at version one, then starts a deploy of
// version two, slow to start by delay, and one of version three behind it.
func (s *server) twoDeploys(t *testing.T, app, delay string) (first, second *background, id1, id2 string) {
	dir := copyApp(t, "go")
	setVersion(t, dir, app, "one", "")
	s.mustPier("launch", dir, "--yes")
	writeFile(t, dir+"/pier.toml", fmt.Sprintf("app = %q\n[env]\nVERSION = \"two\"\nSTART_DELAY = %q\n", app, delay))
	first = s.pierBackground("deploy", dir)
	id1 = first.opID(t)
	// The second upload carries version three, whatever the first is at.
	dir3 := copyApp(t, "go")
	setVersion(t, dir3, app, "three", "")
	second = s.pierBackground("deploy", dir3)
	return first, second, id1, second.opID(t)
}

// TestDeploysQueue starts two deploys of one app together: the second
// waits for the first and they run one after the other, in order.
func TestDeploysQueue(t *testing.T) {
	s := startServer(t)
	first, second, id1, id2 := s.twoDeploys(t, "queued", "2s")
	for _, b := range []*background{first, second} {
		select {
		case err := <-b.done:
			if err != nil {
				t.Fatalf("%s: %v\n%s", b.cmd.Args, err, b.output())
			}
		case <-time.After(4 * time.Minute):
			t.Fatalf("%s did not finish:\n%s", b.cmd.Args, b.output())
		}
	}
	if !strings.Contains(second.output(), "waiting for 1 operation(s) on queued to finish") {
		t.Errorf("the second deploy did not say it waited:\n%s", second.output())
	}
	if strings.Contains(first.output()+second.output(), "in progress") {
		t.Errorf("a deploy was refused as a conflict:\n%s\n%s", first.output(), second.output())
	}
	op1, op2 := s.operation(id1), s.operation(id2)
	if op1.State != ops.Succeeded || op2.State != ops.Succeeded {
		t.Fatalf("states %s, %s; want both succeeded", op1.State, op2.State)
	}
	if op2.StartedAt.Before(*op1.EndedAt) {
		t.Errorf("the second deploy started at %s, before the first ended at %s", op2.StartedAt, op1.EndedAt)
	}
	if !strings.Contains(first.output(), "==> v2 is live") || !strings.Contains(second.output(), "==> v3 is live") {
		t.Errorf("releases out of order:\n%s\n%s", first.output(), second.output())
	}
	s.mustGet("queued", "/", "version=three")
}

// TestServerKilledMidDeploy kills `pier server` with SIGKILL while a deploy
// waits for its new machine: the next server rolls the deploy back (the
// release before it keeps serving) and the operation's record says so.
func TestServerKilledMidDeploy(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		dir := copyApp(t, "go")
		setVersion(t, dir, "crashy", "one", "")
		s.mustPier("launch", dir, "--yes")
		writeFile(t, dir+"/pier.toml", "app = \"crashy\"\n[env]\nVERSION = \"two\"\nSTART_DELAY = \"60s\"\n")
		deploy := s.pierBackground("deploy", dir)
		id := deploy.opID(t)
		s.waitOutput(id, "==> Releasing v2", 2*time.Minute)
		s.stop(syscall.SIGKILL)
		<-deploy.done
		s.start()

		op := s.operation(id)
		if op.State != ops.Failed || !strings.HasPrefix(op.Recovery, "rolled back on restart: v1 is live") || op.EndedAt == nil {
			t.Fatalf("after the restart: %+v; want failed, rolled back to v1", op)
		}
		list := s.mustPier("ops", "-a", "crashy")
		if !strings.Contains(list, "rolled back on restart: v1 is live") {
			t.Errorf("pier ops does not say the deploy was rolled back:\n%s", list)
		}
		out, err := s.pier("ops", "watch", id)
		if err == nil || !strings.Contains(out, "rolled back on restart") {
			t.Errorf("ops watch of the rolled back deploy: %v\n%s", err, out)
		}
		s.mustGet("crashy", "/", "version=one")
		rels := s.mustPier("releases", "-a", "crashy")
		if !regexp.MustCompile(`v2\s.*failed`).MatchString(rels) {
			t.Errorf("v2 is not marked failed:\n%s", rels)
		}
	})
}

// TestCancelQueuedDeploy cancels a deploy waiting its turn: it never runs.
func TestCancelQueuedDeploy(t *testing.T) {
	s := startServer(t)
	first, second, id1, id2 := s.twoDeploys(t, "cancelme", "3s")
	out := s.mustPier("ops", "cancel", id2)
	if !strings.Contains(out, "cancelled before it started") {
		t.Errorf("cancel: %s", out)
	}
	if err := <-second.done; err == nil {
		t.Errorf("the cancelled deploy's CLI exited 0:\n%s", second.output())
	}
	if err := <-first.done; err != nil {
		t.Fatalf("first deploy: %v\n%s", err, first.output())
	}
	if op := s.operation(id2); op.State != ops.Cancelled || op.StartedAt != nil {
		t.Errorf("cancelled deploy: %+v", op)
	}
	if op := s.operation(id1); op.State != ops.Succeeded {
		t.Errorf("first deploy: %+v", op)
	}
	s.mustGet("cancelme", "/", "version=two")
	if out, err := s.pier("ops", "cancel", id1); err == nil || !strings.Contains(out, "already succeeded") {
		t.Errorf("cancel of a finished deploy: %v %s", err, out)
	}

	// A running deploy stops, and the release before it keeps serving.
	dir := copyApp(t, "go")
	writeFile(t, dir+"/pier.toml", "app = \"cancelme\"\n[env]\nVERSION = \"four\"\nSTART_DELAY = \"60s\"\n")
	slow := s.pierBackground("deploy", dir)
	id3 := slow.opID(t)
	s.waitOutput(id3, "==> Releasing", 2*time.Minute)
	if out := s.mustPier("ops", "cancel", id3); !strings.Contains(out, "is stopping") {
		t.Errorf("cancel a running deploy: %s", out)
	}
	if err := <-slow.done; err == nil {
		t.Errorf("the cancelled deploy's CLI exited 0:\n%s", slow.output())
	}
	if op := s.operation(id3); op.State != ops.Cancelled || op.Error != "cancelled by admin" {
		t.Errorf("cancelled running deploy: %+v", op)
	}
	s.mustGet("cancelme", "/", "version=two")
	eventually(t, 20*time.Second, "only the live release's machine", func() error {
		if ms := s.status("cancelme").Machines; len(ms) != 1 {
			return fmt.Errorf("%d machines", len(ms))
		}
		return nil
	})
}
