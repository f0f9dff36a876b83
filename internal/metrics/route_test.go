package metrics

import (
	"fmt"
	"testing"
	"time"
)

func TestRouteKey(t *testing.T) {
	tests := []struct {
		method, path, want string
	}{
		{"GET", "/users/123?x=1", "GET /users/:id"},
		{"GET", "/users/123/posts/7#top", "GET /users/:id/posts/:id"},
		{"PUT", "/items/550e8400-e29b-41d4-a716-446655440000", "PUT /items/:id"},
		{"GET", "/blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/raw", "GET /blobs/:id/raw"},
		{"GET", "/objects/507f1f77bcf86cd799439011", "GET /objects/:id"},
		{"GET", "/cafe/beef", "GET /cafe/beef"}, // short hex is a word
		{"GET", "/v2/users", "GET /v2/users"},
		{"GET", "/", "GET /"},
		{"GET", "", "GET /"},
		{"GET", "?q=1", "GET /"},
		{"GET", "health", "GET /health"},
		{"GET", "/a//b/", "GET /a//b/"},
		{"", "/x", "GET /x"},
		{"BREW", "/pot", "OTHER /pot"},
		{"POST", "/pkg.Greeter/SayHello", "POST /pkg.Greeter/SayHello"},
		{"GET", "/550e8400-e29b-41d4-a716-44665544000g", "GET /550e8400-e29b-41d4-a716-44665544000g"},
	}
	for _, tt := range tests {
		key, _ := routeKey(nil, Route{tt.method, tt.path})
		if string(key) != tt.want {
			t.Errorf("routeKey(%q, %q) = %q, want %q", tt.method, tt.path, key, tt.want)
		}
	}
}

func TestPathsNormalized(t *testing.T) {
	clk := newClock()
	r := New(nil, Options{Now: clk.Now})
	e := Edge{"web", "api"}
	for _, p := range []string{"/users/123?x=1", "/users/456", "/users/789/avatar"} {
		r.Request(e, "m1", Route{"GET", p}, 200, false, time.Millisecond, 0, 0)
	}
	r.Request(e, "m1", Route{"DELETE", "/users/1"}, 200, false, time.Millisecond, 0, 0)

	got := r.Paths("api", time.Minute, 0)
	want := []struct {
		method, path string
		n            int64
	}{{"GET", "/users/:id", 2}, {"DELETE", "/users/:id", 1}, {"GET", "/users/:id/avatar", 1}}
	if len(got) != len(want) {
		t.Fatalf("Paths = %+v, want %d rows", got, len(want))
	}
	for i, w := range want {
		if got[i].Method != w.method || got[i].Path != w.path || got[i].Requests != w.n || got[i].Dst != "api" {
			t.Errorf("row %d = %s %s %d, want %s %s %d", i, got[i].Method, got[i].Path, got[i].Requests, w.method, w.path, w.n)
		}
	}
	if got := r.Paths("api", time.Minute, 1); len(got) != 1 || got[0].Path != "/users/:id" {
		t.Errorf("Paths with limit 1 = %+v", got)
	}
	if got := r.Paths("nope", time.Minute, 0); len(got) != 0 {
		t.Errorf("Paths of unknown app = %+v", got)
	}
}

func TestRouteCap(t *testing.T) {
	clk := newClock()
	r := New(nil, Options{Now: clk.Now})
	e := Edge{"web", "api"}
	for i := range maxRoutes + 50 {
		r.Request(e, "m1", Route{"GET", fmt.Sprintf("/r%d", i)}, 200, false, time.Millisecond, 0, 0)
	}
	r.Request(e, "m1", Route{"POST", "/late"}, 200, false, time.Millisecond, 0, 0)
	r.Request(e, "m1", Route{"GET", "/r0"}, 200, false, time.Millisecond, 0, 0) // existing routes still count

	rows := r.Paths("api", time.Minute, 0)
	if len(rows) != maxRoutes+2 {
		t.Fatalf("got %d routes, want %d plus two overflow rows", len(rows), maxRoutes)
	}
	byKey := map[string]int64{}
	for _, s := range rows {
		byKey[s.Method+" "+s.Path] = s.Requests
	}
	for key, want := range map[string]int64{"GET (other)": 50, "POST (other)": 1, "GET /r0": 2, "GET /r99": 1} {
		if byKey[key] != want {
			t.Errorf("%s: %d requests, want %d", key, byKey[key], want)
		}
	}
	if rows[0].Path != otherPath {
		t.Errorf("busiest route = %s %s, want GET (other)", rows[0].Method, rows[0].Path)
	}
}
