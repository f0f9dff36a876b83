package client

import (
	"context"
	"io"
	"net/url"

	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/pier"
)

// Certs lists custom domains with the state of their certificates.
func (c *Client) Certs(ctx context.Context) ([]pier.Cert, error) {
	var out []pier.Cert
	return out, c.call(ctx, "GET", "/v1/certs", nil, &out)
}

// AddCert makes domain a custom domain of app; its certificate is obtained
// in the background.
func (c *Client) AddCert(ctx context.Context, app, domain string) (pier.Cert, error) {
	var out pier.Cert
	return out, c.call(ctx, "POST", "/v1/certs", api.AddCertRequest{App: app, Domain: domain}, &out)
}

// RemoveCert removes a custom domain and its certificate.
func (c *Client) RemoveCert(ctx context.Context, domain string) error {
	return c.call(ctx, "DELETE", "/v1/certs/"+url.PathEscape(domain), nil, nil)
}

// CertsCA returns the PEM of the server's local CA.
func (c *Client) CertsCA(ctx context.Context) ([]byte, error) {
	resp, err := c.do(ctx, "GET", "/v1/certs/ca", nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}
