package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/pier-dev/pier/internal/ops"
)

// Operations lists the latest operations, newest first; target "" means
// every app and resource.
func (c *Client) Operations(ctx context.Context, target string, limit int) ([]ops.Operation, error) {
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	if target != "" {
		q.Set("target", target)
	}
	var out []ops.Operation
	return out, c.call(ctx, "GET", "/v1/operations?"+q.Encode(), nil, &out)
}

// Operation returns an operation's record.
func (c *Client) Operation(ctx context.Context, id string) (ops.Operation, error) {
	var out ops.Operation
	return out, c.call(ctx, "GET", "/v1/operations/"+url.PathEscape(id), nil, &out)
}

// WatchOperation calls fn with an operation's events numbered from on, as
// they happen, until its last (or, without follow, those there are now).
func (c *Client) WatchOperation(ctx context.Context, id string, from int, follow bool, fn func(ops.Event)) error {
	q := url.Values{"from": {fmt.Sprint(from)}, "follow": {fmt.Sprint(follow)}}
	resp, err := c.do(ctx, "GET", "/v1/operations/"+url.PathEscape(id)+"/events?"+q.Encode(), nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		var ev ops.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad event from the server: %w", err)
		}
		fn(ev)
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("connection to the server broke: %w (the operation goes on: watch it again with --from)", err)
	}
	return ctx.Err()
}

// CancelOperation asks the server to stop an operation.
func (c *Client) CancelOperation(ctx context.Context, id string) (ops.Operation, error) {
	var out ops.Operation
	return out, c.call(ctx, "POST", "/v1/operations/"+url.PathEscape(id)+"/cancel", nil, &out)
}
