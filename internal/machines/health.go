package machines

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// implicitCheck is what a machine with a service and no service checks
// must pass to take traffic: its service port accepts connections.
const implicitCheck = "service"

// healthChecks are the checks the health loop probes, by name, sorted, and
// which of them gate the machine's traffic: its first service's checks,
// or a TCP connect on the service port when it declares none. The
// machine's own (top-level) checks are probed and reported but, as on Fly,
// do not decide its traffic. A machine without either has none.
func healthChecks(m Machine) (names []string, checks map[string]Check, gating map[string]bool) {
	checks, gating = map[string]Check{}, map[string]bool{}
	for name, c := range m.Config.Checks {
		checks[name] = c
	}
	if len(m.Config.Services) > 0 {
		svc := m.Config.Services[0]
		if len(svc.Checks) == 0 {
			checks[implicitCheck] = Check{Type: "tcp", Interval: "2s", Timeout: "2s"}
			gating[implicitCheck] = true
		}
		for i, c := range svc.Checks {
			name := fmt.Sprintf("servicecheck-%02d-%s", i, c.Type)
			checks[name] = c
			gating[name] = true
		}
	}
	for name := range checks {
		names = append(names, name)
	}
	sort.Strings(names)
	return names, checks, gating
}

// checkInterval is the shortest interval among checks (default 15s).
func checkInterval(checks map[string]Check) time.Duration {
	interval := 15 * time.Second
	for _, c := range checks {
		if d, err := time.ParseDuration(c.Interval); err == nil && d > 0 && d < interval {
			interval = d
		}
	}
	return interval
}

// watchHealth probes the machine's checks against addr (the machine's
// PORT, host:port) until exited is closed: quickly until the gating ones
// first pass, then at the checks' interval. Passing every gating check
// puts the machine in traffic; three failed rounds in a row take it out.
// The results of the declared checks are recorded in its Checks.
func (mg *Manager) watchHealth(e *entry, m Machine, addr string, exited <-chan struct{}) {
	names, checks, gating := healthChecks(m)
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	fails := 0
	// Probe often at first: a deploy and a cold start wait on it.
	interval := 10 * time.Millisecond
	for {
		statuses := make([]CheckStatus, 0, len(names))
		var failed error
		for _, name := range names {
			st := CheckStatus{Name: name, Status: "passing"}
			if err := runCheck(ctx, addr, checks[name]); err != nil {
				st.Status, st.Output = "critical", err.Error()
				if failed == nil && gating[name] {
					failed = err
				}
			}
			if name != implicitCheck {
				statuses = append(statuses, st)
			}
		}
		if ctx.Err() != nil {
			break
		}
		if len(statuses) > 0 {
			e.mu.Lock()
			e.m.Checks = statuses
			e.mu.Unlock()
		}
		if failed == nil {
			fails = 0
			mg.setHealthy(e, true, nil)
			interval = checkInterval(checks)
		} else if fails++; fails >= 3 && e.isHealthy() {
			mg.setHealthy(e, false, failed)
		} else if !e.isHealthy() {
			interval = min(interval*2, time.Second)
		}
		select {
		case <-exited:
		case <-time.After(interval):
			continue
		}
		break
	}
	e.mu.Lock()
	e.m.Checks = nil
	e.mu.Unlock()
}

func (e *entry) isHealthy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.healthy
}

// setHealthy records the machine's health, wakes those waiting for it and
// brings its routing in line. why is the failure that made it unhealthy.
func (mg *Manager) setHealthy(e *entry, ok bool, why error) {
	e.mu.Lock()
	change := e.healthy != ok
	e.healthy = ok
	app, id := e.m.App, e.m.ID
	if change {
		e.notify()
	}
	e.mu.Unlock()
	if change && !ok && why != nil {
		mg.log.Warn("machine failed its health checks", "app", app, "machine", id, "err", why)
		mg.appEvent(e, "machine.unhealthy", fmt.Sprintf("machine %s failed its checks: %v", id, why))
	}
	mg.route(e)
}

var checkClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	// A redirect counts as an answer: the app is up.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// runCheck probes one check against the machine whose PORT is addr: a TCP
// connect, or an HTTP GET that must answer below 400. A check's port 0 is
// the machine's PORT.
func runCheck(ctx context.Context, addr string, c Check) error {
	timeout := 2 * time.Second
	if d, err := time.ParseDuration(c.Timeout); err == nil && d > 0 {
		timeout = d
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if c.Port != 0 {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return err
		}
		addr = net.JoinHostPort(host, strconv.Itoa(c.Port))
	}
	if c.Type != "http" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("tcp connect %s: %w", addr, err)
		}
		return conn.Close()
	}
	u, err := pier.CheckURL(addr, c.Path)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "pier-health-check")
	resp, err := checkClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.Path, err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: status %d", c.Path, resp.StatusCode)
	}
	return nil
}
