package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// memStore is an in-memory Store.
type memStore struct {
	mu    sync.Mutex
	data  []byte
	saves int
	fail  error
}

func (s *memStore) Load(context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.data), nil
}

func (s *memStore) Save(_ context.Context, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.data = bytes.Clone(data)
	s.saves++
	return nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newAuthority opens an Authority on a fresh memStore with a fake clock.
func newAuthority(t testing.TB, opts Options) (*Authority, *clock, *memStore) {
	t.Helper()
	c := &clock{now: time.Now().Truncate(time.Second)}
	st := &memStore{}
	opts.Now, opts.Log = c.Now, quiet()
	a, err := Open(context.Background(), st, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a, c, st
}

func mustCert(t testing.TB, a *Authority, app string) [][]byte {
	t.Helper()
	c, err := a.Certificate(a.AppID(app))
	if err != nil {
		t.Fatal(err)
	}
	return c.Certificate
}

func TestCertificate(t *testing.T) {
	a, c, _ := newAuthority(t, Options{})
	id := a.AppID("web")
	if got, want := id.String(), "spiffe://pier.internal/app/web"; got != want {
		t.Fatalf("AppID = %s, want %s", got, want)
	}
	cert, err := a.Certificate(id)
	if err != nil {
		t.Fatal(err)
	}

	// Verifiable by go-spiffe alone, against the published bundle.
	got, chains, err := x509svid.ParseAndVerify(cert.Certificate, a.Bundle(), x509svid.WithTime(c.Now()))
	if err != nil {
		t.Fatalf("x509svid.ParseAndVerify: %v", err)
	}
	if got != id || len(chains) != 1 || len(chains[0]) != 3 {
		t.Errorf("ParseAndVerify = %s with %d chains, want %s with one chain leaf→issuer→anchor", got, len(chains), id)
	}
	if got, err := a.Verify(cert.Certificate); err != nil || got != id {
		t.Errorf("Verify = %s, %v; want %s", got, err, id)
	}

	leaf := cert.Leaf
	if len(cert.Certificate) != 2 || !bytes.Equal(leaf.Raw, cert.Certificate[0]) {
		t.Errorf("chain has %d certificates, want leaf (as Leaf) + issuer", len(cert.Certificate))
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames) != 0 {
		t.Errorf("SANs = URIs %v DNS %v, want only the URI %s", leaf.URIs, leaf.DNSNames, id)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key is %T, want ECDSA P-256", leaf.PublicKey)
	}
	if !cert.PrivateKey.(*ecdsa.PrivateKey).PublicKey.Equal(leaf.PublicKey) {
		t.Error("private key does not match the leaf")
	}
	if got := leaf.NotAfter.Sub(c.Now()); got != DefaultLeafTTL {
		t.Errorf("lifetime = %s, want %s", got, DefaultLeafTTL)
	}
	if got := c.Now().Sub(leaf.NotBefore); got != clockSkew {
		t.Errorf("NotBefore backdated by %s, want %s", got, clockSkew)
	}
	eku := leaf.ExtKeyUsage
	if len(eku) != 2 || eku[0] != x509.ExtKeyUsageServerAuth || eku[1] != x509.ExtKeyUsageClientAuth || leaf.IsCA {
		t.Errorf("ExtKeyUsage = %v, IsCA = %v; want server+client auth, not a CA", eku, leaf.IsCA)
	}
	if len(leaf.SerialNumber.Bytes()) < 8 {
		t.Errorf("serial %x looks too short for a 128-bit random number", leaf.SerialNumber)
	}
	ci, ok := a.Issued(id)
	if !ok || ci.SPIFFEID != id.String() || ci.Serial != serial(leaf) {
		t.Errorf("Issued = %+v, %v", ci, ok)
	}
	if _, ok := a.Issued(a.AppID("api")); ok {
		t.Error("Issued reports a certificate for an app that never asked for one")
	}

	otherTD := spiffeid.RequireTrustDomainFromString("other.internal")
	for _, bad := range []spiffeid.ID{{}, AppID(otherTD, "web"), a.AppID("no/slash")} {
		if _, err := a.Certificate(bad); err == nil {
			t.Errorf("Certificate(%q) succeeded", bad)
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	a, c, _ := newAuthority(t, Options{})
	other, _, _ := newAuthority(t, Options{})
	foreign, _, _ := newAuthority(t, Options{TrustDomain: "other.internal"})

	tests := []struct {
		name  string
		chain func() [][]byte
		later time.Duration
	}{
		{"other anchor, same trust domain", func() [][]byte { return mustCert(t, other, "web") }, 0},
		{"other trust domain", func() [][]byte { return mustCert(t, foreign, "web") }, 0},
		{"expired", func() [][]byte { return mustCert(t, a, "web") }, DefaultLeafTTL + time.Second},
		{"leaf without its issuer", func() [][]byte { return mustCert(t, a, "api")[:1] }, 0},
		{"empty", func() [][]byte { return nil }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain := tt.chain()
			c.Advance(tt.later)
			if id, err := a.Verify(chain); err == nil {
				t.Errorf("Verify accepted %s", id)
			}
		})
	}
}

func TestCertificateCache(t *testing.T) {
	a, c, _ := newAuthority(t, Options{LeafTTL: time.Hour})
	id := a.AppID("web")
	first, _ := a.Certificate(id)
	c.Advance(30*time.Minute - time.Second)
	if again, _ := a.Certificate(id); again != first {
		t.Error("certificate reissued before half its lifetime")
	}
	c.Advance(time.Second)
	renewed, err := a.Certificate(id)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Error("certificate not renewed at half its lifetime")
	}
	if _, err := a.Verify(first.Certificate); err != nil {
		t.Errorf("previous certificate no longer verifies before it expires: %v", err)
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"defaults", Options{}, true},
		{"one-minute leaves", Options{LeafTTL: time.Minute}, true},
		{"leaf TTL under a minute", Options{LeafTTL: 59 * time.Second}, false},
		{"long leaves raise the default issuer TTL", Options{LeafTTL: 30 * 24 * time.Hour}, true},
		{"issuer shorter than 3 leaves", Options{LeafTTL: 24 * time.Hour, IssuerTTL: 48 * time.Hour}, false},
		{"anchor shorter than 3 issuers", Options{AnchorTTL: 60 * 24 * time.Hour}, false},
		{"server TTL under a minute", Options{ServerTTL: time.Second}, false},
		{"invalid trust domain", Options{TrustDomain: "Not A Domain"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(context.Background(), &memStore{}, tt.opts)
			if (err == nil) != tt.ok {
				t.Errorf("Open: err = %v, want ok = %v", err, tt.ok)
			}
		})
	}
}

func TestRotateIssuer(t *testing.T) {
	ctx := context.Background()
	a, c, st := newAuthority(t, Options{})
	id := a.AppID("web")
	old, _ := a.Certificate(id)
	before := a.Status()
	saves := st.saves

	if err := a.RotateIssuer(ctx); err != nil {
		t.Fatal(err)
	}
	if st.saves != saves+1 {
		t.Errorf("rotation saved %d times, want once", st.saves-saves)
	}
	fresh, _ := a.Certificate(id)
	if bytes.Equal(fresh.Certificate[1], old.Certificate[1]) {
		t.Error("leaf after rotation still comes from the old issuer")
	}
	for name, chain := range map[string][][]byte{"old": old.Certificate, "new": fresh.Certificate} {
		if _, err := a.Verify(chain); err != nil {
			t.Errorf("%s leaf does not verify: %v", name, err)
		}
	}

	newIssuer, err := x509.ParseCertificate(fresh.Certificate[1])
	if err != nil {
		t.Fatal(err)
	}
	s := a.Status()
	if s.Issuer.Serial == before.Issuer.Serial || s.Issuer.Serial != serial(newIssuer) {
		t.Errorf("Status issuer = %s, want the new issuer", s.Issuer.Serial)
	}
	if len(s.PreviousIssuers) != 1 || s.PreviousIssuers[0].Serial != before.Issuer.Serial {
		t.Errorf("Status previous issuers = %+v, want the old issuer", s.PreviousIssuers)
	}
	if len(s.Anchors) != 1 || s.Anchors[0] != before.Anchors[0] {
		t.Error("issuer rotation changed the anchors")
	}

	// The retired issuer is forgotten once its leaves have expired.
	c.Advance(DefaultLeafTTL + overlapMargin)
	if err := a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Status().PreviousIssuers); n != 0 {
		t.Errorf("%d previous issuers after their leaves expired, want 0", n)
	}
}

func TestRotateAnchor(t *testing.T) {
	ctx := context.Background()
	a, c, _ := newAuthority(t, Options{})
	id := a.AppID("web")
	old, _ := a.Certificate(id)
	oldAnchor := a.Status().Anchors[0]

	if err := a.RotateAnchor(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("bundle has %d anchors during the overlap, want 2", n)
	}
	if n := bytes.Count(a.AnchorsPEM(), []byte("BEGIN CERTIFICATE")); n != 2 {
		t.Errorf("AnchorsPEM has %d certificates, want 2", n)
	}
	fresh, _ := a.Certificate(id)
	if bytes.Equal(fresh.Certificate[1], old.Certificate[1]) {
		t.Error("leaf after anchor rotation still comes from the old issuer")
	}
	s := a.Status()
	if s.Anchors[0].Serial != oldAnchor.Serial || s.Issuer.Serial == "" || len(s.PreviousIssuers) != 1 {
		t.Errorf("Status after anchor rotation = %+v", s)
	}

	// During the overlap both chains verify; Maintain keeps the old anchor.
	c.Advance(DefaultLeafTTL / 2)
	if err := a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	for name, chain := range map[string][][]byte{"old": old.Certificate, "new": fresh.Certificate} {
		if _, err := a.Verify(chain); err != nil {
			t.Errorf("%s leaf does not verify during the overlap: %v", name, err)
		}
	}
	if n := len(a.Status().Anchors); n != 2 {
		t.Fatalf("old anchor pruned during the overlap")
	}

	// Once everything signed under it has expired, the old anchor goes.
	c.Advance(DefaultLeafTTL/2 + overlapMargin)
	if err := a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	s = a.Status()
	if len(s.Anchors) != 1 || s.Anchors[0].Serial == oldAnchor.Serial {
		t.Fatalf("anchors after the overlap = %+v, want only the new one", s.Anchors)
	}
	// The old leaf is expired by now anyway; check at a time it was still
	// valid, to show it is the anchor that is no longer trusted.
	during := x509svid.WithTime(old.Leaf.NotBefore.Add(2 * clockSkew))
	if _, _, err := x509svid.ParseAndVerify(old.Certificate, a.Bundle(), during); err == nil {
		t.Error("leaf under the pruned anchor still verifies")
	}
	if _, err := a.Verify(old.Certificate); err == nil {
		t.Error("Verify accepts a leaf under the pruned anchor")
	}
	current, _ := a.Certificate(id)
	if _, err := a.Verify(current.Certificate); err != nil {
		t.Errorf("leaf under the new anchor: %v", err)
	}
}

func TestMaintainRotatesIssuer(t *testing.T) {
	ctx := context.Background()
	a, c, st := newAuthority(t, Options{LeafTTL: time.Hour, IssuerTTL: 30 * time.Hour})
	first := a.Status().Issuer.Serial

	c.Advance(20*time.Hour - time.Second)
	saves := st.saves
	if err := a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Status().Issuer.Serial != first || st.saves != saves {
		t.Fatal("Maintain changed the issuer before 2/3 of its life")
	}
	c.Advance(time.Second)
	if err := a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Status().Issuer.Serial == first || st.saves != saves+1 {
		t.Error("Maintain did not rotate and save the issuer at 2/3 of its life")
	}
}

func TestSaveFailureChangesNothing(t *testing.T) {
	a, _, st := newAuthority(t, Options{})
	before := a.Status()
	cert, _ := a.Certificate(a.AppID("web"))
	st.fail = errors.New("disk full")
	for name, rotate := range map[string]func(context.Context) error{"issuer": a.RotateIssuer, "anchor": a.RotateAnchor} {
		if err := rotate(context.Background()); !errors.Is(err, st.fail) {
			t.Errorf("Rotate%s: err = %v, want the save error", name, err)
		}
	}
	after := a.Status()
	if after.Issuer != before.Issuer || len(after.Anchors) != 1 {
		t.Error("a failed save changed the CA")
	}
	if again, _ := a.Certificate(a.AppID("web")); again != cert {
		t.Error("a failed save emptied the certificate cache")
	}
}

func TestPersistence(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: time.Now().Truncate(time.Second)}
	st := &memStore{}
	opts := Options{Now: c.Now, Log: quiet()}
	a, err := Open(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RotateAnchor(ctx); err != nil {
		t.Fatal(err)
	}
	leaf, _ := a.Certificate(a.AppID("web"))

	b, err := Open(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	sa, sb := a.Status(), b.Status()
	ja, _ := json.Marshal(sa)
	jb, _ := json.Marshal(sb)
	if !bytes.Equal(ja, jb) {
		t.Errorf("reopened CA differs:\n%s\n%s", ja, jb)
	}
	if _, err := b.Verify(leaf.Certificate); err != nil {
		t.Errorf("reopened CA rejects a leaf from before: %v", err)
	}
	if bytes.Contains(ja, []byte("LeafTTL")) || !bytes.Contains(ja, []byte(`"previous_issuers"`)) {
		t.Errorf("status JSON is not snake_case: %s", ja)
	}

	_, err = Open(ctx, st, Options{TrustDomain: "other.internal", Log: quiet()})
	if !errors.Is(err, ErrTrustDomainMismatch) {
		t.Errorf("Open with another trust domain: err = %v, want ErrTrustDomainMismatch", err)
	}
}

func TestServerCertificate(t *testing.T) {
	a, c, _ := newAuthority(t, Options{})
	cert, err := a.ServerCertificate("*.localhost", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web.localhost", "localhost", "127.0.0.1"} {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{
			DNSName:       name,
			Roots:         a.Pool(),
			Intermediates: intermediates(cert.Certificate[1:]),
			CurrentTime:   c.Now(),
		})
		if err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if len(cert.Leaf.URIs) != 0 {
		t.Errorf("server certificate has URI SANs %v", cert.Leaf.URIs)
	}
	if got := cert.Leaf.NotAfter.Sub(c.Now()); got != DefaultServerTTL {
		t.Errorf("lifetime = %s, want %s", got, DefaultServerTTL)
	}
	if same, _ := a.ServerCertificate("LOCALHOST", "127.0.0.1", "*.localhost."); same != cert {
		t.Error("the same names in another order or case got another certificate")
	}
	if _, err := a.Verify(cert.Certificate); err == nil {
		t.Error("a server certificate passes as a workload identity")
	}
	for _, bad := range [][]string{nil, {"a b"}, {"*"}, {"x.*.localhost"}, {"-x.localhost"}} {
		if _, err := a.ServerCertificate(bad...); err == nil {
			t.Errorf("ServerCertificate(%q) succeeded", bad)
		}
	}
}

func intermediates(ders [][]byte) *x509.CertPool {
	p := x509.NewCertPool()
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			panic(err)
		}
		p.AddCert(c)
	}
	return p
}

func TestConcurrentCertificateAndRotation(t *testing.T) {
	ctx := context.Background()
	a, c, _ := newAuthority(t, Options{LeafTTL: time.Hour})
	ids := []spiffeid.ID{a.AppID("web"), a.AppID("api"), a.AppID("worker")}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cert, err := a.Certificate(ids[(g+i)%len(ids)])
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := a.Verify(cert.Certificate); err != nil {
					t.Errorf("handed-out certificate does not verify: %v", err)
					return
				}
				if i%50 == 0 {
					a.Status()
					a.ServerCertificate("*.localhost")
				}
			}
		})
	}
	for i := range 20 {
		rotate := a.RotateIssuer
		if i%5 == 4 {
			rotate = a.RotateAnchor
		}
		if err := rotate(ctx); err != nil {
			t.Error(err)
		}
		c.Advance(time.Minute)
		if err := a.Maintain(ctx); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func BenchmarkCertificateCached(b *testing.B) {
	a, _, _ := newAuthority(b, Options{})
	id := a.AppID("web")
	if _, err := a.Certificate(id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Certificate(id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Verify remembers accepted chains, but never past their expiry or a
// change of the CA.
func TestVerifyCacheRespectsExpiryAndRotation(t *testing.T) {
	a, clk, _ := newAuthority(t, Options{LeafTTL: time.Hour})
	raw := mustCert(t, a, "web")
	for range 2 { // the second time from the cache
		if id, err := a.Verify(raw); err != nil || id != a.AppID("web") {
			t.Fatalf("verify: %v %v", id, err)
		}
	}
	clk.Advance(2 * time.Hour)
	if _, err := a.Verify(raw); err == nil {
		t.Fatal("an expired chain verified from the cache")
	}
}
