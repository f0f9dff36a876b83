// Package auth owns pier's credentials: the admin token the server creates on
// first start, and the CLI credentials file that lets `pier` commands find
// the API and token of the local server.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// TokenFile is the admin token's file name in the data dir.
const TokenFile = "admin.token"

// LoadOrCreateToken returns the admin token in dataDir, creating it (mode
// 0600) if it does not exist yet.
func LoadOrCreateToken(dataDir string) (string, error) {
	path := filepath.Join(dataDir, TokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if !strings.HasPrefix(tok, "pier_") {
			return "", fmt.Errorf("%s is damaged: delete it to have a new token created", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := "pier_" + hex.EncodeToString(raw)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("create admin token: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(tok + "\n"); err != nil {
		return "", err
	}
	return tok, f.Sync()
}

// Middleware rejects every request without "Authorization: Bearer <token>".
func Middleware(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pier"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"missing or invalid token: send Authorization: Bearer <token> (see pier auth token)"}` + "\n"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, Admin)))
	})
}

// Admin is the name of the one token pier has today, the admin token.
const Admin = "admin"

type principalKey struct{}

// Principal names the holder of the token a request carried: who started
// an operation. Empty outside an authenticated request.
func Principal(ctx context.Context) string {
	p, _ := ctx.Value(principalKey{}).(string)
	return p
}

// Credentials are what the CLI needs to reach a server.
type Credentials struct {
	API   string `json:"api"`
	Token string `json:"token"`
}

// CredentialsPath is the CLI credentials file of the current user.
func CredentialsPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find config dir: %w (set $HOME or $XDG_CONFIG_HOME)", err)
	}
	return filepath.Join(dir, "pier", "credentials.json"), nil
}

// SaveCredentials writes c for the current user (mode 0600).
func SaveCredentials(c Credentials) (string, error) {
	path, err := CredentialsPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// LoadCredentials reads the current user's credentials; ok is false if none
// are saved.
func LoadCredentials() (c Credentials, ok bool, err error) {
	path, err := CredentialsPath()
	if err != nil {
		return c, false, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, false, fmt.Errorf("%s is damaged: %w (restart `pier server` to rewrite it)", path, err)
	}
	return c, true, nil
}
