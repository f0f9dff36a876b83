package client

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
)

func resourcePath(name string, rest ...string) string {
	p := "/v1/resources/" + url.PathEscape(name)
	for _, r := range rest {
		p += r
	}
	return p
}

// ResourceTypes lists the resource types.
func (c *Client) ResourceTypes(ctx context.Context) ([]resources.TypeInfo, error) {
	var out []resources.TypeInfo
	return out, c.call(ctx, "GET", "/v1/resource-types", nil, &out)
}

// Resources lists resources.
func (c *Client) Resources(ctx context.Context) ([]resources.Resource, error) {
	var out []resources.Resource
	return out, c.call(ctx, "GET", "/v1/resources", nil, &out)
}

// Resource returns a resource with its connections.
func (c *Client) Resource(ctx context.Context, name string) (control.ResourceStatus, error) {
	var out control.ResourceStatus
	return out, c.call(ctx, "GET", resourcePath(name), nil, &out)
}

// CreateResource creates a resource, copying progress to out.
func (c *Client) CreateResource(ctx context.Context, req api.CreateResourceRequest, out io.Writer) (resources.Resource, error) {
	var r resources.Resource
	return r, c.stream(ctx, "POST", "/v1/resources", req, &r, out)
}

// DeleteResource deletes a resource (force: disconnecting its apps first).
func (c *Client) DeleteResource(ctx context.Context, name string, force bool, out io.Writer) error {
	return c.stream(ctx, "DELETE", resourcePath(name, fmt.Sprintf("?force=%t", force)), nil, nil, out)
}

// ResourceEvents returns a resource's latest events.
func (c *Client) ResourceEvents(ctx context.Context, name string, limit int) ([]pier.Event, error) {
	var out []pier.Event
	return out, c.call(ctx, "GET", resourcePath(name, fmt.Sprintf("/events?limit=%d", limit)), nil, &out)
}

// Backup takes a backup now.
func (c *Client) Backup(ctx context.Context, name string) (resources.Backup, error) {
	var out resources.Backup
	return out, c.call(ctx, "POST", resourcePath(name, "/backups"), nil, &out)
}

// Backups lists a resource's backups, newest first.
func (c *Client) Backups(ctx context.Context, name string) ([]resources.Backup, error) {
	var out []resources.Backup
	return out, c.call(ctx, "GET", resourcePath(name, "/backups"), nil, &out)
}

// RestoreBackup restores a resource from a backup.
func (c *Client) RestoreBackup(ctx context.Context, name, id string, out io.Writer) error {
	return c.stream(ctx, "POST", resourcePath(name, "/restore"), api.RestoreRequest{BackupID: id}, nil, out)
}

// Connections lists connections, filtered by app and target ("" = any).
func (c *Client) Connections(ctx context.Context, app, target string) ([]resources.Connection, error) {
	var out []resources.Connection
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	if target != "" {
		q.Set("target", target)
	}
	return out, c.call(ctx, "GET", "/v1/connections?"+q.Encode(), nil, &out)
}

// Connect connects app to a resource, copying progress to out.
func (c *Client) Connect(ctx context.Context, app string, req api.ConnectRequest, out io.Writer) (resources.Connection, error) {
	var conn resources.Connection
	return conn, c.stream(ctx, "POST", appPath(app, "/connections"), req, &conn, out)
}

// Connection returns one connection; with reveal, its credentials.
func (c *Client) Connection(ctx context.Context, app, target string, reveal bool) (control.ConnectionDetail, error) {
	var out control.ConnectionDetail
	return out, c.call(ctx, "GET", appPath(app, "/connections/"+url.PathEscape(target), fmt.Sprintf("?reveal=%t", reveal)), nil, &out)
}

// Disconnect removes a connection, copying progress to out.
func (c *Client) Disconnect(ctx context.Context, app, target string, out io.Writer) error {
	return c.stream(ctx, "DELETE", appPath(app, "/connections/"+url.PathEscape(target)), nil, nil, out)
}

// Graph returns the graph of apps, resources and connections.
func (c *Client) Graph(ctx context.Context) (graph.Graph, error) {
	var out graph.Graph
	return out, c.call(ctx, "GET", "/v1/graph", nil, &out)
}
