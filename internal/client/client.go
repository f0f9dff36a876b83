// Package client is the typed client of pier's HTTP API, used by the CLI
// (and by anything else that drives pier from Go).
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// Client talks to one pier server.
type Client struct {
	Base  string // e.g. http://127.0.0.1:4280
	Token string
	HTTP  *http.Client
	// OnOperation, if set, is told the id of each operation a request
	// starts (api.OperationHeader), before its output.
	OnOperation func(id string)
}

// New returns a client of the API at base.
func New(base, token string) *Client {
	return &Client{Base: strings.TrimRight(base, "/"), Token: token, HTTP: &http.Client{}}
}

// APIError is an error answer of the API.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// IsNotFound reports whether err is the API's 404.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ctx.Err() == nil {
			return nil, fmt.Errorf("cannot reach the pier API at %s: %v (is `pier server` running? set PIER_API to point elsewhere)", c.Base, ue.Err)
		}
		return nil, err
	}
	if id := resp.Header.Get(api.OperationHeader); id != "" && c.OnOperation != nil {
		c.OnOperation(id)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			e.Error += " (the token was refused: check PIER_TOKEN, or run `pier auth token` on the server's machine)"
		}
		return nil, &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

// doJSON sends in as JSON (if not nil) with method to path.
func (c *Client) doJSON(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	return c.do(ctx, method, path, body, ctype)
}

// call sends in as JSON (if not nil) and decodes the answer into out (if not nil).
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.doJSON(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

func appPath(app string, rest ...string) string {
	return "/v1/apps/" + url.PathEscape(app) + strings.Join(rest, "")
}

// Status checks that the API answers and accepts the token.
func (c *Client) Status(ctx context.Context) error { return c.call(ctx, "GET", "/v1/status", nil, nil) }

// Apps lists apps.
func (c *Client) Apps(ctx context.Context) ([]control.AppStatus, error) {
	var out []control.AppStatus
	return out, c.call(ctx, "GET", "/v1/apps", nil, &out)
}

// App returns one app with its machines.
func (c *Client) App(ctx context.Context, app string) (control.AppStatus, error) {
	var out control.AppStatus
	return out, c.call(ctx, "GET", appPath(app), nil, &out)
}

// CreateApp creates an app.
func (c *Client) CreateApp(ctx context.Context, app string) (control.AppStatus, error) {
	var out control.AppStatus
	return out, c.call(ctx, "POST", "/v1/apps", api.CreateAppRequest{AppName: app}, &out)
}

// DestroyApp deletes an app and everything of it.
func (c *Client) DestroyApp(ctx context.Context, app string) error {
	return c.call(ctx, "DELETE", appPath(app), nil, nil)
}

// Releases lists an app's releases, newest first.
func (c *Client) Releases(ctx context.Context, app string) ([]pier.Release, error) {
	var out []pier.Release
	return out, c.call(ctx, "GET", appPath(app, "/releases"), nil, &out)
}

// ExportImage writes the image of app's release version (vN, N or
// "current") to w as a tarball of format ("docker" or "oci") and returns
// its size. An export cut off midway is an error, never a short success.
func (c *Client) ExportImage(ctx context.Context, app, version, format string, w io.Writer) (int64, error) {
	q := url.Values{"format": {format}}
	resp, err := c.do(ctx, "GET", appPath(app, "/releases/"+url.PathEscape(version)+"/image?"+q.Encode()), nil, "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("the export of %s %s broke off after %d bytes: %w", app, version, n, err)
	}
	return n, nil
}

// Scale sets an app's machine count.
func (c *Client) Scale(ctx context.Context, app string, n int) (control.AppStatus, error) {
	var out control.AppStatus
	return out, c.call(ctx, "POST", appPath(app, "/scale"), api.ScaleRequest{Count: &n}, &out)
}

// Secrets lists an app's secrets.
func (c *Client) Secrets(ctx context.Context, app string) ([]pier.SecretInfo, error) {
	var out []pier.SecretInfo
	return out, c.call(ctx, "GET", appPath(app, "/secrets"), nil, &out)
}

// Events lists an app's latest events.
func (c *Client) Events(ctx context.Context, app string, limit int) ([]pier.Event, error) {
	var out []pier.Event
	return out, c.call(ctx, "GET", appPath(app, fmt.Sprintf("/events?limit=%d", limit)), nil, &out)
}

// Deploy uploads a gzipped tar of source and follows the build and rollout,
// copying output to out.
func (c *Client) Deploy(ctx context.Context, app string, source io.Reader, out io.Writer) (*pier.Release, error) {
	resp, err := c.do(ctx, "POST", appPath(app, "/deploys"), source, "application/gzip")
	if err != nil {
		return nil, err
	}
	return follow(resp, out)
}

// Rollback redeploys release version (0: the previous one).
func (c *Client) Rollback(ctx context.Context, app string, version int, out io.Writer) (*pier.Release, error) {
	return c.streamJSON(ctx, appPath(app, "/rollback"), api.RollbackRequest{Version: version}, out)
}

// SetSecrets sets secrets and follows the roll of the app.
func (c *Client) SetSecrets(ctx context.Context, app string, values map[string]string, out io.Writer) (*pier.Release, error) {
	return c.streamJSON(ctx, appPath(app, "/secrets"), api.SetSecretsRequest{Values: values}, out)
}

// UnsetSecrets removes secrets and follows the roll of the app.
func (c *Client) UnsetSecrets(ctx context.Context, app string, names []string, out io.Writer) (*pier.Release, error) {
	return c.streamJSON(ctx, appPath(app, "/secrets/unset"), api.UnsetSecretsRequest{Names: names}, out)
}

func (c *Client) streamJSON(ctx context.Context, path string, in any, out io.Writer) (*pier.Release, error) {
	resp, err := c.doJSON(ctx, "POST", path, in)
	if err != nil {
		return nil, err
	}
	return follow(resp, out)
}

// StreamError is a failure reported at the end of a streamed operation.
type StreamError struct {
	Kind    string
	Message string
}

func (e *StreamError) Error() string { return e.Message }

// follow copies a stream of api.Messages to out and returns its outcome.
func follow(resp *http.Response, out io.Writer) (*pier.Release, error) {
	m, err := followResult(resp, out)
	if err != nil {
		return nil, err
	}
	return m.Release, nil
}

// followResult copies a stream's output to out and returns its result
// message, or its error.
func followResult(resp *http.Response, out io.Writer) (api.Message, error) {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		var m api.Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return m, fmt.Errorf("bad message from the server: %w", err)
		}
		switch m.Type {
		case "output":
			io.WriteString(out, m.Text)
		case "result":
			return m, nil
		case "error":
			return m, &StreamError{Kind: m.Kind, Message: m.Error}
		}
	}
	still := "the operation may still be running: check `pier status`"
	if id := resp.Header.Get(api.OperationHeader); id != "" {
		still = fmt.Sprintf("operation %s goes on in the server: follow it with `pier ops watch %s`", id, id)
	}
	if err := sc.Err(); err != nil {
		return api.Message{}, fmt.Errorf("connection to the server broke: %w (%s)", err, still)
	}
	return api.Message{}, fmt.Errorf("the server ended the stream without a result (%s)", still)
}

// stream sends in as JSON with method to path and follows the streamed
// answer, decoding its result data into v (if not nil).
func (c *Client) stream(ctx context.Context, method, path string, in, v any, out io.Writer) error {
	resp, err := c.doJSON(ctx, method, path, in)
	if err != nil {
		return err
	}
	m, err := followResult(resp, out)
	if err != nil || v == nil {
		return err
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		return fmt.Errorf("%s %s: bad result: %w", method, path, err)
	}
	return nil
}

// Logs calls fn for each log line of app: the last `lines` lines, then, with
// follow, new lines until ctx is done.
func (c *Client) Logs(ctx context.Context, app string, lines int, followLines bool, fn func(pier.LogLine)) error {
	path := appPath(app, fmt.Sprintf("/logs?lines=%d&follow=%t", lines, followLines))
	resp, err := c.do(ctx, "GET", path, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	err = eachLine(resp.Body, "log line", fn)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// eachLine decodes NDJSON from r into values of T, calling fn with each.
func eachLine[T any](r io.Reader, what string, fn func(T)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("bad %s from the server: %w", what, err)
		}
		fn(v)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("connection to the server broke: %w", err)
	}
	return nil
}

func machinePath(app, id string, rest ...string) string {
	return appPath(app, "/machines/"+url.PathEscape(id)) + strings.Join(rest, "")
}

// CreateMachine creates (and starts) a machine.
func (c *Client) CreateMachine(ctx context.Context, app string, req machines.CreateRequest) (machines.Machine, error) {
	var out machines.Machine
	return out, c.call(ctx, "POST", appPath(app, "/machines"), req, &out)
}

// Machines lists an app's machines.
func (c *Client) Machines(ctx context.Context, app string) ([]machines.Machine, error) {
	var out []machines.Machine
	return out, c.call(ctx, "GET", appPath(app, "/machines"), nil, &out)
}

// Machine returns one machine.
func (c *Client) Machine(ctx context.Context, app, id string) (machines.Machine, error) {
	var out machines.Machine
	return out, c.call(ctx, "GET", machinePath(app, id), nil, &out)
}

// StartMachine starts a stopped machine.
func (c *Client) StartMachine(ctx context.Context, app, id string) error {
	return c.call(ctx, "POST", machinePath(app, id, "/start"), nil, nil)
}

// StopMachine signals a machine to stop.
func (c *Client) StopMachine(ctx context.Context, app, id string, req machines.StopRequest) error {
	return c.call(ctx, "POST", machinePath(app, id, "/stop"), req, nil)
}

// WaitMachine waits for a machine to reach state.
func (c *Client) WaitMachine(ctx context.Context, app, id, state, timeout string) error {
	q := url.Values{"state": {state}, "timeout": {timeout}}
	return c.call(ctx, "GET", machinePath(app, id, "/wait?"+q.Encode()), nil, nil)
}

// ExecMachine runs a command in a machine.
func (c *Client) ExecMachine(ctx context.Context, app, id string, req machines.ExecRequest) (runtime.ExecResult, error) {
	var out runtime.ExecResult
	return out, c.call(ctx, "POST", machinePath(app, id, "/exec"), req, &out)
}

// DestroyMachine destroys a machine (force kills a running one).
func (c *Client) DestroyMachine(ctx context.Context, app, id string, force bool) error {
	return c.call(ctx, "DELETE", machinePath(app, id, fmt.Sprintf("?force=%t", force)), nil, nil)
}
