package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A graceful restart (SIGHUP, or an upgrade: replace the binary, then
// SIGHUP) hands the listening sockets to a new server, as nginx's binary
// upgrade and cloudflare/tableflip do. The old server starts the binary
// now on disk with the same flags, passing its API, HTTP and HTTPS
// listeners as inherited file descriptors. Once the new one holds them,
// the old one stops accepting, finishes the requests in flight, lets go
// of its machines and exits; the new one takes the data dir, adopts the
// machines and accepts. Connections that arrive in between wait in the
// sockets' backlog instead of being refused, so no request fails.

const (
	envListenFDs = "PIER_LISTEN_FDS"  // name=fd,... of inherited listeners
	envReadyFD   = "PIER_HANDOFF_FD"  // where the new server says it holds them
	envFrom      = "PIER_UPGRADE_PID" // the server handing over
)

// inherited are the listeners a previous server handed over, by name.
type inherited map[string]*os.File

// inheritedListeners reads the listeners handed over by a previous server
// (none when this one was started afresh).
func inheritedListeners() inherited {
	in := inherited{}
	for _, kv := range strings.Split(os.Getenv(envListenFDs), ",") {
		name, fd, ok := strings.Cut(kv, "=")
		n, err := strconv.Atoi(fd)
		if !ok || err != nil || n < 3 {
			continue
		}
		in[name] = os.NewFile(uintptr(n), name)
	}
	os.Unsetenv(envListenFDs)
	return in
}

// listen returns the listener handed over under name when it listens on
// addr, else a new one on addr.
func (in inherited) listen(name, addr string) (net.Listener, error) {
	if f, ok := in[name]; ok {
		delete(in, name)
		ln, err := net.FileListener(f)
		f.Close()
		if err == nil && sameAddr(ln.Addr(), addr) {
			return ln, nil
		}
		if ln != nil {
			ln.Close() // the flag changed: listen anew
		}
	}
	return net.Listen("tcp", addr)
}

// listenPacket returns the UDP socket handed over under name when it is
// bound to addr, else a new one.
func (in inherited) listenPacket(name, addr string) (net.PacketConn, error) {
	if f, ok := in[name]; ok {
		delete(in, name)
		pc, err := net.FilePacketConn(f)
		f.Close()
		if err == nil && sameAddr(pc.LocalAddr(), addr) {
			return pc, nil
		}
		if pc != nil {
			pc.Close()
		}
	}
	return net.ListenPacket("udp", addr)
}

// close closes the inherited listeners no flag asked for any more.
func (in inherited) close() {
	for name, f := range in {
		f.Close()
		delete(in, name)
	}
}

// sameAddr reports whether the socket at a (TCP or UDP) is what addr asks
// for.
func sameAddr(a net.Addr, addr string) bool {
	var ta net.TCPAddr
	switch v := a.(type) {
	case *net.TCPAddr:
		ta = *v
	case *net.UDPAddr:
		ta = net.TCPAddr{IP: v.IP, Port: v.Port}
	default:
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if p, err := strconv.Atoi(port); err != nil || (p != 0 && p != ta.Port) {
		return false
	}
	if host == "" {
		return ta.IP.IsUnspecified()
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return false
		}
		ip = ips[0]
	}
	return ip.Equal(ta.IP)
}

// handedOver tells the server that started this one (a graceful restart)
// that its listeners are taken: it can stop accepting and go.
func handedOver() {
	fd, err := strconv.Atoi(os.Getenv(envReadyFD))
	os.Unsetenv(envReadyFD)
	if err != nil || fd < 3 {
		return
	}
	f := os.NewFile(uintptr(fd), "handoff")
	f.WriteString("ok\n")
	f.Close()
}

// upgrading reports whether a previous server is handing over to this one.
func upgrading() bool { return os.Getenv(envFrom) != "" }

// filer is a socket that can be handed over: *net.TCPListener,
// *net.UDPConn.
type filer interface{ File() (*os.File, error) }

// handOff starts the binary at self with this server's arguments and its
// sockets, and waits until the new server holds them. On an error the
// new server is gone and this one serves on.
func handOff(self string, socks map[string]filer, log *slog.Logger) error {
	var names, fds []string
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for name, sock := range socks {
		f, err := sock.File() // a duplicate: this server's own stays open until it stops
		if err != nil {
			return fmt.Errorf("hand over the %s socket: %w", name, err)
		}
		files = append(files, f)
		names = append(names, name)
		fds = append(fds, fmt.Sprintf("%s=%d", name, 3+len(files)-1))
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer ready.Close()
	files = append(files, readyW)
	env := append(os.Environ(), envListenFDs+"="+strings.Join(fds, ","), fmt.Sprintf("%s=%d", envReadyFD, 3+len(files)-1),
		fmt.Sprintf("%s=%d", envFrom, os.Getpid()))
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env, cmd.ExtraFiles = env, files
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the new server %s: %w", self, err)
	}
	readyW.Close()
	files = files[:len(files)-1]
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(ready).ReadString('\n')
		got <- strings.TrimSpace(line)
	}()
	select {
	case line := <-got:
		if line == "ok" {
			log.Info("handed the sockets to the new server", "pid", cmd.Process.Pid, "sockets", strings.Join(names, ","))
			return nil
		}
		cmd.Process.Kill()
		return fmt.Errorf("the new server exited before taking over: %v", <-exited)
	case err := <-exited:
		return fmt.Errorf("the new server exited before taking over: %v", err)
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return errors.New("the new server did not take over within 30s")
	}
}

// lockDataDirWaiting is lockDataDir for a server taking over from another:
// it waits (bounded) for the old one to let go of the data dir.
func lockDataDirWaiting(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "server.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			return func() { f.Close() }, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("the server handing over did not let go of %s within 2m", dir)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// unread counts a server's connections that have not delivered their
// first request yet. net/http's Shutdown drops such a connection when its
// request arrives (the client sees EOF), so a graceful stop closes the
// listeners first and waits for these before it shuts the servers down.
type unread struct {
	mu  sync.Mutex
	new map[net.Conn]bool
}

func (u *unread) track(c net.Conn, st http.ConnState) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.new == nil {
		u.new = map[net.Conn]bool{}
	}
	if st == http.StateNew {
		u.new[c] = true
	} else {
		delete(u.new, c)
	}
}

// wait returns once no connection is waiting for its first request, or
// after d.
func (u *unread) wait(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		u.mu.Lock()
		n := len(u.new)
		u.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
