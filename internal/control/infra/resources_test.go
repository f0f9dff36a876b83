package infra

import (
	"context"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// TestCreateResource: a created resource is stored ready with its admin
// credentials sealed; one that cannot be created leaves nothing behind.
func TestCreateResource(t *testing.T) {
	tests := []struct {
		name, res   string
		params      map[string]any
		provision   error
		readyFails  error
		kind        pier.Kind // 0: success
		provisioned bool
	}{
		{name: "managed", res: "db", params: map[string]any{}, provisioned: true},
		{name: "provision fails", res: "db", params: map[string]any{}, provision: errBoom, kind: pier.Failed, provisioned: true},
		{name: "ready cannot be stored", res: "db", params: map[string]any{}, readyFails: errBoom, kind: pier.Failed, provisioned: true},
		{name: "bad parameter", res: "db", params: map[string]any{"size_mb": 1}, kind: pier.Invalid},
		{name: "unknown parameter", res: "db", params: map[string]any{"colour": "red"}, kind: pier.Invalid},
		{name: "bad name", res: "DB!", params: map[string]any{}, kind: pier.Invalid},
		{name: "name of an app", res: "web", params: map[string]any{}, kind: pier.Conflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web")
			e.driver.setFail("provision", tc.provision)
			if tc.readyFails != nil {
				e.store.fail["ResourceReady"] = tc.readyFails
			}
			r, err := e.svc.CreateResource(ctx, tc.res, "kv", tc.params, io.Discard)
			if pier.KindOf(err) != tc.kind || (tc.kind == 0) != (err == nil) {
				t.Fatalf("error %v (%v), want kind %v", err, pier.KindOf(err), tc.kind)
			}
			if got := e.log.Has("provision " + tc.res); got != tc.provisioned {
				t.Errorf("provisioned %v, want %v", got, tc.provisioned)
			}
			row, rerr := e.store.Resource(ctx, tc.res)
			if err != nil {
				if rerr == nil {
					t.Errorf("stored %+v after a failed create", row)
				}
				if tc.provisioned && !e.log.Has("destroy "+tc.res) {
					t.Errorf("did %q: a failed provisioning not destroyed", e.log.All())
				}
				if _, err := os.Stat(e.svc.resourceDir(tc.res)); !os.IsNotExist(err) {
					t.Errorf("directory left: %v", err)
				}
				return
			}
			if r.Status != resources.StatusReady || row.Status != resources.StatusReady || !r.Managed || r.Host != "127.0.0.1" || r.Port == 0 {
				t.Errorf("created %+v, stored %q: want ready, managed on 127.0.0.1", r, row.Status)
			}
			inst, err := e.svc.instance(row)
			if err != nil || inst.Admin["admin_password"] != "secret-db" {
				t.Errorf("admin credentials %v, %v: want the provisioned ones", inst.Admin, err)
			}
			if !contains(e.store.eventsOf("resource/db"), "resource.create: kv db created (managed)") {
				t.Errorf("events %q", e.store.eventsOf("resource/db"))
			}
		})
	}
}

// TestExternalResource: an external resource's admin_url is stored
// redacted and given to the driver whole.
func TestExternalResource(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, err := e.svc.CreateResource(ctx, "ext", "kv", map[string]any{"admin_url": "kv://admin:hunter2@db.example:5432/x?sslpassword=p"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r.Managed || r.Port != 0 || r.Params["admin_url"] != "kv://admin:xxxxx@db.example:5432/x" {
		t.Errorf("shown %+v: want external, no port, admin_url redacted", r)
	}
	row, _ := e.store.Resource(ctx, "ext")
	if strings.Contains(row.Params["admin_url"].(string), "hunter2") {
		t.Errorf("stored params %v hold the password", row.Params)
	}
	inst, err := e.svc.instance(row)
	if err != nil || inst.Params["admin_url"] != "kv://admin:hunter2@db.example:5432/x?sslpassword=p" {
		t.Errorf("driver gets %v, %v: want the whole admin_url", inst.Params["admin_url"], err)
	}
}

// TestDeleteResource: a connected resource is deleted only with force,
// which disconnects its apps first; a delete cut short is undone or left
// for the next start to finish.
func TestDeleteResource(t *testing.T) {
	tests := []struct {
		name      string
		status    resources.Status // set before the delete ("" keeps ready)
		force     bool
		revoke    error
		destroy   error
		kind      pier.Kind
		db        resources.Status // afterwards; "" gone
		conn      store.ConnStatus // web -> db afterwards; "" gone
		destroyed bool
	}{
		{name: "connected, no force", kind: pier.Precondition, db: resources.StatusReady, conn: store.ConnActive},
		{name: "being created", status: resources.StatusCreating, force: true, kind: pier.Conflict, db: resources.StatusCreating, conn: store.ConnActive},
		{name: "force", force: true, destroyed: true},
		{name: "force, a revoke fails", force: true, revoke: errBoom, kind: pier.Failed, db: resources.StatusReady, conn: store.ConnRevoking},
		// Left deleting: StartResources removes it at the next start.
		{name: "force, destroy fails", force: true, destroy: errBoom, kind: pier.Failed, db: resources.StatusDeleting, destroyed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "web")
			e.create(t, "db")
			e.connect(t, "web", "db")
			if _, err := e.svc.Backup(ctx, "db", "manual"); err != nil {
				t.Fatal(err)
			}
			if tc.status != "" {
				e.leaveResource("db", tc.status)
			}
			e.driver.setFail("revoke", tc.revoke)
			e.driver.setFail("destroy", tc.destroy)
			err := e.svc.DeleteResource(ctx, "db", tc.force, io.Discard)
			if pier.KindOf(err) != tc.kind || (tc.kind == 0) != (err == nil) {
				t.Fatalf("error %v (%v), want kind %v", err, pier.KindOf(err), tc.kind)
			}
			if st, _ := e.store.resourceStatus("db"); st != tc.db {
				t.Errorf("db %q, want %q", st, tc.db)
			}
			if st, _ := e.store.connStatus("web", "db"); st != tc.conn {
				t.Errorf("web -> db %q, want %q", st, tc.conn)
			}
			if got := e.log.Has("destroy db"); got != tc.destroyed {
				t.Errorf("destroyed %v, want %v", got, tc.destroyed)
			}
			_, statErr := os.Stat(e.svc.backupDir("db"))
			if gone := os.IsNotExist(statErr); gone != (tc.db == "") {
				t.Errorf("backups dir gone %v, want %v", gone, tc.db == "")
			}
			if tc.db == "" && !slices.Contains(e.store.eventsOf("resource/db"), "resource.delete: kv db deleted") {
				t.Errorf("events %q", e.store.eventsOf("resource/db"))
			}
		})
	}
}

// TestBackups: a backup is taken to a file and recorded, restored from it,
// and scheduled ones beyond the retention are pruned.
func TestBackups(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.create(t, "db")
	b, err := e.svc.Backup(ctx, "db", "manual")
	if err != nil {
		t.Fatal(err)
	}
	if b.Size != int64(len("dump of db")) {
		t.Errorf("backup %+v: want the dump's size", b)
	}
	if err := e.svc.RestoreBackup(ctx, "db", b.ID, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !e.log.Has(`restore db from "dump of db"`) {
		t.Errorf("did %q, want a restore from the backup's file", e.log.All())
	}
	if err := e.svc.RestoreBackup(ctx, "db", "nope", io.Discard); pier.KindOf(err) != pier.NotFound {
		t.Errorf("restore of an unknown backup: %v", err)
	}
	e.leaveResource("db", resources.StatusDeleting)
	if _, err := e.svc.Backup(ctx, "db", "manual"); pier.KindOf(err) != pier.Conflict {
		t.Errorf("backup of a resource being deleted: %v, want Conflict", err)
	}
}

// TestScheduledBackups: a daily backup is taken once a day, and only the
// newest backup_retention scheduled ones are kept (manual ones all are).
func TestScheduledBackups(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if _, err := e.svc.CreateResource(ctx, "db", "kv", map[string]any{"backup_schedule": "daily", "backup_retention": 2}, io.Discard); err != nil {
		t.Fatal(err)
	}
	e.create(t, "plain")
	if _, err := e.svc.Backup(ctx, "db", "manual"); err != nil {
		t.Fatal(err)
	}
	// Old backups, as if taken on the days before.
	for i := 1; i <= 3; i++ {
		e.store.AddBackup(ctx, resources.Backup{ID: "old" + string(rune('0'+i)), Resource: "db", Trigger: "schedule", CreatedAt: time.Now().Add(-time.Duration(i) * 48 * time.Hour)})
	}
	e.store.mu.Lock()
	for i := range e.store.backups {
		if e.store.backups[i].Trigger == "manual" {
			e.store.backups[i].CreatedAt = time.Now().Add(-25 * time.Hour)
		}
	}
	e.store.mu.Unlock()

	e.svc.scheduledBackups(ctx, time.Now())
	bs, _ := e.store.Backups(ctx, "db")
	var sched, manual int
	for _, b := range bs {
		if b.Trigger == "schedule" {
			sched++
		} else {
			manual++
		}
	}
	if sched != 2 || manual != 1 || bs[0].Trigger != "schedule" || strings.HasPrefix(bs[0].ID, "old") {
		t.Errorf("backups %+v: want a new scheduled one, one old kept, the manual one", bs)
	}
	if n := e.log.Count("backup plain"); n != 0 {
		t.Errorf("backed up a resource without a schedule %d times", n)
	}

	before := e.log.Count("backup db")
	e.svc.scheduledBackups(ctx, time.Now())
	if n := e.log.Count("backup db"); n != before {
		t.Errorf("a second round on the same day took %d more", n-before)
	}
}
