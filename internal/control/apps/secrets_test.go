package apps

import (
	"context"
	"io"
	"slices"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

// TestSetSecrets: names are checked before anything is sealed or stored,
// so one bad name changes nothing; good ones are stored sealed and rolled
// into the app.
func TestSetSecrets(t *testing.T) {
	tests := []struct {
		name     string
		values   map[string]string
		released bool
		kind     pier.Kind
		roll     string // the rollout's, "" none
	}{
		{name: "none", values: map[string]string{}, released: true, kind: pier.Invalid},
		{name: "one bad name among good ones", values: map[string]string{"GOOD": "1", "bad-name": "2", "ALSO_GOOD": "3"}, released: true, kind: pier.Invalid},
		{name: "reserved name", values: map[string]string{"PORT": "1"}, released: true, kind: pier.Invalid},
		{name: "set and rolled", values: map[string]string{"B": "2", "A": "1"}, released: true, roll: "deploy web v2 x1 (secrets set A, B)"},
		{name: "before the first deploy", values: map[string]string{"A": "1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web")
			if tc.released {
				e.addRelease(t, "web", pier.ReleaseActive)
			}
			rel, err := e.svc.SetSecrets(ctx, "web", tc.values, io.Discard)
			if pier.KindOf(err) != tc.kind || (tc.kind == 0) != (err == nil) {
				t.Fatalf("error %v, want kind %v", err, tc.kind)
			}
			sealed, infos, _ := e.store.Secrets(ctx, "web")
			if err != nil {
				if len(sealed) != 0 || len(e.log.All()) != 0 {
					t.Errorf("a refused set stored %+v and did %q", infos, e.log.All())
				}
				return
			}
			if len(sealed) != len(tc.values) {
				t.Fatalf("stored %+v, want %d", infos, len(tc.values))
			}
			for _, sec := range sealed {
				v, err := e.keys.Open("web", sec.Name, sec.KeyID, sec.Sealed)
				if err != nil || v != tc.values[sec.Name] || sec.Digest != e.keys.Digest("web", sec.Name, v) || string(sec.Sealed) == v {
					t.Errorf("secret %s opens to %q, %v: want %q, sealed, with its digest", sec.Name, v, err, tc.values[sec.Name])
				}
			}
			if tc.roll == "" {
				if rel != nil || len(e.log.All()) != 0 {
					t.Errorf("release %+v, did %q: want no roll", rel, e.log.All())
				}
				return
			}
			if !e.log.Has(tc.roll) || rel == nil || rel.Version != 2 {
				t.Errorf("did %q, release %+v: want %q", e.log.All(), rel, tc.roll)
			}
		})
	}
}

// TestUnsetSecrets: removing secrets is all or nothing, then rolled.
func TestUnsetSecrets(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web")
	e.addRelease(t, "web", pier.ReleaseActive)
	if _, err := e.svc.SetSecrets(ctx, "web", map[string]string{"A": "1", "B": "2"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.UnsetSecrets(ctx, "web", nil, io.Discard); pier.KindOf(err) != pier.Invalid {
		t.Errorf("unset of nothing: %v, want Invalid", err)
	}
	if _, err := e.svc.UnsetSecrets(ctx, "web", []string{"A", "NOPE"}, io.Discard); pier.KindOf(err) != pier.NotFound {
		t.Errorf("unset of an unknown name: %v, want NotFound", err)
	}
	if _, infos, _ := e.store.Secrets(ctx, "web"); len(infos) != 2 {
		t.Errorf("after a refused unset: %+v, want both", infos)
	}
	if _, err := e.svc.UnsetSecrets(ctx, "web", []string{"A"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	_, infos, _ := e.store.Secrets(ctx, "web")
	if len(infos) != 1 || infos[0].Name != "B" || !e.log.Has("deploy web v3 x1 (secrets unset A)") {
		t.Errorf("secrets %+v, did %q", infos, e.log.All())
	}
	if !slices.Contains(e.store.events, "web secrets: secrets unset A") {
		t.Errorf("events %q", e.store.events)
	}
}
