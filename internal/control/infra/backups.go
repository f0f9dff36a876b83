package infra

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// BackupTimeout bounds one backup or restore.
const BackupTimeout = 30 * time.Minute

func (s *Service) backupDir(name string) string { return filepath.Join(s.BackupDir, name) }

func (s *Service) backupPath(name, id string) string {
	return filepath.Join(s.backupDir(name), id+".backup")
}

// backuper returns a resource and its driver's backup side, or Invalid if
// its type has no backups.
func (s *Service) backuper(ctx context.Context, name string) (store.ResourceRow, resources.Backuper, error) {
	r, err := s.Store.Resource(ctx, name)
	if err != nil {
		return r, nil, err
	}
	d, err := s.Types.Driver(r.Type)
	if err != nil {
		return r, nil, err
	}
	b, ok := d.(resources.Backuper)
	if !ok {
		return r, nil, pier.Errorf(pier.Invalid, "%s resources have no backups", r.Type)
	}
	if r.Status != resources.StatusReady {
		return r, nil, pier.Errorf(pier.Conflict, "resource %s is %s", name, r.Status)
	}
	return r, b, nil
}

func newBackupID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Backup takes a backup of a resource now. trigger is "manual" or
// "schedule".
func (s *Service) Backup(ctx context.Context, name, trigger string) (resources.Backup, error) {
	r, b, err := s.backuper(ctx, name)
	if err != nil {
		return resources.Backup{}, err
	}
	unlock, err := s.Busy.Lock(ctx, name, "a backup")
	if err != nil {
		return resources.Backup{}, err
	}
	defer unlock()
	inst, err := s.instance(r)
	if err != nil {
		return resources.Backup{}, err
	}
	now := time.Now().UTC()
	bk := resources.Backup{ID: newBackupID(now), Resource: name, Trigger: trigger, CreatedAt: now}
	if err := os.MkdirAll(s.backupDir(name), 0o700); err != nil {
		return bk, err
	}
	path := s.backupPath(name, bk.ID)
	f, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return bk, err
	}
	bctx, cancel := context.WithTimeout(ctx, BackupTimeout)
	defer cancel()
	err = b.Backup(bctx, inst, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(path+".tmp", path)
	}
	if err != nil {
		os.Remove(path + ".tmp")
		s.resourceEvent(ctx, name, "backup.failed", "%s backup failed: %v", trigger, firstLine(err))
		return bk, &pier.Error{Kind: pier.Failed, Msg: "backup of " + name + " failed", Err: err}
	}
	if st, err := os.Stat(path); err == nil {
		bk.Size = st.Size()
	}
	if err := s.Store.AddBackup(ctx, bk); err != nil {
		os.Remove(path)
		return bk, err
	}
	s.resourceEvent(ctx, name, "backup", "%s backup %s taken (%d bytes)", trigger, bk.ID, bk.Size)
	return bk, nil
}

// Backups lists a resource's backups, newest first.
func (s *Service) Backups(ctx context.Context, name string) ([]resources.Backup, error) {
	if _, _, err := s.backuper(ctx, name); err != nil {
		return nil, err
	}
	return s.Store.Backups(ctx, name)
}

// RestoreBackup replaces a resource's data with a backup. Connections keep
// working; sessions open during the restore are ended.
func (s *Service) RestoreBackup(ctx context.Context, name, id string, out io.Writer) error {
	r, b, err := s.backuper(ctx, name)
	if err != nil {
		return err
	}
	bk, err := s.Store.Backup(ctx, name, id)
	if err != nil {
		return err
	}
	unlock, err := s.Busy.Lock(ctx, name, "a restore")
	if err != nil {
		return err
	}
	defer unlock()
	inst, err := s.instance(r)
	if err != nil {
		return err
	}
	f, err := os.Open(s.backupPath(name, bk.ID))
	if err != nil {
		return pier.Errorf(pier.Failed, "backup %s is recorded but its file is gone: %v", id, err)
	}
	defer f.Close()
	fmt.Fprintf(out, "==> Restoring %s from backup %s (%s)\n", name, bk.ID, bk.CreatedAt.Format(time.RFC3339))
	rctx, cancel := context.WithTimeout(ctx, BackupTimeout)
	defer cancel()
	if err := b.Restore(rctx, inst, f); err != nil {
		s.resourceEvent(ctx, name, "restore.failed", "restore of %s failed: %v", id, firstLine(err))
		return &pier.Error{Kind: pier.Failed, Msg: "restore of " + name + " failed", Err: err}
	}
	s.resourceEvent(ctx, name, "restore", "restored from backup %s", id)
	fmt.Fprintf(out, "==> %s restored\n", name)
	return nil
}

// scheduledBackups takes the daily backups that are due and prunes
// scheduled ones beyond each resource's retention.
func (s *Service) scheduledBackups(ctx context.Context, now time.Time) {
	rows, err := s.Store.Resources(ctx)
	if err != nil {
		return
	}
	for _, r := range rows {
		if r.Status != resources.StatusReady || r.Params["backup_schedule"] != "daily" {
			continue
		}
		bs, err := s.Store.Backups(ctx, r.Name)
		if err != nil {
			continue
		}
		last := r.CreatedAt
		if len(bs) > 0 {
			last = bs[0].CreatedAt
		}
		if now.Sub(last) < 24*time.Hour {
			continue
		}
		if _, err := s.Backup(ctx, r.Name, "schedule"); err != nil {
			s.Log.Error("scheduled backup", "resource", r.Name, "err", err)
			continue
		}
		s.pruneBackups(ctx, r)
	}
}

// pruneBackups deletes scheduled backups beyond the retention count.
func (s *Service) pruneBackups(ctx context.Context, r store.ResourceRow) {
	keep := 7
	if n, ok := r.Params["backup_retention"].(float64); ok {
		keep = int(n)
	}
	bs, err := s.Store.Backups(ctx, r.Name)
	if err != nil {
		return
	}
	n := 0
	for _, b := range bs {
		if b.Trigger != "schedule" {
			continue
		}
		if n++; n > keep {
			os.Remove(s.backupPath(r.Name, b.ID))
			s.Store.DeleteBackup(ctx, b.ID)
		}
	}
}
