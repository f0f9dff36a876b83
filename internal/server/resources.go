package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/resources/bucket"
	"github.com/pier-dev/pier/internal/resources/postgres"
	"github.com/pier-dev/pier/internal/resources/redis"
	"github.com/pier-dev/pier/internal/secrets"
)

// resourceTypes registers the resource types this server offers: this is
// the one place a new type is added. It returns the registry and a
// function that stops what runs inside pier's process (the bucket
// gateway); managed Postgres and Redis servers are detached processes that
// keep serving across restarts of pier.
func resourceTypes(dataDir string, rnet control.ResourceNet, keys *secrets.Keyring, log *slog.Logger) (*resources.Registry, func(), error) {
	gwDir := filepath.Join(dataDir, "s3")
	root, err := loadOrCreateSealed(filepath.Join(gwDir, "root.sealed"), keys, "bucket-gateway", "root", func() (any, error) {
		return map[string]string{"access": "pieradmin" + randHex(6), "secret": randHex(24)}, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("bucket gateway root key: %w", err)
	}
	var rootKeys map[string]string
	if err := json.Unmarshal(root, &rootKeys); err != nil {
		return nil, nil, fmt.Errorf("bucket gateway root key: %w", err)
	}
	buckets, err := bucket.New(bucket.Config{Dir: gwDir, Listen: rnet.Listen, Host: rnet.Host, RootAccess: rootKeys["access"], RootSecret: rootKeys["secret"],
		Accounts: &sealedAccounts{path: filepath.Join(gwDir, "accounts.sealed"), keys: keys}, Log: log.With("component", "s3")})
	if err != nil {
		return nil, nil, err
	}
	reg, err := resources.NewRegistry(
		postgres.New(postgres.Config{Log: log.With("component", "postgres")}),
		redis.New(redis.Config{Log: log.With("component", "redis")}),
		buckets,
	)
	if err != nil {
		buckets.Close()
		return nil, nil, err
	}
	return reg, func() { buckets.Close() }, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// sealedFile is a small JSON document kept encrypted with the keyring.
type sealedFile struct {
	KeyID  string `json:"key_id"`
	Sealed []byte `json:"sealed"`
}

func readSealed(path string, keys *secrets.Keyring, scope, name string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f sealedFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	plain, err := keys.Open(scope, name, f.KeyID, f.Sealed)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return []byte(plain), nil
}

func writeSealed(path string, keys *secrets.Keyring, scope, name string, v any) error {
	plain, err := json.Marshal(v)
	if err != nil {
		return err
	}
	keyID, sealed, err := keys.Seal(scope, name, string(plain))
	if err != nil {
		return err
	}
	b, err := json.Marshal(sealedFile{KeyID: keyID, Sealed: sealed})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// loadOrCreateSealed reads a sealed document, creating it with make the
// first time.
func loadOrCreateSealed(path string, keys *secrets.Keyring, scope, name string, make func() (any, error)) ([]byte, error) {
	b, err := readSealed(path, keys, scope, name)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return b, err
	}
	v, err := make()
	if err != nil {
		return nil, err
	}
	if err := writeSealed(path, keys, scope, name, v); err != nil {
		return nil, err
	}
	return readSealed(path, keys, scope, name)
}

// sealedAccounts keeps the bucket gateway's IAM accounts (their secret
// keys among them) encrypted at rest.
type sealedAccounts struct {
	path string
	keys *secrets.Keyring
}

func (s *sealedAccounts) Load(ctx context.Context) (map[string]bucket.Account, error) {
	b, err := readSealed(s.path, s.keys, "bucket-gateway", "accounts")
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bucket.Account{}, nil
	}
	if err != nil {
		return nil, err
	}
	accounts := map[string]bucket.Account{}
	return accounts, json.Unmarshal(b, &accounts)
}

func (s *sealedAccounts) Save(ctx context.Context, accounts map[string]bucket.Account) error {
	return writeSealed(s.path, s.keys, "bucket-gateway", "accounts", accounts)
}
