package client

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestMeshRequests checks the method, path and query each mesh call sends,
// and that the answer decodes.
func TestMeshRequests(t *testing.T) {
	type req struct{ method, uri, body string }
	var got req
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = req{r.Method, r.URL.RequestURI(), string(b)}
		if r.Header.Get("Authorization") != "Bearer tok" {
			t.Errorf("%s: no bearer token", r.URL)
		}
		switch r.URL.Path {
		case "/v1/metrics/apps/web":
			json.NewEncoder(w).Encode(map[string]any{"machines": []map[string]any{{"dst": "web", "machine": "m1", "requests": 3}}, "paths": []any{}})
		case "/v1/mesh", "/v1/mesh/rotate":
			json.NewEncoder(w).Encode(map[string]any{"trust_domain": "pier.internal", "leaf_ttl": int64(time.Hour)})
		case "/v1/mesh/identities/web":
			json.NewEncoder(w).Encode(map[string]any{"app": "web", "spiffe_id": "spiffe://pier.internal/app/web", "mesh": true})
		default:
			w.Write([]byte("[]"))
		}
	}))
	t.Cleanup(srv.Close)
	c := New(srv.URL, "tok")
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		call func() error
		want req
	}{
		{"stats", func() error { _, err := c.Stats(ctx, time.Minute); return err }, req{"GET", "/v1/metrics/apps?window=1m0s", ""}},
		{"stats default window", func() error { _, err := c.Stats(ctx, 0); return err }, req{"GET", "/v1/metrics/apps", ""}},
		{"edges", func() error { _, err := c.EdgeStats(ctx, 5*time.Minute); return err }, req{"GET", "/v1/metrics/edges?window=5m0s", ""}},
		{"app", func() error {
			s, err := c.AppStats(ctx, "web", 10*time.Second, 5)
			if err == nil && (len(s.Machines) != 1 || s.Machines[0].Requests != 3) {
				t.Errorf("AppStats = %+v", s)
			}
			return err
		}, req{"GET", "/v1/metrics/apps/web?limit=5&window=10s", ""}},
		{"history", func() error { _, err := c.StatHistory(ctx, "web", 10*time.Minute, 10*time.Second, "edge"); return err },
			req{"GET", "/v1/metrics/apps/web/history?src=edge&step=10s&window=10m0s", ""}},
		{"status", func() error {
			st, err := c.MeshStatus(ctx)
			if err == nil && (st.TrustDomain != "pier.internal" || st.LeafTTL != time.Hour) {
				t.Errorf("MeshStatus = %+v", st)
			}
			return err
		}, req{"GET", "/v1/mesh", ""}},
		{"rotate", func() error { _, err := c.RotateMesh(ctx, true); return err }, req{"POST", "/v1/mesh/rotate", `{"anchor":true}`}},
		{"identity", func() error {
			id, err := c.MeshIdentity(ctx, "web")
			if err == nil && (id.SPIFFEID != "spiffe://pier.internal/app/web" || !id.Mesh) {
				t.Errorf("MeshIdentity = %+v", id)
			}
			return err
		}, req{"GET", "/v1/mesh/identities/web", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("sent %+v, want %+v", got, tc.want)
			}
		})
	}
}
