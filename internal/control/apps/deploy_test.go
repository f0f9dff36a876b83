package apps

import (
	"context"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/pier"
)

// TestDeploy: a build becomes a release that is rolled out and activated
// with its declared connections; a failed rollout leaves the running
// release current, marks the new one failed and undoes its connections; a
// failed build makes no release at all.
func TestDeploy(t *testing.T) {
	tests := []struct {
		name                  string
		buildFails, rollFails bool
		declareFails          bool
		wantErr               bool
		current               int // the app's release afterwards (v1 was live)
		v2                    string
		did, didNot           []string
		event                 string // the start of one
	}{
		{name: "live", current: 2, v2: pier.ReleaseActive,
			did:   []string{"build web", "grant declared web", "deploy web v2 x1 (deploy)", "routes web", "declared live web"},
			event: "web deploy: v2 deployed (deploy)"},
		{name: "rollout fails", rollFails: true, wantErr: true, current: 1, v2: pier.ReleaseFailed,
			did: []string{"deploy web v2 x1 (deploy)", "undo declared web"}, didNot: []string{"declared live web", "routes web"},
			event: "web deploy.failed: v2 failed: boom"},
		{name: "build fails", buildFails: true, wantErr: true, current: 1,
			didNot: []string{"grant declared web", "deploy web v2 x1 (deploy)"},
			event:  "web build.failed: build failed: boom"},
		{name: "declared connection fails", declareFails: true, wantErr: true, current: 1,
			didNot: []string{"deploy web v2 x1 (deploy)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web")
			e.addRelease(t, "web", pier.ReleaseActive)
			if tc.buildFails {
				e.builder.fail = errBoom
			}
			if tc.rollFails {
				e.rollout.fail = errBoom
			}
			if tc.declareFails {
				e.parts.declareErr = errBoom
			}
			u := e.upload(t, "web")
			rel, err := e.svc.Deploy(ctx, u, io.Discard)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want one %v", err, tc.wantErr)
			}
			a, _ := e.store.App(ctx, "web")
			if a.Release != tc.current {
				t.Errorf("current release v%d, want v%d", a.Release, tc.current)
			}
			v2, verr := e.store.Release(ctx, "web", 2)
			if tc.v2 == "" {
				if verr == nil {
					t.Errorf("stored %+v, want no v2", v2)
				}
			} else if v2.Status != tc.v2 {
				t.Errorf("v2 %q, want %q", v2.Status, tc.v2)
			}
			if !tc.wantErr && (rel.Version != 2 || rel.Status != pier.ReleaseActive || rel.Start != "./app") {
				t.Errorf("returned %+v, want v2 active with the plan's start", rel)
			}
			did := e.log.All()
			controltest.Want(t, did, tc.did, tc.didNot)
			if tc.event != "" && !e.store.hasEventPrefix(tc.event) {
				t.Errorf("events %q, want %q", e.store.events, tc.event)
			}
			if _, err := os.Stat(u.Dir); !os.IsNotExist(err) {
				t.Errorf("upload left: %v", err)
			}
		})
	}
}

// TestFirstDeployOfScaledToZero: an app at count 0 is deployed to one
// machine, and keeps it.
func TestFirstDeployOfScaledToZero(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web")
	e.store.SetCount(ctx, "web", 0)
	if _, err := e.svc.Deploy(ctx, e.upload(t, "web"), io.Discard); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.store.App(ctx, "web"); a.Count != 1 || a.Release != 1 {
		t.Errorf("app %+v, want count 1 at v1", a)
	}
}

// TestRollback: version 0 picks the newest release before the current one
// that did not fail; the new release reuses the old one's build.
func TestRollback(t *testing.T) {
	tests := []struct {
		name     string
		statuses []string // v1, v2, ...; the active one is current
		version  int
		gone     bool // the target's build was collected
		kind     pier.Kind
		want     int // the version rolled back to
	}{
		{name: "previous", statuses: []string{pier.ReleaseRetired, pier.ReleaseActive}, want: 1},
		{name: "skips failed", statuses: []string{pier.ReleaseRetired, pier.ReleaseFailed, pier.ReleaseActive}, want: 1},
		{name: "explicit", statuses: []string{pier.ReleaseRetired, pier.ReleaseRetired, pier.ReleaseActive}, version: 1, want: 1},
		{name: "explicit failed is allowed", statuses: []string{pier.ReleaseRetired, pier.ReleaseFailed, pier.ReleaseActive}, version: 2, want: 2},
		{name: "ignores newer than current", statuses: []string{pier.ReleaseRetired, pier.ReleaseActive, pier.ReleaseFailed}, want: 1},
		{name: "nothing earlier", statuses: []string{pier.ReleaseActive}, kind: pier.Invalid},
		{name: "only failed earlier", statuses: []string{pier.ReleaseFailed, pier.ReleaseActive}, kind: pier.Invalid},
		{name: "the current one", statuses: []string{pier.ReleaseRetired, pier.ReleaseActive}, version: 2, kind: pier.Invalid},
		{name: "unknown version", statuses: []string{pier.ReleaseRetired, pier.ReleaseActive}, version: 9, kind: pier.NotFound},
		{name: "build gone", statuses: []string{pier.ReleaseRetired, pier.ReleaseActive}, gone: true, kind: pier.Invalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web")
			var rels []pier.Release
			for _, st := range tc.statuses {
				rels = append(rels, e.addRelease(t, "web", st))
			}
			if tc.gone {
				os.RemoveAll(e.builder.Path("web", rels[0].BuildID))
			}
			before, _ := e.store.App(ctx, "web")
			rel, err := e.svc.Rollback(ctx, "web", tc.version, io.Discard)
			if pier.KindOf(err) != tc.kind || (tc.kind == 0) != (err == nil) {
				t.Fatalf("error %v, want kind %v", err, tc.kind)
			}
			after, _ := e.store.App(ctx, "web")
			if err != nil {
				if after.Release != before.Release || len(e.log.All()) != 0 {
					t.Errorf("a refused rollback changed the app (v%d -> v%d) or did %q", before.Release, after.Release, e.log.All())
				}
				return
			}
			old := rels[tc.want-1]
			if rel.Version != len(rels)+1 || rel.BuildID != old.BuildID || rel.Description != "rollback to v"+strconv.Itoa(tc.want) || after.Release != rel.Version {
				t.Errorf("rolled back to %+v (app at v%d), want a new release of v%d's build %s", rel, after.Release, tc.want, old.BuildID)
			}
			if !e.log.Has("deploy web v" + strconv.Itoa(rel.Version) + " x1 (rollback to v" + strconv.Itoa(tc.want) + ")") {
				t.Errorf("did %q", e.log.All())
			}
		})
	}
}

// TestCollect: builds of releases beyond the newest KeepReleases go, but
// never the current one's, nor one a kept release shares; release records
// stay.
func TestCollect(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web")
	e.svc.KeepReleases = 1
	var rels []pier.Release
	for range 3 {
		rels = append(rels, e.addRelease(t, "web", pier.ReleaseRetired))
	}
	// v4 reuses v1's build (a rollback); v5 is current, though not the
	// newest: v6 failed after it.
	e.store.CreateRelease(ctx, pier.Release{App: "web", BuildID: rels[0].BuildID, Status: pier.ReleaseRetired})
	cur := e.addRelease(t, "web", pier.ReleaseActive)
	e.addRelease(t, "web", pier.ReleaseFailed)
	e.svc.collect(ctx, "web")
	exists := func(id string) bool { _, err := os.Stat(e.builder.Path("web", id)); return err == nil }
	for _, tc := range []struct {
		id   string
		kept bool
	}{
		{rels[0].BuildID, false}, // v1 and v4, both old
		{rels[1].BuildID, false},
		{rels[2].BuildID, false},
		{cur.BuildID, true},
		{"b6", true}, // newest
	} {
		if exists(tc.id) != tc.kept {
			t.Errorf("build %s kept %v, want %v", tc.id, exists(tc.id), tc.kept)
		}
	}
	if all, _ := e.store.Releases(ctx, "web"); len(all) != 6 {
		t.Errorf("%d releases left, want the 6 records", len(all))
	}
	if !e.store.hasEvent("web collect: removed the builds of 3 release(s) older than the newest 1") {
		t.Errorf("events %q", e.store.events)
	}
}

// TestCollectKeepsShared: a build an old release shares with a kept one
// stays.
func TestCollectKeepsShared(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "web")
	e.svc.KeepReleases = 1
	v1 := e.addRelease(t, "web", pier.ReleaseRetired)
	e.addRelease(t, "web", pier.ReleaseRetired)
	rb, _ := e.store.CreateRelease(ctx, pier.Release{App: "web", BuildID: v1.BuildID, Description: "rollback to v1"})
	e.store.Activate(ctx, "web", rb.Version)
	e.svc.collect(ctx, "web")
	if _, err := os.Stat(e.builder.Path("web", v1.BuildID)); err != nil {
		t.Errorf("the current release's build (shared with v1) went: %v", err)
	}
	if _, err := os.Stat(e.builder.Path("web", "b2")); !os.IsNotExist(err) {
		t.Errorf("v2's build kept: %v", err)
	}
}
