package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	miekg "github.com/miekg/dns"
)

// forwarder sends names outside the internal zone to upstream resolvers.
type forwarder struct {
	timeout time.Duration
	sem     chan struct{} // a slot per forwarded query in flight
	log     *slog.Logger
	self    string // the server's own address, never an upstream

	static []string // Config.Upstreams; nil: from the resolv.conf

	mu      sync.Mutex
	path    string
	checked time.Time // when path was last looked at
	stamp   string    // its mtime and size then
	list    []string
}

// recheck is how often the resolv.conf is looked at for changes (as Go's
// own resolver does).
const recheck = 5 * time.Second

func newForwarder(c Config, self string) *forwarder {
	return &forwarder{timeout: c.Timeout, sem: make(chan struct{}, c.MaxForwards), log: c.Log, self: self,
		static: c.Upstreams, path: c.ResolvConf}
}

// upstreams are the resolvers to try, in order.
func (f *forwarder) upstreams() []string {
	if f.static != nil {
		return f.without(f.static)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := time.Now(); now.Sub(f.checked) >= recheck || f.checked.IsZero() {
		f.checked = now
		stamp := ""
		if fi, err := os.Stat(f.path); err == nil {
			stamp = fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
		}
		if stamp != f.stamp || f.list == nil {
			f.stamp = stamp
			f.list = f.without(readResolvConf(f.path))
		}
	}
	return f.list
}

func (f *forwarder) without(servers []string) []string {
	out := []string{}
	for _, s := range servers {
		if s != f.self {
			out = append(out, s)
		}
	}
	return out
}

// readResolvConf lists the name servers of a resolv.conf as host:port.
func readResolvConf(path string) []string {
	cc, err := miekg.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}

// forward asks the upstreams in turn and returns the first good answer,
// the last upstream's SERVFAIL or REFUSED if none was good, or SERVFAIL
// if none answered. The reply carries the client's id and question; a
// truncated UDP answer keeps its TC bit, so the client retries over TCP
// (and then so does the forwarder).
func (f *forwarder) forward(ctx context.Context, r *miekg.Msg, tcp bool) *miekg.Msg {
	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	default:
		f.log.Debug("too many forwarded dns queries in flight", "name", r.Question[0].Name)
		return new(miekg.Msg).SetRcode(r, miekg.RcodeServerFailure)
	}
	// Only what a query is made of, under an id of the forwarder's own.
	q := new(miekg.Msg)
	q.Id = miekg.Id()
	q.Opcode = miekg.OpcodeQuery
	q.RecursionDesired = r.RecursionDesired
	q.CheckingDisabled = r.CheckingDisabled
	q.AuthenticatedData = r.AuthenticatedData
	q.Question = []miekg.Question{r.Question[0]}
	if opt := r.IsEdns0(); opt != nil {
		q.Extra = []miekg.RR{opt}
	}
	c := &miekg.Client{Net: "udp", Timeout: f.timeout, UDPSize: miekg.MaxMsgSize}
	if tcp {
		c.Net = "tcp"
	}
	var got *miekg.Msg
	ups := f.upstreams()
	for _, up := range ups[:min(len(ups), MaxAttempts)] {
		if ctx.Err() != nil {
			break
		}
		resp, _, err := c.ExchangeContext(ctx, q, up)
		if err == nil && !sameQuestion(resp, q) {
			err = errMismatch
		}
		if err != nil {
			f.log.Debug("forward dns query", "name", q.Question[0].Name, "upstream", up, "err", err)
			continue
		}
		got = resp
		if resp.Rcode != miekg.RcodeServerFailure && resp.Rcode != miekg.RcodeRefused {
			break
		}
	}
	if got == nil {
		return new(miekg.Msg).SetRcode(r, miekg.RcodeServerFailure)
	}
	got.Id = r.Id
	got.Question = r.Question
	return got
}

var errMismatch = errors.New("reply is for another question")

func sameQuestion(resp, q *miekg.Msg) bool {
	if len(resp.Question) != 1 {
		return false
	}
	a, b := resp.Question[0], q.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
