package proxy

import "testing"

func TestCustomDomainsRouteToTheirApp(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, named("web")))
	f.p.SetDomains(map[string]string{"www.example.com": "web", "gone.example.com": "nosuchapp"})
	tests := []struct {
		host     string
		wantCode int
	}{
		{"www.example.com", 200},
		{"WWW.Example.com:8443", 200},
		{"www.example.com.", 200},
		{"example.com", 404},
		{"gone.example.com", 404}, // routed to an app the proxy does not serve
		{"web.apps.test", 200},
	}
	for _, tt := range tests {
		if code, body, _ := f.get(t, tt.host, "/"); code != tt.wantCode || (code == 200 && body != "web") {
			t.Errorf("%s: %d %q, want %d", tt.host, code, body, tt.wantCode)
		}
	}
	if got := f.p.App("www.example.com:80"); got != "web" {
		t.Errorf("App(www.example.com:80) = %q", got)
	}
	f.p.SetDomains(nil)
	if code, _, _ := f.get(t, "www.example.com", "/"); code != 404 {
		t.Errorf("after SetDomains(nil): %d, want 404", code)
	}
}
