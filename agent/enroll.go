package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/google/go-attestation/attest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/internal/tpmdev"
)

// Bounds on the server's approval poll interval.
const (
	minPollInterval     = time.Second
	maxPollInterval     = 5 * time.Minute
	defaultPollInterval = 5 * time.Second
)

// Enroller enrolls this device's TPM with the enrollment service. It is
// safe to call Enroll again: it keeps a valid certificate and reuses the AK.
type Enroller struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	backoff backoff
}

// New checks cfg and returns an Enroller.
func New(cfg Config) (*Enroller, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: state directory not set")
	}
	if _, err := ParseTPMDevice(cfg.TPM); err != nil {
		return nil, err
	}
	if cfg.Server != "" {
		if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
			return nil, fmt.Errorf("agent: server %q: want HOST:PORT: %w", cfg.Server, err)
		}
	}
	if len(cfg.CABundle) > 0 {
		if !x509.NewCertPool().AppendCertsFromPEM(cfg.CABundle) {
			return nil, errors.New("agent: CA bundle holds no PEM certificate")
		}
	}
	if cfg.RenewBefore < 0 {
		return nil, fmt.Errorf("agent: renew-before %v is negative", cfg.RenewBefore)
	}
	e := &Enroller{cfg: cfg, log: cfg.Logger, now: cfg.Now, backoff: defaultBackoff}
	if e.log == nil {
		e.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if e.now == nil {
		e.now = time.Now
	}
	return e, nil
}

func (e *Enroller) progress(name, deviceID, format string, args ...any) {
	if e.cfg.Progress != nil {
		e.cfg.Progress(Step{Name: name, DeviceID: deviceID, Message: fmt.Sprintf(format, args...)})
	}
}

// renewBefore is the configured renewal margin, or a third of the
// certificate's lifetime.
func (e *Enroller) renewBefore(cert *x509.Certificate) time.Duration {
	if e.cfg.RenewBefore > 0 || cert == nil {
		return e.cfg.RenewBefore
	}
	return cert.NotAfter.Sub(cert.NotBefore) / 3
}

// Enroll makes sure the state directory holds a valid device certificate.
// With a complete enrollment whose certificate has more than RenewBefore
// left (and Force unset) it returns at once with AlreadyEnrolled set,
// without touching the TPM or the network. Otherwise it runs the
// enrollment protocol: Begin (polling while the device awaits approval),
// credential activation, a device key created in the TPM and certified by
// the AK with the server's nonce, a quote, Finish; then it stores the
// TPM-wrapped key blob, the certificate and its chain, and state.json.
//
// While the server cannot be reached (gRPC Unavailable) Enroll retries
// with exponential backoff (about 1s doubling to 30s, jittered) until ctx
// is done, reporting a "retry" step each time; a server certificate that
// does not verify against CABundle, and every other refusal, is final.
//
// A failed enrollment leaves the previous one in place. Errors from the
// server are *ServerError values carrying the gRPC code and message.
func (e *Enroller) Enroll(ctx context.Context) (*Result, error) {
	sd, err := OpenStateDir(e.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	unlock, err := sd.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	prev, err := sd.LoadEnrollment()
	if errors.Is(err, ErrNotEnrolled) {
		if err != ErrNotEnrolled {
			e.log.Warn("ignoring incomplete enrollment in the state directory", "dir", sd.Path(), "err", err)
		}
		prev = nil
	} else if err != nil {
		return nil, err
	}
	var prevCert *x509.Certificate
	if prev != nil {
		prevCert = prev.Certificate
	}
	d := Decide(prev, e.now(), e.renewBefore(prevCert), e.cfg.Force)
	if !d.Enroll {
		res := e.result(sd, prev.State, true, false, d.Reason)
		e.progress("already_enrolled", res.DeviceID, "already enrolled as %s; certificate valid until %s (%s left)",
			res.DeviceID, res.NotAfter.Format(time.RFC3339), d.Remaining.Round(time.Second))
		return res, nil
	}
	if e.cfg.Server == "" {
		return nil, errors.New("agent: enrollment server not set")
	}
	e.log.Info("enrolling", "reason", d.Reason, "server", e.cfg.Server, "tpm", e.cfg.TPM)
	st, err := e.enroll(ctx, sd, prev)
	if err != nil {
		return nil, err
	}
	return e.result(sd, *st, false, prev != nil, d.Reason), nil
}

func (e *Enroller) result(sd *StateDir, st State, already, renewed bool, reason string) *Result {
	return &Result{
		DeviceID:        st.DeviceID,
		SPIFFEID:        st.SPIFFEID,
		Serial:          st.Serial,
		NotAfter:        st.NotAfter,
		Server:          st.Server,
		CertPath:        sd.File(CertFile),
		ChainPath:       sd.File(ChainFile),
		KeyPath:         sd.File(KeyFile),
		AlreadyEnrolled: already,
		Renewed:         renewed,
		Reason:          reason,
	}
}

// dial returns a client over server-authenticated TLS 1.3. grpc.NewClient
// connects lazily, on the first call.
func (e *Enroller) dial() (*grpc.ClientConn, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: e.cfg.ServerName}
	if len(e.cfg.CABundle) > 0 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(e.cfg.CABundle)
		tc.RootCAs = pool
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, e.cfg.DialOptions...)
	cc, err := grpc.NewClient(e.cfg.Server, opts...)
	if err != nil {
		return nil, fmt.Errorf("agent: server %s: %w", e.cfg.Server, err)
	}
	return cc, nil
}

func (e *Enroller) enroll(ctx context.Context, sd *StateDir, prev *Enrollment) (*State, error) {
	dev, _ := ParseTPMDevice(e.cfg.TPM) // checked by New
	e.progress("tpm", "", "opening TPM %s", dev)
	tpm, err := tpmdev.Open(ctx, dev.String())
	if err != nil {
		return nil, fmt.Errorf("agent: open TPM %s: %w", dev, err)
	}
	defer tpm.Close()

	eks, err := tpm.EKs()
	if err != nil {
		return nil, fmt.Errorf("agent: read endorsement keys: %w", err)
	}
	ek, err := chooseEK(eks)
	if err != nil {
		return nil, err
	}
	ekDER, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		return nil, fmt.Errorf("agent: encode EK public key: %w", err)
	}
	e.progress("ek", "", "%s", describeEK(ek))

	ak, created, err := loadOrCreateAK(tpm, sd, e.log)
	if err != nil {
		return nil, err
	}
	defer ak.Close(tpm)
	if created {
		e.progress("ak", "", "AK ready (created, ECDSA P-256, saved to %s)", sd.File(AKFile))
	} else {
		e.progress("ak", "", "AK ready (loaded from %s)", sd.File(AKFile))
	}

	facts := e.cfg.Facts
	if facts == nil {
		f := CollectFacts()
		facts = &f
	}
	ap := ak.AttestationParameters()
	begin := &rootgatev1.BeginEnrollmentRequest{
		EkPublic: ekDER,
		Ak: &rootgatev1.AttestationParameters{
			Public:                  ap.Public,
			UseTcsdActivationFormat: ap.UseTCSDActivationFormat,
			CreateData:              ap.CreateData,
			CreateAttestation:       ap.CreateAttestation,
			CreateSignature:         ap.CreateSignature,
		},
		Facts: &rootgatev1.DeviceFacts{
			Hostname:     facts.Hostname,
			Os:           facts.OS,
			Serial:       facts.Serial,
			AgentVersion: facts.AgentVersion,
		},
		EnrollmentToken: e.cfg.Token,
	}
	if ek.Certificate != nil {
		begin.EkCertificate = ek.Certificate.Raw
	}
	cc, ch, err := e.begin(ctx, begin)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	client := rootgatev1.NewEnrollmentServiceClient(cc)
	deviceID := ch.GetDeviceId()
	e.progress("challenge", deviceID, "challenge received (device %s)", deviceID)

	cred := ch.GetCredential()
	secret, err := ak.ActivateCredentialWithEK(tpm, attest.EncryptedCredential{
		Credential: cred.GetCredential(),
		Secret:     cred.GetSecret(),
	}, ek)
	if err != nil {
		return nil, fmt.Errorf("agent: activate credential: %w", err)
	}
	e.progress("activated", "", "credential activated")

	nonce := ch.GetNonce()
	key, err := newDeviceKey(tpm, ak, nonce)
	if err != nil {
		return nil, err
	}
	defer key.Close()
	e.progress("device_key", "", "device key created and certified")

	quote, err := ak.Quote(tpm, nonce, attest.HashSHA256)
	if err != nil {
		return nil, fmt.Errorf("agent: quote PCRs: %w", err)
	}
	pcrs, err := tpm.PCRs(attest.HashSHA256)
	if err != nil {
		return nil, fmt.Errorf("agent: read PCRs: %w", err)
	}
	// A swtpm has no firmware and so no event log; a real TPM's log is sent
	// when the kernel exposes it (reading it usually needs root).
	var eventLog []byte
	if dev.Kind == "device" {
		if eventLog, err = tpm.MeasurementLog(); err != nil {
			e.log.Warn("no measurement log; sending none", "err", err)
			eventLog = nil
		}
	}

	signer, err := keySigner(key)
	if err != nil {
		return nil, err
	}
	spiffeID := ""
	if prev != nil && prev.State.DeviceID == deviceID {
		spiffeID = prev.State.SPIFFEID
	}
	csr, err := newCSR(signer, deviceID, spiffeID)
	if err != nil {
		return nil, err
	}

	cp := key.CertificationParameters()
	finish := &rootgatev1.FinishEnrollmentRequest{
		EnrollmentId:     ch.GetEnrollmentId(),
		ActivationSecret: secret,
		DeviceKey: &rootgatev1.CertificationParameters{
			Public:            cp.Public,
			CreateData:        cp.CreateData,
			CreateAttestation: cp.CreateAttestation,
			CreateSignature:   cp.CreateSignature,
		},
		Quotes:   []*rootgatev1.Quote{{Quote: quote.Quote, Signature: quote.Signature}},
		Pcrs:     pcrsToProto(pcrs),
		EventLog: eventLog,
		Csr:      csr,
	}
	fin, err := client.FinishEnrollment(ctx, finish)
	if err != nil {
		return nil, serverError("FinishEnrollment", e.cfg.Server, err)
	}

	leaf, chain, err := checkIssued(fin, key.Public(), e.now())
	if err != nil {
		return nil, err
	}
	if fin.GetDeviceId() != "" && fin.GetDeviceId() != deviceID {
		return nil, fmt.Errorf("agent: FinishEnrollment: server answered for device %s, not %s", fin.GetDeviceId(), deviceID)
	}
	spiffeID = fin.GetSpiffeId()
	if spiffeID == "" && len(leaf.URIs) > 0 {
		spiffeID = leaf.URIs[0].String()
	}
	keyBlob, err := key.Marshal()
	if err != nil {
		return nil, fmt.Errorf("agent: marshal device key blob: %w", err)
	}
	st := State{
		DeviceID:   deviceID,
		SPIFFEID:   spiffeID,
		Serial:     leaf.SerialNumber.Text(16),
		NotAfter:   leaf.NotAfter.UTC(),
		Server:     e.cfg.Server,
		EnrolledAt: e.now().UTC(),
	}
	if err := sd.SaveEnrollment(st, keyBlob, leaf, chain); err != nil {
		return nil, err
	}
	e.progress("issued", deviceID, "certificate issued: serial %s, valid until %s", st.Serial, st.NotAfter.Format(time.RFC3339))
	e.log.Info("enrolled", "device_id", deviceID, "serial", st.Serial, "not_after", st.NotAfter)
	return &st, nil
}

// begin dials the server and calls BeginEnrollment until it answers with
// a challenge, waiting the server's poll interval while the device awaits
// approval. While the server cannot be reached (gRPC Unavailable: nothing
// listening, a restart, a network outage) it redials with exponential
// backoff until ctx is done, reporting each retry as a "retry" step. Any
// other error, and a server certificate that does not verify, is final.
// The caller closes the returned connection, which Finish must use.
func (e *Enroller) begin(ctx context.Context, req *rootgatev1.BeginEnrollmentRequest) (*grpc.ClientConn, *rootgatev1.BeginEnrollmentResponse, error) {
	announced := false
	var (
		delay    time.Duration // the last backoff delay; 0 after an answer
		attempts int           // consecutive failed attempts
		first    time.Time     // when the server was first found unreachable
	)
	for {
		// A new connection per attempt: a fresh channel connects at once
		// instead of waiting out gRPC's own reconnect backoff.
		cc, err := e.dial()
		if err != nil {
			return nil, nil, err
		}
		resp, err := rootgatev1.NewEnrollmentServiceClient(cc).BeginEnrollment(ctx, req)
		if err != nil {
			cc.Close()
			serr := serverError("BeginEnrollment", e.cfg.Server, err)
			if ctx.Err() != nil || !retryable(err) {
				return nil, nil, serr
			}
			if attempts == 0 {
				first = time.Now()
			}
			attempts++
			delay = e.backoff.next(delay)
			wait := e.backoff.jitter(delay)
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
				return nil, nil, fmt.Errorf("%w; server unreachable, gave up after %d attempts in %s: the deadline comes before the next retry",
					serr, attempts, time.Since(first).Round(time.Second))
			}
			e.log.Debug("server unreachable", "server", e.cfg.Server, "attempt", attempts, "retry_in", wait, "err", err)
			e.progress("retry", "", "server %s unreachable (%s), retrying in %s", e.cfg.Server, shortCause(serr.Message), wait)
			if err := sleep(ctx, wait); err != nil {
				return nil, nil, fmt.Errorf("%w; server unreachable, gave up after %d attempts in %s: %w",
					serr, attempts, time.Since(first).Round(time.Second), err)
			}
			continue
		}
		if attempts > 0 {
			e.log.Info("server reachable again", "server", e.cfg.Server, "attempts", attempts)
			delay, attempts = 0, 0
		}
		switch resp.GetStatus() {
		case rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE:
			if len(resp.GetNonce()) == 0 || resp.GetEnrollmentId() == "" || resp.GetCredential() == nil {
				cc.Close()
				return nil, nil, errors.New("agent: BeginEnrollment: challenge without nonce, enrollment ID or credential")
			}
			return cc, resp, nil
		case rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_PENDING_APPROVAL:
			cc.Close()
			if !announced {
				e.progress("pending", resp.GetDeviceId(), "waiting for approval (device %s)", resp.GetDeviceId())
				announced = true
			}
			wait := defaultPollInterval
			if pi := resp.GetPollInterval(); pi != nil {
				wait = min(max(pi.AsDuration(), minPollInterval), maxPollInterval)
			}
			if err := sleep(ctx, wait); err != nil {
				return nil, nil, fmt.Errorf("agent: waiting for approval of device %s: %w", resp.GetDeviceId(), err)
			}
		default:
			cc.Close()
			return nil, nil, fmt.Errorf("agent: BeginEnrollment: unexpected status %v", resp.GetStatus())
		}
	}
}

// sleep waits d or until ctx is done, returning ctx.Err() in that case.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// backoff is the retry schedule while the server is unreachable: base,
// doubling up to max, each wait jittered by up to a tenth either way.
type backoff struct {
	base, max time.Duration
}

// defaultBackoff retries after about 1s, 2s, 4s, ... then every 30s.
var defaultBackoff = backoff{base: time.Second, max: 30 * time.Second}

// next returns the delay after prev (0 for the first retry).
func (b backoff) next(prev time.Duration) time.Duration {
	if prev <= 0 {
		return b.base
	}
	return min(2*prev, b.max)
}

// jitter spreads d by up to ±10% so that a fleet does not retry in
// lockstep after a server restart, rounded to 100ms for display.
func (b backoff) jitter(d time.Duration) time.Duration {
	spread := int64(d / 5)
	if spread <= 0 {
		return d
	}
	j := d - time.Duration(spread/2) + time.Duration(rand.Int64N(spread+1))
	if j >= 100*time.Millisecond {
		j = j.Round(100 * time.Millisecond)
	}
	return j
}

// retryable reports whether a failed BeginEnrollment is worth retrying:
// Unavailable (the server could not be reached or is restarting), unless
// the TLS handshake failed to verify the server's certificate, which no
// retry fixes. Every other code (PermissionDenied, InvalidArgument,
// FailedPrecondition, ...) is the server's final answer.
func retryable(err error) bool {
	st, _ := status.FromError(err)
	return st.Code() == codes.Unavailable && tlsHint(st.Message()) == ""
}

// tlsHint returns advice for a transport error message that says the
// server's certificate did not verify, or "" for any other message.
func tlsHint(msg string) string {
	switch {
	case strings.Contains(msg, "x509: certificate signed by unknown authority"):
		return "check --ca-bundle: the server's certificate is not signed by it"
	case strings.Contains(msg, "x509: certificate is valid for"), strings.Contains(msg, "x509: certificate is not valid for any names"):
		return "check --server-name: the server's certificate is not issued for that name"
	case strings.Contains(msg, "x509: certificate has expired or is not yet valid"):
		return "the server's certificate has expired or is not yet valid: check both clocks"
	case strings.Contains(msg, "tls: failed to verify certificate"), strings.Contains(msg, "x509: "):
		return "the server's certificate does not verify: check --ca-bundle and --server-name"
	}
	return ""
}

// shortCause is the last clause of a transport error message, e.g.
// "connection refused" from `connection error: desc = "transport: Error
// while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`.
func shortCause(msg string) string {
	msg = strings.TrimRight(strings.TrimSpace(msg), `"`)
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	if msg == "" {
		return "no answer"
	}
	return msg
}

// checkIssued parses the issued certificate and chain and checks that the
// certificate is for the device key and currently valid.
func checkIssued(fin *rootgatev1.FinishEnrollmentResponse, pub crypto.PublicKey, now time.Time) (*x509.Certificate, []*x509.Certificate, error) {
	leaf, err := x509.ParseCertificate(fin.GetCertificate())
	if err != nil {
		return nil, nil, fmt.Errorf("agent: FinishEnrollment: issued certificate: %w", err)
	}
	type equaler interface{ Equal(x crypto.PublicKey) bool }
	if k, ok := leaf.PublicKey.(equaler); !ok || !k.Equal(pub) {
		return nil, nil, errors.New("agent: FinishEnrollment: issued certificate is not for the TPM device key")
	}
	if now.After(leaf.NotAfter) {
		return nil, nil, fmt.Errorf("agent: FinishEnrollment: issued certificate expired at %s", leaf.NotAfter)
	}
	chain := make([]*x509.Certificate, 0, len(fin.GetChain()))
	for i, der := range fin.GetChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("agent: FinishEnrollment: chain certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	if len(chain) > 0 {
		if err := leaf.CheckSignatureFrom(chain[0]); err != nil {
			return nil, nil, fmt.Errorf("agent: FinishEnrollment: certificate not signed by the first chain certificate: %w", err)
		}
	}
	return leaf, chain, nil
}

func pcrsToProto(pcrs []attest.PCR) []*rootgatev1.PCR {
	out := make([]*rootgatev1.PCR, 0, len(pcrs))
	for _, p := range pcrs {
		alg := rootgatev1.HashAlgorithm_HASH_ALGORITHM_UNSPECIFIED
		switch p.DigestAlg {
		case crypto.SHA1:
			alg = rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA1
		case crypto.SHA256:
			alg = rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA256
		case crypto.SHA384:
			alg = rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA384
		case crypto.SHA512:
			alg = rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA512
		}
		out = append(out, &rootgatev1.PCR{Index: uint32(p.Index), Digest: p.Digest, Algorithm: alg})
	}
	return out
}

// ServerError is an error answered by the enrollment service (or by the
// gRPC transport on its behalf): the method, the gRPC code and message.
// status.Code works on it and on errors wrapping it.
type ServerError struct {
	Method  string
	Server  string
	Code    codes.Code
	Message string
	// Hint is advice for a failure the agent can recognise, e.g. a server
	// certificate not signed by the CA bundle.
	Hint string
	err  error
}

func serverError(method, server string, err error) *ServerError {
	st, _ := status.FromError(err)
	se := &ServerError{Method: method, Server: server, Code: st.Code(), Message: st.Message(), err: err}
	if se.Code == codes.Unavailable {
		se.Hint = tlsHint(se.Message)
	}
	return se
}

// Error returns "agent: METHOD to SERVER: CODE: MESSAGE", followed by
// "; HINT" when there is a hint.
func (e *ServerError) Error() string {
	s := fmt.Sprintf("agent: %s to %s: %s: %s", e.Method, e.Server, e.Code, e.Message)
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// Unwrap returns the gRPC error.
func (e *ServerError) Unwrap() error { return e.err }

// GRPCStatus returns the gRPC status, so status.Code(err) works.
func (e *ServerError) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }
