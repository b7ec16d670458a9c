package enroll

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/inventory"
)

// Mode selects how BeginEnrollment admits a device it has not enrolled
// before. A device already active (same EK) may always re-enroll: it keeps
// its device ID and its new certificate supersedes the old one. A device that
// is rejected, quarantined or revoked is refused in every mode.
type Mode string

// Enrollment modes.
const (
	// ModePreregistered admits only devices an admin registered beforehand
	// by EK fingerprint (state registered).
	ModePreregistered Mode = "preregistered"
	// ModeToken admits a device that presents a valid one-time enrollment
	// token (optionally bound to its EK fingerprint). The token is checked
	// at Begin and consumed at Finish, in the same store transaction that
	// activates the device. A device an admin registered is admitted without
	// a token.
	ModeToken Mode = "token"
	// ModeApproval queues an unknown device for an admin's decision and
	// answers PENDING_APPROVAL until it is approved (then a challenge) or
	// rejected (PermissionDenied).
	ModeApproval Mode = "approval"
)

// ParseMode returns the Mode named by s.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModePreregistered, ModeToken, ModeApproval:
		return m, nil
	}
	return "", fmt.Errorf("enroll: unknown mode %q (want preregistered, token or approval)", s)
}

// Defaults applied by New to zero Config fields.
const (
	DefaultPendingTTL   = time.Minute
	DefaultMaxPending   = 10000
	DefaultPollInterval = 10 * time.Second
	// DefaultMaxEventLog bounds FinishEnrollmentRequest.event_log.
	DefaultMaxEventLog = 512 << 10
)

// MaxMessageSize is the largest request the gRPC server built by
// NewGRPCServer accepts.
const MaxMessageSize = 1 << 20

// Store is the part of the inventory the enrollment service uses;
// *inventory.Store implements it.
type Store interface {
	// GetDeviceByEK returns the device with this EK fingerprint, or an
	// error wrapping inventory.ErrNotFound.
	GetDeviceByEK(ctx context.Context, ekFingerprint string) (*inventory.Device, error)
	// QueueForApproval inserts d as pending if its EK is unknown and
	// returns the stored row.
	QueueForApproval(ctx context.Context, d *inventory.Device) (*inventory.Device, error)
	// CheckToken checks an enrollment token without consuming it.
	CheckToken(ctx context.Context, secret, ekFingerprint string, now time.Time) (*inventory.Token, error)
	// ActivateDevice makes the device active with its new certificate in
	// one transaction, consuming the token if set, and records the
	// acceptance event.
	ActivateDevice(ctx context.Context, a inventory.Activation) (*inventory.Device, error)
	// VoidCertificate marks an issued certificate that was never handed
	// out as revoked, with its audit event, in one transaction.
	VoidCertificate(ctx context.Context, serial, actor, reason string) error
	// RecordEvent appends to the audit trail.
	RecordEvent(ctx context.Context, e inventory.Event) error
}

// Issuer issues device certificates; *ca.Issuer implements it. The
// certificate must be journaled before IssueDevice returns. The service has
// already parsed the CSR, checked its signature and matched its key to the
// TPM-certified key, so it hands the issuer that key, not the CSR again.
type Issuer interface {
	IssueDevice(ctx context.Context, req ca.DeviceRequest) (*ca.Issued, error)
}

// Config configures a Service. Store, Issuer and EKVerifier are required;
// every other zero value has a useful default.
type Config struct {
	// Mode is the admission mode; empty means ModeToken.
	Mode Mode
	// TrustDomain is the SPIFFE trust domain of issued identities; it names
	// the device in FinishEnrollmentResponse.spiffe_id.
	TrustDomain string
	// EKVerifier decides whether an EK is trusted (manufacturer roots or
	// allowlist).
	EKVerifier *attestor.EKVerifier
	// Store is the inventory.
	Store Store
	// Issuer is the CA.
	Issuer Issuer
	// CertLifetime is the requested device certificate lifetime; zero
	// leaves it to the CA's default.
	CertLifetime time.Duration
	// PendingTTL is how long a challenge may be answered (default 1m).
	PendingTTL time.Duration
	// MaxPending caps outstanding challenges (default 10000); past it
	// BeginEnrollment answers ResourceExhausted.
	MaxPending int
	// PollInterval is what a PENDING_APPROVAL answer tells the agent to
	// wait before asking again (default 10s).
	PollInterval time.Duration
	// MaxEventLog bounds the event log a device may send (default 512 KiB).
	MaxEventLog int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Rand is the randomness for challenges, nonces and enrollment IDs
	// (default crypto/rand.Reader).
	Rand io.Reader
	// Logger receives structured logs (default: discarded).
	Logger *slog.Logger
	// Metrics, if set, receives the service's collectors.
	Metrics prometheus.Registerer
}
