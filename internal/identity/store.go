package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Store persists the CA state. The state holds private keys: an
// implementation must keep it confidential, e.g. seal it as FileStore does.
type Store interface {
	// Load returns what Save last stored, or nil, nil if nothing was.
	Load(ctx context.Context) ([]byte, error)
	Save(ctx context.Context, data []byte) error
}

// Sealer encrypts values at rest; *secrets.Keyring implements it.
type Sealer interface {
	Seal(app, name, value string) (keyID string, sealed []byte, err error)
	Open(app, name, keyID string, sealed []byte) (string, error)
}

var _ Store = (*FileStore)(nil)

// The scope the CA state is sealed under: a sealed file only opens as the
// mesh CA, never as some other secret.
const sealApp, sealName = "mesh", "ca"

// FileStore keeps the CA state in one file, sealed with Sealer, with mode
// 0600, replaced atomically on every save.
type FileStore struct {
	Path   string
	Sealer Sealer
}

// sealedFile is the on-disk format: nothing in it is readable without the key.
type sealedFile struct {
	KeyID  string `json:"key_id"`
	Sealed []byte `json:"sealed"`
}

// Load opens the sealed file; it returns nil, nil if there is none yet.
func (s *FileStore) Load(ctx context.Context) ([]byte, error) {
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f sealedFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s is damaged: %w", s.Path, err)
	}
	plain, err := s.Sealer.Open(sealApp, sealName, f.KeyID, f.Sealed)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.Path, err)
	}
	return []byte(plain), nil
}

// Save seals data and replaces the file: temp file, fsync, rename, fsync
// of the directory, so a crash leaves either the old state or the new one.
func (s *FileStore) Save(ctx context.Context, data []byte) error {
	keyID, sealed, err := s.Sealer.Seal(sealApp, sealName, string(data))
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	b, err := json.Marshal(sealedFile{KeyID: keyID, Sealed: sealed})
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.Path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), s.Path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
