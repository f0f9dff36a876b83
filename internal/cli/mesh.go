package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/spf13/cobra"
)

func (e *env) meshCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "Inspect the service mesh's identities and certificate authority",
		Long: `Apps call each other through pier's mesh: app web, connected with
` + "`pier connect web api`" + `, calls http://api.internal; the mesh carries the call
over mutual TLS, each side proving its app's identity with a certificate
(a SPIFFE ID such as spiffe://pier.internal/app/web), and lets it through
only if a connection allows it. pier runs the certificate authority: no key
ever enters a machine, and certificates are renewed automatically.`,
		Example: `  pier mesh identity web
  pier mesh status
  pier mesh rotate`,
	}
	cmd.AddCommand(e.meshIdentityCmd(), e.meshStatusCmd(), e.meshRotateCmd())
	return cmd
}

func (e *env) meshIdentityCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "identity [APP]",
		Short: "Show an app's mesh identity and the certificate its calls carry",
		Long: `Show APP's SPIFFE ID and its current certificate: serial, expiry (it is
renewed at half its life), the issuer that signed it, the trust domain, and
the machines whose calls carry it. All machines of an app share one
identity; the mesh proxy holds the key for them.`,
		Example: `  pier mesh identity web
  pier mesh identity web --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient(args...)
			if err != nil {
				return err
			}
			id, err := c.MeshIdentity(cmd.Context(), app)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, id)
			}
			return writeIdentity(e.stdout, id, time.Now())
		},
	}
	e.addAppFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) meshStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the mesh's certificate authority: anchors, issuer, lifetimes",
		Long: `Show the mesh's certificate authority. It has three levels:

  trust anchors     root certificates every proxy trusts (years); the last
                    one signs issuers, older ones stay trusted during a rotation
  issuer            signs apps' certificates (days); rotated automatically
                    after 2/3 of its life
  app certificates  one per app, valid for the leaf TTL, renewed at half of it

Previous issuers are listed while certificates they signed may still be in use.`,
		Example: `  pier mesh status
  pier mesh status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			st, err := c.MeshStatus(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, st)
			}
			return writeMeshStatus(e.stdout, st, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) meshRotateCmd() *cobra.Command {
	var anchor, asJSON bool
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the mesh's issuer (or, with --anchor, its trust anchor)",
		Long: `Replace the mesh's issuer with a new one, signed by the current trust
anchor. Calls continue without a failure: open connections keep going, new
handshakes get certificates from the new issuer, and certificates from the
previous one stay valid until they expire (within the leaf TTL).

With --anchor, replace the trust anchor too (and sign a new issuer with it).
Both anchors are trusted during an overlap: the previous one stays trusted
until every certificate signed under it has expired (the leaf TTL plus a few
minutes), then it is dropped. Calls continue during and after; for the same
reason, this is not an instant revocation of the previous anchor.

The issuer also rotates by itself after 2/3 of its life; there is no need to
run this on a schedule.`,
		Example: `  pier mesh rotate
  pier mesh rotate --anchor`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			st, err := c.RotateMesh(cmd.Context(), anchor)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, st)
			}
			writeRotated(e.stdout, st, anchor, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&anchor, "anchor", false, "rotate the trust anchor too (the previous one stays trusted until its certificates expire)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new state of the authority as JSON")
	return cmd
}

// writeIdentity writes an app's identity, with times in now's location.
func writeIdentity(w io.Writer, id control.Identity, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "App\t%s\n", id.App)
	fmt.Fprintf(tw, "SPIFFE ID\t%s\n", id.SPIFFEID)
	fmt.Fprintf(tw, "Certificate\tserial %s, valid until %s\n", id.Certificate.Serial, expiry(id.Certificate.NotAfter, now))
	fmt.Fprintf(tw, "Issuer\tserial %s\n", id.Authority.Issuer.Serial)
	fmt.Fprintf(tw, "Trust domain\t%s\n", id.TrustDomain)
	machines := "none running"
	if len(id.Machines) > 0 {
		var ms []string
		for _, m := range id.Machines {
			ms = append(ms, fmt.Sprintf("%s (%s)", m.ID, m.State))
		}
		machines = strings.Join(ms, ", ")
	}
	fmt.Fprintf(tw, "Machines\t%s\n", machines)
	if err := tw.Flush(); err != nil {
		return err
	}
	if !id.Mesh {
		fmt.Fprintln(w, "\nNote: this server has no mesh data plane (it runs apps as host processes): app-to-app calls need the runc runtime (see `pier server --help`).")
	}
	return nil
}

// writeMeshStatus writes the authority's state, with times in now's
// location.
func writeMeshStatus(w io.Writer, st identity.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Trust domain\t%s\n", st.TrustDomain)
	fmt.Fprintf(tw, "Leaf TTL\t%s (app certificates; renewed at half of it)\n", shortDuration(st.LeafTTL))
	fmt.Fprintf(tw, "Issuer\t%s\n", certLine(st.Issuer, now))
	fmt.Fprintf(tw, "Anchors\t(oldest first; the last one signs issuers)\n")
	for _, a := range st.Anchors {
		fmt.Fprintf(tw, "  \t%s\n", certLine(a, now))
	}
	if len(st.PreviousIssuers) == 0 {
		fmt.Fprintf(tw, "Previous issuers\tnone\n")
	} else {
		fmt.Fprintf(tw, "Previous issuers\t(certificates they signed may still be in use)\n")
		for _, p := range st.PreviousIssuers {
			fmt.Fprintf(tw, "  \t%s\n", certLine(p, now))
		}
	}
	return tw.Flush()
}

// writeRotated says what a rotation changed and that calls go on.
func writeRotated(w io.Writer, st identity.Status, anchor bool, now time.Time) {
	ttl := shortDuration(st.LeafTTL)
	if anchor && len(st.Anchors) > 0 {
		fmt.Fprintln(w, "Rotated the mesh's trust anchor, and signed a new issuer with it:")
		fmt.Fprintf(w, "  new anchor  %s\n", certLine(st.Anchors[len(st.Anchors)-1], now))
		fmt.Fprintf(w, "  new issuer  %s\n", certLine(st.Issuer, now))
		fmt.Fprintf(w, "Calls continue. During the overlap every proxy trusts both anchors; the\n"+
			"previous one is dropped once every certificate signed under it has expired\n"+
			"(within %s, the leaf TTL, plus a few minutes).\n", ttl)
		return
	}
	fmt.Fprintln(w, "Rotated the mesh's issuer:")
	fmt.Fprintf(w, "  new issuer  %s\n", certLine(st.Issuer, now))
	fmt.Fprintf(w, "Calls continue. Open connections keep going, new handshakes get certificates\n"+
		"from the new issuer, and those from the previous one stay valid until they\n"+
		"expire (within %s, the leaf TTL).\n", ttl)
}

// certLine is a certificate's serial and expiry.
func certLine(c identity.CertInfo, now time.Time) string {
	return fmt.Sprintf("%s, expires %s", c.Serial, expiry(c.NotAfter, now))
}

// expiry is t in now's location with the time left.
func expiry(t, now time.Time) string {
	return fmt.Sprintf("%s (%s)", t.In(now.Location()).Format("2006-01-02 15:04 MST"), timeLeft(t.Sub(now)))
}

// timeLeft says how long until an expiry, coarser as it is further.
func timeLeft(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d <= 0:
		return "expired"
	case d < time.Hour:
		return fmt.Sprintf("%dm left", int(d/time.Minute))
	case d < 2*day:
		return fmt.Sprintf("%dh%02dm left", int(d/time.Hour), int(d%time.Hour/time.Minute))
	case d < 2*365*day:
		return fmt.Sprintf("%d days left", int(d/day))
	}
	return fmt.Sprintf("%d years left", int(d/(365*day)))
}
