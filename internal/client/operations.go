package client

import (
	"context"
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
	if err := eachLine(resp.Body, "event", fn); err != nil && ctx.Err() == nil {
		return fmt.Errorf("%w (the operation goes on in the server: watch it again with --from)", err)
	}
	return ctx.Err()
}

// CancelOperation asks the server to stop an operation.
func (c *Client) CancelOperation(ctx context.Context, id string) (ops.Operation, error) {
	var out ops.Operation
	return out, c.call(ctx, "POST", "/v1/operations/"+url.PathEscape(id)+"/cancel", nil, &out)
}
