package e2e

import (
	"net/url"
	"strings"
	"testing"
)

// TestInternalNamesResolveLive: machines resolve <app>.internal and
// <id>.vm.<app>.internal through pier's name server on their gateway,
// from live state. An app created after a machine started resolves in it
// at once, and a call to it from an app without a connection gets the
// mesh's 403, not a failed lookup.
func TestInternalNamesResolveLive(t *testing.T) {
	s := startRuncServer(t)
	s.launchApp("meshapp", "caller", "")
	// caller's machine asks its resolver (testdata/apps/meshapp's /resolve).
	lookup := func(name string) string {
		t.Helper()
		code, out := s.call("caller", "GET", "/resolve?name="+url.QueryEscape(name), "")
		if code != 200 {
			t.Fatalf("caller /resolve %s: %d %s", name, code, out)
		}
		return out
	}

	// Created after caller's machine started.
	s.mustPier("apps", "create", "later")
	if got := lookup("later.internal"); !strings.HasPrefix(got, "100.125.") {
		t.Fatalf("later.internal in a machine started before the app existed = %q, want its service address", got)
	}
	if _, hosts := s.call("caller", "GET", "/file?path=/etc/hosts", ""); strings.Contains(hosts, ".internal") {
		t.Errorf("/etc/hosts names apps; they should come from the name server:\n%s", hosts)
	}
	if got := lookup("nope.internal"); !strings.Contains(got, "no such host") {
		t.Errorf("an unknown app resolved: %q", got)
	}

	s.launchApp("meshapp", "later", "")
	later := s.status("later").Machines[0]
	var lm apiMachine
	s.apiCall("GET", "/v1/apps/later/machines/"+later.ID, nil, &lm)
	if got := lookup(later.ID + ".vm.later.internal"); lm.PrivateIP == "" || got != lm.PrivateIP {
		t.Errorf("%s.vm.later.internal = %q, want %s", later.ID, got, lm.PrivateIP)
	}
	// Not connected: the mesh refuses, by name.
	if got := s.fromMachine("caller", "http://later.internal/"); !strings.HasPrefix(got, "403 ") {
		t.Errorf("call from an unconnected app = %q, want the mesh's 403", got)
	}
}
