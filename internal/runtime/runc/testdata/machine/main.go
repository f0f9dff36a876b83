// Command machine is the workload of the runc runtime's tests: a static
// HTTP server on $PORT whose endpoints probe what a machine can see and do.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sleep" { // a fork-bomb child
		time.Sleep(time.Minute)
		return
	}
	if os.Getenv("IGNORE_TERM") != "" {
		signal.Ignore(syscall.SIGTERM)
	}
	fmt.Println("machine starting", os.Getenv("PIER_MACHINE_ID"))
	fmt.Fprintln(os.Stderr, "to stderr")
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Join(os.Environ(), "\n"))
	})
	mux.HandleFunc("/hostname", func(w http.ResponseWriter, r *http.Request) {
		h, _ := os.Hostname()
		fmt.Fprint(w, h)
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(r.FormValue("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(data)
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		if err := os.WriteFile(r.FormValue("path"), []byte(r.FormValue("data")), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "written")
	})
	// /fill writes up to mb MB of zeros to path, then reports how much it
	// wrote and the error that stopped it, if any.
	mux.HandleFunc("/fill", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.FormValue("mb"))
		f, err := os.Create(r.FormValue("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		chunk := make([]byte, 1<<20)
		n := 0
		for ; n < mb; n++ {
			if _, err = f.Write(chunk); err != nil {
				break
			}
		}
		if err == nil {
			err = f.Sync()
		}
		fmt.Fprintf(w, "wrote %d MB: %v", n, err)
	})
	// /truncate makes path a sparse file of size_mb MB.
	mux.HandleFunc("/truncate", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.ParseInt(r.FormValue("size_mb"), 10, 64)
		if err := os.Truncate(r.FormValue("path"), mb<<20); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "truncated")
	})
	// /links makes n hard links to path, as path.1 ... path.n.
	mux.HandleFunc("/links", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.FormValue("n"))
		p := r.FormValue("path")
		for i := 1; i <= n; i++ {
			if err := os.Link(p, fmt.Sprintf("%s.%d", p, i)); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprint(w, "linked")
	})
	// /pingsocket opens an unprivileged ICMP echo socket, as ping does.
	mux.HandleFunc("/pingsocket", func(w http.ResponseWriter, r *http.Request) {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, syscall.IPPROTO_ICMP)
		if err != nil {
			fmt.Fprint(w, "error: ", err)
			return
		}
		syscall.Close(fd)
		fmt.Fprint(w, "ok")
	})
	// /setgroups sets the supplementary groups (as apt and nginx do).
	mux.HandleFunc("/setgroups", func(w http.ResponseWriter, r *http.Request) {
		if err := syscall.Setgroups([]int{0}); err != nil {
			fmt.Fprint(w, "error: ", err)
			return
		}
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/ls", func(w http.ResponseWriter, r *http.Request) {
		entries, err := os.ReadDir(r.FormValue("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		for _, e := range entries {
			fmt.Fprintln(w, e.Name())
		}
	})
	// /procs lists the pids this machine sees with their command lines.
	mux.HandleFunc("/procs", func(w http.ResponseWriter, r *http.Request) {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			fmt.Fprintf(w, "%s %s\n", e.Name(), strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("tcp", r.FormValue("addr"), 2*time.Second)
		if err != nil {
			fmt.Fprint(w, "error: ", err)
			return
		}
		c.Close()
		fmt.Fprint(w, "connected")
	})
	var hold [][]byte
	mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.FormValue("mb"))
		for range mb {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			hold = append(hold, b)
		}
		fmt.Fprintf(w, "allocated %d MB", mb)
	})
	// /forkbomb starts children until the kernel refuses, then reports
	// how many it got and kills them.
	mux.HandleFunc("/forkbomb", func(w http.ResponseWriter, r *http.Request) {
		var cmds []*exec.Cmd
		var err error
		for len(cmds) < 100000 {
			c := exec.Command("/proc/self/exe", "sleep")
			if err = c.Start(); err != nil {
				break
			}
			cmds = append(cmds, c)
		}
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
		fmt.Fprintf(w, "started %d, then: %v", len(cmds), err)
	})
	// /resolve looks name up as most programs would: Go's resolver, which
	// reads the machine's /etc/resolv.conf. It prints the addresses, "not
	// found" for a name that does not exist, or the error.
	mux.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, r.FormValue("name"))
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			fmt.Fprint(w, "not found")
		case err != nil:
			fmt.Fprint(w, "error: ", err)
		default:
			fmt.Fprint(w, strings.Join(addrs, " "))
		}
	})
	// /dns sends one A query over net (udp or tcp) to server (default: the
	// first name server of /etc/resolv.conf) and prints the reply's rcode
	// and addresses, or the error.
	mux.HandleFunc("/dns", func(w http.ResponseWriter, r *http.Request) {
		server := r.FormValue("server")
		if server == "" {
			cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
			if err != nil || len(cc.Servers) == 0 {
				fmt.Fprint(w, "error: no name server in /etc/resolv.conf: ", err)
				return
			}
			server = net.JoinHostPort(cc.Servers[0], cc.Port)
		}
		c := &dns.Client{Net: r.FormValue("net"), Timeout: 3 * time.Second}
		m, _, err := c.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(r.FormValue("name")), dns.TypeA), server)
		if err != nil {
			fmt.Fprint(w, "error: ", err)
			return
		}
		fmt.Fprint(w, dns.RcodeToString[m.Rcode])
		for _, rr := range m.Answer {
			if a, ok := rr.(*dns.A); ok {
				fmt.Fprint(w, " ", a.A)
			}
		}
	})
	mux.HandleFunc("/say", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.FormValue("line"))
		fmt.Fprint(w, "said")
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.FormValue("code"))
		os.Exit(code)
	})
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
