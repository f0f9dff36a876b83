package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// registryFetcher reads blobs of one repository from its registry.
type registryFetcher struct {
	ref  name.Reference // as asked for, for messages
	repo name.Repository
	opts []remote.Option
}

func (s *Store) resolveRemote(ctx context.Context, repo, id string) (*resolved, error) {
	ref, err := name.ParseReference(repo + refSep(id) + id)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", repo, err, ErrBadRef)
	}
	kc := s.Keychain
	if kc == nil {
		kc = anonymous{}
	}
	f := registryFetcher{ref: ref, repo: ref.Context(), opts: []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithPlatform(wantPlatform()),
	}}
	desc, err := remote.Get(ref, f.opts...)
	if err != nil {
		return nil, f.explain(err)
	}
	return resolve(ctx, f, desc.Digest, desc.Manifest)
}

func refSep(id string) string {
	if _, err := v1.NewHash(id); err == nil {
		return "@"
	}
	return ":"
}

func (f registryFetcher) manifest(_ context.Context, d v1.Hash) ([]byte, error) {
	desc, err := remote.Get(f.repo.Digest(d.String()), f.opts...)
	if err != nil {
		return nil, f.explain(err)
	}
	if desc.Digest != d {
		return nil, fmt.Errorf("registry returned manifest %s for %s: %w", desc.Digest, d, ErrInvalid)
	}
	return desc.Manifest, nil
}

func (f registryFetcher) config(ctx context.Context, d v1.Hash) ([]byte, error) {
	rc, err := f.layer(d)()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readVerified(rc, d, maxConfigSize)
}

func (f registryFetcher) layer(d v1.Hash) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		l, err := remote.Layer(f.repo.Digest(d.String()), f.opts...)
		if err != nil {
			return nil, f.explain(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil, f.explain(err)
		}
		return rc, nil
	}
}

// explain turns a failed registry request into an error that says what to
// do next.
func (f registryFetcher) explain(err error) error {
	reg := f.repo.RegistryStr()
	var terr *transport.Error
	if errors.As(err, &terr) {
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("registry %s has no %s: check the name and tag: %v: %w", reg, f.repo, err, ErrNotFound)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("registry %s refused access to %s: log in (credentials come from Store.Keychain) or check the name: %v", reg, f.repo, err)
			}
		}
		return fmt.Errorf("registry %s: %w", reg, err)
	}
	if unreachable(err) {
		return fmt.Errorf("registry %s is unreachable (%v): this machine may have no access to it; "+
			"copy the image where a registry is reachable and bring it here as a file, e.g. "+
			"`skopeo copy docker://%s oci-archive:image.tar` then use oci-archive:image.tar "+
			"(or oci:DIR, or docker-archive:FILE from `docker save`): %w", reg, rootCause(err), f.ref, ErrUnreachable)
	}
	return fmt.Errorf("registry %s: %w", reg, err)
}

// unreachable tells network failures (nothing answered) from answers.
func unreachable(err error) bool {
	var (
		op  *net.OpError
		dns *net.DNSError
		ue  *url.Error
	)
	switch {
	case errors.As(err, &op), errors.As(err, &dns),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	case errors.As(err, &ue):
		return ue.Timeout()
	}
	return false
}

func rootCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns
	}
	return err
}

// anonymous is a keychain that never finds credentials, so that pier reads
// no credential files unless it is given a Keychain.
type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }
