package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/spf13/cobra"
)

func (e *env) certsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Custom domains of apps, their HTTPS certificates, and the local CA",
		Long: `A custom domain routes to an app and gets a certificate from an ACME CA
(Let's Encrypt unless 'pier server --acme-ca' says otherwise), obtained in the
background and renewed before it expires. Point the domain's DNS at this
server first: the CA checks it over plain HTTP on port 80, which the server's
--http-addr must receive. The server needs --https-addr to serve HTTPS.

On a local --domain (localhost, *.localhost, *.test) apps are served at
https://APP.<domain>/ with certificates from pier's own CA: 'pier certs trust'
prints it, to add to your system's or browser's trust store.`,
	}
	cmd.AddCommand(e.certsAddCmd(), e.certsListCmd(), e.certsRemoveCmd(), e.certsTrustCmd())
	return cmd
}

func (e *env) certsAddCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "add DOMAIN",
		Short: "Route a custom domain to an app and obtain its certificate",
		Long: `Route DOMAIN to the app and obtain its certificate in the background; follow
the progress with 'pier certs list'. DOMAIN is a host name such as
www.example.com: no wildcards, no IP addresses, and none of the server's own
<app>.<domain> names.`,
		Example: `  pier certs add -a web www.example.com
  pier certs list`,
		Args: exactArgs(1, "DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := e.appClient()
			if err != nil {
				return err
			}
			ct, err := c.AddCert(cmd.Context(), app, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s now routes to %s; its certificate is being obtained (see `pier certs list`)\n", ct.Domain, ct.App)
			return nil
		},
	}
	e.addAppFlag(cmd)
	return cmd
}

func (e *env) certsListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List custom domains with the state of their certificates",
		Example: `  pier certs list
  pier certs list --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			list, err := c.Certs(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, list)
			}
			if len(list) == 0 {
				fmt.Fprintln(e.stdout, "No custom domains. Add one with `pier certs add -a APP DOMAIN`.")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOMAIN\tAPP\tSTATUS\tNOT AFTER\tISSUER")
			var problems []pier.Cert
			for _, ct := range list {
				notAfter, issuer := "-", "-"
				if !ct.NotAfter.IsZero() {
					notAfter = ct.NotAfter.Local().Format(time.DateTime)
				}
				if ct.Issuer != "" {
					issuer = ct.Issuer
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ct.Domain, ct.App, ct.Status, notAfter, issuer)
				if ct.Error != "" {
					problems = append(problems, ct)
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, ct := range problems {
				fmt.Fprintf(e.stdout, "\n%s: %s\n", ct.Domain, strings.TrimSpace(ct.Error))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (e *env) certsRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "remove DOMAIN",
		Aliases: []string{"rm"},
		Short:   "Stop routing a custom domain and delete its certificate",
		Example: `  pier certs remove www.example.com`,
		Args:    exactArgs(1, "DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.RemoveCert(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s removed\n", args[0])
			return nil
		},
	}
}

func (e *env) certsTrustCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "trust",
		Short: "Print pier's local CA certificate and how to trust it",
		Long: `Print the certificate of pier's own CA, which certifies https://APP.<domain>/
on a local --domain, with instructions for trusting it. The PEM goes to
stdout and the instructions to stderr, so the output can be redirected to a
file.`,
		Example: `  pier certs trust > pier-ca.pem
  curl --cacert pier-ca.pem https://web.localhost:8443/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			pem, err := c.CertsCA(cmd.Context())
			if err != nil {
				return err
			}
			e.stdout.Write(pem)
			fmt.Fprint(e.stderr, trustHelp)
			return nil
		},
	}
}

const trustHelp = `
Save the certificate above (pier certs trust > pier-ca.pem), then trust it:
  Debian/Ubuntu: sudo cp pier-ca.pem /usr/local/share/ca-certificates/pier-ca.crt && sudo update-ca-certificates
  macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain pier-ca.pem
  Firefox:       Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import
  Chrome/Edge:   use the system's store (above), or Settings > Privacy and security > Security > Manage certificates
  curl:          curl --cacert pier-ca.pem https://APP.localhost:<https port>/
`
