package apps

import (
	"context"
	"io"
	"sort"
	"strings"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/store"
)

// Secrets lists an app's secrets by name and digest.
func (s *Service) Secrets(ctx context.Context, app string) ([]pier.SecretInfo, error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return nil, err
	}
	_, infos, err := s.Store.Secrets(ctx, app)
	return infos, err
}

// SetSecrets seals and stores secrets, then rolls the app so its machines
// see them. Names are checked first: one bad name changes nothing.
func (s *Service) SetSecrets(ctx context.Context, app string, values map[string]string, out io.Writer) (*pier.Release, error) {
	if len(values) == 0 {
		return nil, pier.Errorf(pier.Invalid, "no secrets given; use NAME=VALUE")
	}
	names := make([]string, 0, len(values))
	for n := range values {
		if err := pier.ValidateEnvName(n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	sort.Strings(names)
	sealed := make([]store.SealedSecret, 0, len(values))
	for _, n := range names {
		keyID, box, err := s.Keys.Seal(app, n, values[n])
		if err != nil {
			return nil, err
		}
		sealed = append(sealed, store.SealedSecret{Name: n, KeyID: keyID, Sealed: box, Digest: s.Keys.Digest(app, n, values[n])})
	}
	return s.changeSecrets(ctx, app, "secrets set "+strings.Join(names, ", "), out, func() error {
		return s.Store.PutSecrets(ctx, app, sealed)
	})
}

// UnsetSecrets removes secrets and rolls the app.
func (s *Service) UnsetSecrets(ctx context.Context, app string, names []string, out io.Writer) (*pier.Release, error) {
	if len(names) == 0 {
		return nil, pier.Errorf(pier.Invalid, "no secret names given")
	}
	return s.changeSecrets(ctx, app, "secrets unset "+strings.Join(names, ", "), out, func() error {
		return s.Store.DeleteSecrets(ctx, app, names)
	})
}

func (s *Service) changeSecrets(ctx context.Context, app, desc string, out io.Writer, change func() error) (*pier.Release, error) {
	unlock, err := s.Busy.Lock(ctx, app, "a secrets change")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := s.Store.App(ctx, app); err != nil {
		return nil, err
	}
	if err := change(); err != nil {
		return nil, err
	}
	s.event(ctx, app, "secrets", "%s", desc)
	return s.Reroll(ctx, app, desc, out)
}
