// Package secrets encrypts app secrets at rest with AES-256-GCM. Keys live in
// files under the data directory; each sealed value records the id of the
// key that sealed it, so keys can be rotated without re-encrypting at once.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Keyring seals and opens secrets. The zero value is not usable; call Load.
type Keyring struct {
	dir     string
	current string            // key id used to seal
	keys    map[string][]byte // key id -> 32-byte key
}

// Load reads the keys in dir, creating a first key if there is none.
func Load(dir string) (*Keyring, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("key dir: %w", err)
	}
	k := &Keyring{dir: dir, keys: map[string][]byte{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".key")
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read key %s: %w", id, err)
		}
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) != 32 {
			return nil, fmt.Errorf("key file %s is damaged (want 64 hex characters)", e.Name())
		}
		k.keys[id] = key
		if id > k.current { // ids sort by creation: k0001, k0002, ...
			k.current = id
		}
	}
	if k.current == "" {
		if _, err := k.Rotate(); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Rotate creates a new key and makes it the one used for sealing.
func (k *Keyring) Rotate() (string, error) {
	id := fmt.Sprintf("k%04d", len(k.keys)+1)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	path := filepath.Join(k.dir, id+".key")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write key: %w", err)
	}
	k.keys[id] = key
	k.current = id
	return id, nil
}

func aad(app, name string) []byte { return []byte("pier-secret\x00" + app + "\x00" + name) }

// Seal encrypts value for app's secret name. The ciphertext is bound to the
// app and name, so a sealed value moved to another row will not open.
func (k *Keyring) Seal(app, name, value string) (keyID string, sealed []byte, err error) {
	gcm, err := newGCM(k.keys[k.current])
	if err != nil {
		return "", nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, err
	}
	return k.current, gcm.Seal(nonce, nonce, []byte(value), aad(app, name)), nil
}

// Open decrypts a value sealed by Seal.
func (k *Keyring) Open(app, name, keyID string, sealed []byte) (string, error) {
	key, ok := k.keys[keyID]
	if !ok {
		return "", fmt.Errorf("secret %s of %s was sealed with key %s, which is missing from %s", name, app, keyID, k.dir)
	}
	gcm, err := newGCM(key)
	if err != nil {
		return "", err
	}
	if len(sealed) < gcm.NonceSize() {
		return "", errors.New("sealed secret is truncated")
	}
	plain, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], aad(app, name))
	if err != nil {
		return "", fmt.Errorf("secret %s of %s does not decrypt: %w", name, app, err)
	}
	return string(plain), nil
}

// Digest is a short keyed fingerprint of a value: it shows whether a secret
// changed without letting anyone guess short values offline.
func (k *Keyring) Digest(app, name, value string) string {
	m := hmac.New(sha256.New, k.keys[k.current])
	m.Write(aad(app, name))
	m.Write([]byte(value))
	return hex.EncodeToString(m.Sum(nil))[:16]
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
