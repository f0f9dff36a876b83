package client

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
)

// AppStats is one app's golden metrics per machine, and its busiest
// routes (Method and Path set), over a window.
type AppStats struct {
	Machines []metrics.Stat `json:"machines"`
	Paths    []metrics.Stat `json:"paths"`
}

// windowQuery is the query string of a metrics call; zero durations are
// left out, so the server's defaults apply.
func windowQuery(window time.Duration, more url.Values) string {
	q := url.Values{}
	if window > 0 {
		q.Set("window", window.String())
	}
	for k, vs := range more {
		q[k] = vs
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// Stats returns the golden metrics per app (by callee, every caller merged,
// the public edge proxy included) over window (0: the server's default,
// 1m).
func (c *Client) Stats(ctx context.Context, window time.Duration) ([]metrics.Stat, error) {
	var out []metrics.Stat
	return out, c.call(ctx, "GET", "/v1/metrics/apps"+windowQuery(window, nil), nil, &out)
}

// EdgeStats returns the golden metrics per caller → callee over window
// (0: the server's default, 1m). The edge proxy's traffic has Src "edge".
func (c *Client) EdgeStats(ctx context.Context, window time.Duration) ([]metrics.Stat, error) {
	var out []metrics.Stat
	return out, c.call(ctx, "GET", "/v1/metrics/edges"+windowQuery(window, nil), nil, &out)
}

// AppStats returns app's metrics per machine and its busiest routes, at
// most limit of them (0: the server's default, 20).
func (c *Client) AppStats(ctx context.Context, app string, window time.Duration, limit int) (AppStats, error) {
	var out AppStats
	more := url.Values{}
	if limit > 0 {
		more.Set("limit", strconv.Itoa(limit))
	}
	return out, c.call(ctx, "GET", "/v1/metrics/apps/"+url.PathEscape(app)+windowQuery(window, more), nil, &out)
}

// StatHistory returns app's metrics over window, one point per step,
// oldest first, from the traffic of src ("" for every caller).
func (c *Client) StatHistory(ctx context.Context, app string, window, step time.Duration, src string) ([]metrics.Point, error) {
	var out []metrics.Point
	more := url.Values{}
	if step > 0 {
		more.Set("step", step.String())
	}
	if src != "" {
		more.Set("src", src)
	}
	return out, c.call(ctx, "GET", "/v1/metrics/apps/"+url.PathEscape(app)+"/history"+windowQuery(window, more), nil, &out)
}

// MeshStatus describes the mesh's certificate authority.
func (c *Client) MeshStatus(ctx context.Context) (identity.Status, error) {
	var out identity.Status
	return out, c.call(ctx, "GET", "/v1/mesh", nil, &out)
}

// RotateMesh rotates the mesh's issuer, or its trust anchor (and with it
// the issuer) when anchor is set, and returns the new state.
func (c *Client) RotateMesh(ctx context.Context, anchor bool) (identity.Status, error) {
	var out identity.Status
	in := struct {
		Anchor bool `json:"anchor"`
	}{anchor}
	return out, c.call(ctx, "POST", "/v1/mesh/rotate", in, &out)
}

// MeshIdentity returns app's mesh identity and the certificate its calls
// carry.
func (c *Client) MeshIdentity(ctx context.Context, app string) (control.Identity, error) {
	var out control.Identity
	return out, c.call(ctx, "GET", "/v1/mesh/identities/"+url.PathEscape(app), nil, &out)
}
