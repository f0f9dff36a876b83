package supervisor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// defaultCheck is used when a release declares none: TCP connect on PORT.
var defaultCheck = pier.Check{Type: "tcp", Interval: pier.Duration{Duration: 2 * time.Second}, Timeout: pier.Duration{Duration: 2 * time.Second}}

var checkClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	// A redirect counts as an answer: the app is up.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// probe runs one check against addr (host:port).
func probe(ctx context.Context, addr string, c pier.Check) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout.Duration)
	defer cancel()
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

// probeAll passes when every check passes.
func probeAll(ctx context.Context, addr string, checks []pier.Check) error {
	if len(checks) == 0 {
		checks = []pier.Check{defaultCheck}
	}
	for _, c := range checks {
		if err := probe(ctx, addr, c); err != nil {
			return err
		}
	}
	return nil
}

// checkInterval is the shortest interval among checks.
func checkInterval(checks []pier.Check) time.Duration {
	if len(checks) == 0 {
		return defaultCheck.Interval.Duration
	}
	iv := checks[0].Interval.Duration
	for _, c := range checks[1:] {
		iv = min(iv, c.Interval.Duration)
	}
	return iv
}
