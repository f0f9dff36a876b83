package pier

import "testing"

func TestCheckPath(t *testing.T) {
	for _, tt := range []struct {
		path string
		ok   bool
	}{
		{"/healthz", true},
		{"/health?full=1", true},
		{"/a%20b", true},
		{"", false},
		{"healthz", false},
		{"@127.0.0.1:4280/v1/status", false},
		{"//127.0.0.1:4280/v1/status", false},
		{"http://127.0.0.1:4280/", false},
		{"/x HTTP/1.1\r\nHost: evil", false},
		{"/x\ty", false},
		{"/x#frag", false},
	} {
		if err := CheckPath(tt.path); (err == nil) != tt.ok {
			t.Errorf("CheckPath(%q) = %v, want ok=%v", tt.path, err, tt.ok)
		}
	}
}

func TestCheckURLKeepsHost(t *testing.T) {
	for _, p := range []string{"/healthz", "/a/../b?x=1", "/@127.0.0.1:4280/"} {
		u, err := CheckURL("100.127.0.5:8080", p)
		if err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		if u.Host != "100.127.0.5:8080" || u.User != nil {
			t.Errorf("%q: URL %s leaves the machine", p, u)
		}
	}
	if _, err := CheckURL("10.0.0.1:80", "@127.0.0.1:4280/v1/status"); err == nil {
		t.Error("CheckURL accepted a path naming another host")
	}
}
