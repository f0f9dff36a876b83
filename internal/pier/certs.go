package pier

import "time"

// Cert is a custom domain routed to an app, with the state of the
// certificate the HTTPS edge serves for it.
type Cert struct {
	Domain string `json:"domain"`
	App    string `json:"app"`
	Status string `json:"status"` // see Cert* constants
	// Error is the latest failure to obtain or renew the certificate; an
	// issued certificate keeps serving while renewal is retried.
	Error     string    `json:"error,omitempty"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	Issuer    string    `json:"issuer,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Certificate statuses.
const (
	CertPending = "pending" // being obtained
	CertIssued  = "issued"  // served
	CertError   = "error"   // obtaining failed; retried with backoff
)
