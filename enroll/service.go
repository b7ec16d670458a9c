package enroll

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/go-attestation/attest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/inventory"
)

// Request field bounds. TPM structures are a few hundred bytes; the bounds
// leave room and keep hostile input from costing memory or store space.
const (
	maxCertSize     = 16 << 10 // one DER certificate, a CSR
	maxChainLen     = 8        // EK intermediates
	maxTPMStruct    = 8 << 10  // TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE...
	maxFactLen      = 256      // each DeviceFacts string
	maxTokenLen     = 256      // enrollment token
	maxIDLen        = 64       // enrollment_id
	maxSecretLen    = 256      // activation secret
	maxQuotes       = 8        // quotes per request
	maxPCRs         = 128      // PCR values per request (24 PCRs x 4 banks = 96)
	maxPCRIndex     = 31       // highest PCR index accepted
	nonceSize       = 32       // bytes of nonce in a challenge
	enrollmentIDLen = 16       // random bytes in an enrollment_id
)

// eventTimeout bounds writing a refusal event, which outlives the request's
// context so that a caller hanging up does not erase the audit record.
const eventTimeout = 5 * time.Second

// actor names the service in store records.
const actor = "enroll"

// Service implements rootgatev1.EnrollmentServiceServer. It is safe for
// concurrent use; pending challenges live in its memory, so a challenge must
// be answered on the server that issued it.
type Service struct {
	rootgatev1.UnimplementedEnrollmentServiceServer

	cfg     Config
	ev      evidence
	pending *pendingTable
	metrics *metrics
	log     *slog.Logger
}

var _ rootgatev1.EnrollmentServiceServer = (*Service)(nil)

// New returns a Service for cfg, registering its metrics with cfg.Metrics
// when set.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Issuer == nil || cfg.EKVerifier == nil {
		return nil, errors.New("enroll: Config.Store, Issuer and EKVerifier are required")
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeToken
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	if cfg.PendingTTL <= 0 {
		cfg.PendingTTL = DefaultPendingTTL
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.MaxEventLog <= 0 {
		cfg.MaxEventLog = DefaultMaxEventLog
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg:     cfg,
		ev:      attestorEvidence{ek: cfg.EKVerifier},
		pending: newPendingTable(cfg.MaxPending),
		log:     cfg.Logger,
	}
	s.metrics = newMetrics(s.pending.len)
	if cfg.Metrics != nil {
		if err := s.metrics.register(cfg.Metrics); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Mode returns the admission mode in force.
func (s *Service) Mode() Mode { return s.cfg.Mode }

// Pending returns the number of challenges held (expired ones until swept).
func (s *Service) Pending() int { return s.pending.len() }

// call describes one RPC for logs, events and metrics; fields fill in as the
// request is understood.
type call struct {
	method        string
	start         time.Time
	peer          string
	deviceID      string
	ekFingerprint string
}

func newCall(ctx context.Context, method string) *call {
	c := &call{method: method, start: time.Now()}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.peer = p.Addr.String()
	}
	return c
}

// BeginEnrollment checks the EK, admits the device by mode and the AK, and
// answers with a credential-activation challenge and a nonce (status
// CHALLENGE), or with PENDING_APPROVAL in approval mode.
func (s *Service) BeginEnrollment(ctx context.Context, req *rootgatev1.BeginEnrollmentRequest) (*rootgatev1.BeginEnrollmentResponse, error) {
	c := newCall(ctx, "begin")
	resp, err := s.begin(ctx, c, req)
	if err != nil {
		return nil, s.refuse(ctx, c, err)
	}
	outcome := outcomeChallenge
	if resp.Status == rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_PENDING_APPROVAL {
		outcome = outcomePending
	}
	s.metrics.observe(c.method, outcome, codes.OK, c.start)
	return resp, nil
}

// FinishEnrollment checks the answer to a challenge, the device key's
// certification and the quote, issues the device certificate and activates
// the device; only then it returns the certificate chain.
func (s *Service) FinishEnrollment(ctx context.Context, req *rootgatev1.FinishEnrollmentRequest) (*rootgatev1.FinishEnrollmentResponse, error) {
	c := newCall(ctx, "finish")
	resp, err := s.finish(ctx, c, req)
	if err != nil {
		return nil, s.refuse(ctx, c, err)
	}
	s.metrics.observe(c.method, outcomeAccepted, codes.OK, c.start)
	return resp, nil
}

// refuse turns err into the gRPC status the client sees, logs it, records
// an enrollment.refused event and counts it.
func (s *Service) refuse(ctx context.Context, c *call, err error) error {
	code, msg := statusFor(err)
	attrs := []any{"method", c.method, "code", code.String(), "reason", err.Error(), "peer", c.peer}
	if c.deviceID != "" {
		attrs = append(attrs, "device_id", c.deviceID)
	}
	if c.ekFingerprint != "" {
		attrs = append(attrs, "ek_fingerprint", c.ekFingerprint)
	}
	switch code {
	case codes.Internal, codes.Unavailable:
		s.log.Error("enrollment failed", attrs...)
	default:
		s.log.Warn("enrollment refused", attrs...)
	}
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventTimeout)
	defer cancel()
	ev := inventory.Event{
		Type:          inventory.EventEnrollmentRefused,
		DeviceID:      c.deviceID,
		EKFingerprint: c.ekFingerprint,
		Outcome:       inventory.OutcomeRefused,
		Code:          code.String(),
		Reason:        err.Error(),
		Peer:          c.peer,
		Actor:         actor,
		Details:       map[string]string{"method": c.method, "mode": string(s.cfg.Mode)},
	}
	if rerr := s.cfg.Store.RecordEvent(ectx, ev); rerr != nil {
		s.log.Error("recording refusal event failed", append(attrs, "error", rerr.Error())...)
	}
	s.metrics.observe(c.method, outcomeRefused, code, c.start)
	return status.Error(code, msg)
}

func (s *Service) begin(ctx context.Context, c *call, req *rootgatev1.BeginEnrollmentRequest) (*rootgatev1.BeginEnrollmentResponse, error) {
	if err := checkBegin(req); err != nil {
		return nil, err
	}
	ekPub, err := attestor.ParseEKPublic(req.GetEkPublic())
	if err != nil {
		return nil, err
	}
	fp, err := attestor.EKFingerprint(ekPub)
	if err != nil {
		return nil, err
	}
	id, err := attestor.DeviceID(ekPub)
	if err != nil {
		return nil, err
	}
	c.ekFingerprint, c.deviceID = fp, id

	now := s.cfg.Now()
	// Cheap early refusal under a flood, before any public-key work.
	if s.pending.full(now) {
		return nil, errPendingFull
	}
	ekRes, err := s.ev.verifyEK(ekPub, req.GetEkCertificate(), req.GetEkChain(), now)
	if err != nil {
		return nil, err
	}
	ak := akParams(req.GetAk())
	if err := s.ev.verifyAK(ekPub, ak); err != nil {
		return nil, err
	}
	facts := factsOf(req.GetFacts(), ekRes)
	adm, err := s.admit(ctx, c, req, ekPub, facts, now)
	if err != nil {
		return nil, err
	}
	if adm.pending {
		s.log.Info("enrollment pending approval", "device_id", c.deviceID, "peer", c.peer)
		return &rootgatev1.BeginEnrollmentResponse{
			Status:       rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_PENDING_APPROVAL,
			DeviceId:     c.deviceID,
			PollInterval: durationpb.New(s.cfg.PollInterval),
		}, nil
	}

	secret, ec, err := s.ev.newChallenge(s.cfg.Rand, ekPub, ak)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, nonceSize)
	eid := make([]byte, enrollmentIDLen)
	if _, err := io.ReadFull(s.cfg.Rand, nonce); err != nil {
		return nil, fmt.Errorf("enroll: nonce: %w", err)
	}
	if _, err := io.ReadFull(s.cfg.Rand, eid); err != nil {
		return nil, fmt.Errorf("enroll: enrollment ID: %w", err)
	}
	enrollmentID := hex.EncodeToString(eid)
	p := &pending{
		expires:       now.Add(s.cfg.PendingTTL),
		deviceID:      c.deviceID,
		ekFingerprint: fp,
		ekPublic:      ekPub,
		ekPublicDER:   req.GetEkPublic(),
		ekCertificate: req.GetEkCertificate(),
		akPublic:      ak.Public,
		secret:        secret,
		nonce:         nonce,
		tokenID:       adm.tokenID,
		token:         adm.token,
		facts:         facts,
		reenroll:      adm.reenroll,
		peer:          c.peer,
	}
	if err := s.pending.add(enrollmentID, p, now); err != nil {
		return nil, err
	}
	// Every attempt is on the audit trail, also one that is never finished;
	// no challenge goes out that the trail does not show.
	if err := s.cfg.Store.RecordEvent(ctx, inventory.Event{
		Type:          inventory.EventEnrollmentBegin,
		DeviceID:      c.deviceID,
		EKFingerprint: c.ekFingerprint,
		Outcome:       inventory.OutcomeInfo,
		Peer:          c.peer,
		Actor:         actor,
		Details:       beginDetails(s.cfg.Mode, adm),
	}); err != nil {
		_, _ = s.pending.take(enrollmentID, now)
		return nil, fmt.Errorf("enroll: record the challenge on the audit trail: %w", err)
	}
	s.log.Info("enrollment challenge issued", "device_id", c.deviceID, "peer", c.peer, "reenroll", adm.reenroll)
	return &rootgatev1.BeginEnrollmentResponse{
		Status:       rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE,
		DeviceId:     c.deviceID,
		EnrollmentId: enrollmentID,
		Credential:   &rootgatev1.EncryptedCredential{Credential: ec.Credential, Secret: ec.Secret},
		Nonce:        nonce,
		ExpiresAt:    timestamppb.New(p.expires),
	}, nil
}

// admission is the verdict of admit.
type admission struct {
	pending  bool   // answer PENDING_APPROVAL
	reenroll bool   // the device is active already
	tokenID  string // token to consume at Finish
	token    string // its secret, for Finish to check again
}

// admit decides whether the device may proceed to a challenge. It sets
// c.deviceID to the stored device's ID when there is one. In approval mode
// an unknown device is queued.
func (s *Service) admit(ctx context.Context, c *call, req *rootgatev1.BeginEnrollmentRequest, _ crypto.PublicKey, facts map[string]string, now time.Time) (admission, error) {
	return s.decide(ctx, c, req.GetEnrollmentToken(), now, func() (*inventory.Device, error) {
		return s.cfg.Store.QueueForApproval(ctx, &inventory.Device{
			ID:            c.deviceID,
			EKFingerprint: c.ekFingerprint,
			EKPublic:      req.GetEkPublic(),
			EKCertificate: req.GetEkCertificate(),
			State:         inventory.StatePending,
			Facts:         facts,
		})
	})
}

// readmit applies Begin's admission rule again at Finish, once the evidence
// is verified and before anything is issued: what changed since Begin (an
// admin revoked, rejected or quarantined the device or revoked the token,
// the token expired, or another enrollment consumed it) refuses the
// enrollment as Begin would now, with the same code and message, and
// nothing issued. Only a change between this check and ActivateDevice (a
// truly concurrent Finish) gets past it; finish voids the certificate then.
func (s *Service) readmit(ctx context.Context, c *call, p *pending, now time.Time) error {
	adm, err := s.decide(ctx, c, p.token, now, nil)
	if err != nil {
		return err
	}
	if adm.pending {
		return denied("device %s awaits approval", c.deviceID)
	}
	if p.tokenID != "" && adm.tokenID == "" {
		// The device became known since Begin (an admin registered it, or
		// it enrolled concurrently), but ActivateDevice still consumes the
		// token that admitted it: that token must still be usable.
		if _, err := s.checkToken(ctx, c, p.token, now); err != nil {
			return err
		}
	}
	return nil
}

// decide is the admission rule by mode and device state, applied by Begin
// (admit) and again by Finish (readmit). queue puts an unknown device in the
// approval queue and returns the stored row; Finish passes nil, and an
// unknown device in approval mode is then refused.
func (s *Service) decide(ctx context.Context, c *call, token string, now time.Time, queue func() (*inventory.Device, error)) (admission, error) {
	dev, err := s.cfg.Store.GetDeviceByEK(ctx, c.ekFingerprint)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		dev = nil
	case err != nil:
		return admission{}, fmt.Errorf("enroll: look up device: %w", err)
	}
	if dev != nil {
		if dev.ID != c.deviceID {
			s.log.Warn("stored device ID differs from the EK's", "device_id", dev.ID, "derived_id", c.deviceID)
		}
		c.deviceID = dev.ID
		return s.admitKnown(dev)
	}
	switch s.cfg.Mode {
	case ModePreregistered:
		return admission{}, denied("device %s (EK %s) is not registered", c.deviceID, c.ekFingerprint)
	case ModeToken:
		if token == "" {
			return admission{}, denied("enrollment token required")
		}
		id, err := s.checkToken(ctx, c, token, now)
		if err != nil {
			return admission{}, err
		}
		return admission{tokenID: id, token: token}, nil
	case ModeApproval:
		if queue == nil {
			return admission{}, denied("device %s (EK %s) is not in the approval queue", c.deviceID, c.ekFingerprint)
		}
		stored, err := queue()
		if err != nil {
			return admission{}, fmt.Errorf("enroll: queue for approval: %w", err)
		}
		c.deviceID = stored.ID
		return s.admitKnown(stored)
	}
	return admission{}, fmt.Errorf("enroll: unknown mode %q", s.cfg.Mode)
}

// checkToken checks that the token with this secret may admit the caller's
// EK at now, and returns its ID.
func (s *Service) checkToken(ctx context.Context, c *call, secret string, now time.Time) (string, error) {
	tok, err := s.cfg.Store.CheckToken(ctx, secret, c.ekFingerprint, now)
	if err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	return tok.ID, nil
}

// admitKnown decides for a device the store knows, whatever the mode.
func (s *Service) admitKnown(dev *inventory.Device) (admission, error) {
	switch dev.State {
	case inventory.StateActive:
		return admission{reenroll: true}, nil
	case inventory.StateRegistered:
		return admission{}, nil
	case inventory.StatePending:
		if s.cfg.Mode == ModeApproval {
			return admission{pending: true}, nil
		}
		return admission{}, denied("device %s awaits approval", dev.ID)
	}
	return admission{}, denied("device %s is %s", dev.ID, dev.State)
}

func (s *Service) finish(ctx context.Context, c *call, req *rootgatev1.FinishEnrollmentRequest) (*rootgatev1.FinishEnrollmentResponse, error) {
	// Structure first: a malformed request does not use up the challenge.
	if err := checkFinish(req, s.cfg.MaxEventLog); err != nil {
		return nil, err
	}
	quotes, pcrs, err := quoteEvidence(req)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	p, err := s.pending.take(req.GetEnrollmentId(), now)
	if p != nil {
		c.deviceID, c.ekFingerprint = p.deviceID, p.ekFingerprint
	}
	if err != nil {
		return nil, err
	}
	if err := s.ev.checkSecret(p.secret, req.GetActivationSecret()); err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, badRequest("csr is not a PKCS#10 certificate request")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, badRequest("csr signature does not verify")
	}
	dk := req.GetDeviceKey()
	cp := attest.CertificationParameters{
		Public:            dk.GetPublic(),
		CreateData:        dk.GetCreateData(),
		CreateAttestation: dk.GetCreateAttestation(),
		CreateSignature:   dk.GetCreateSignature(),
	}
	devKey, err := s.ev.verifyCertification(p.akPublic, cp, p.nonce, csr.PublicKey)
	if err != nil {
		return nil, err
	}
	verified, err := s.ev.verifyQuote(p.akPublic, quotes, pcrs, p.nonce)
	if err != nil {
		return nil, err
	}
	// The evidence holds; is the device still admitted as it was at Begin?
	if err := s.readmit(ctx, c, p, now); err != nil {
		return nil, err
	}
	issued, err := s.cfg.Issuer.IssueDevice(ctx, ca.DeviceRequest{
		PublicKey:     devKey,
		DeviceID:      p.deviceID,
		EKFingerprint: p.ekFingerprint,
		Lifetime:      s.cfg.CertLifetime,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll: issue certificate: %w", err)
	}
	serial := issued.Certificate.SerialNumber.Text(16)
	if _, err := s.cfg.Store.ActivateDevice(ctx, inventory.Activation{
		Device:  deviceFromPending(p, pcrValuesOf(verified), now),
		Serial:  serial,
		TokenID: p.tokenID,
		Actor:   actor,
		Peer:    p.peer,
	}); err != nil {
		// Refused after issuance (a concurrent Finish consumed the token
		// or changed the device after readmit): the certificate is never
		// handed out, so the journal must not show it as valid.
		s.void(ctx, c, serial, err)
		return nil, fmt.Errorf("enroll: activate device (certificate %s not handed out): %w", serial, err)
	}
	s.log.Info("device enrolled", "device_id", p.deviceID, "serial", serial, "peer", c.peer,
		"reenroll", p.reenroll, "not_after", issued.Certificate.NotAfter)

	chain := make([][]byte, len(issued.Chain))
	for i, cert := range issued.Chain {
		chain[i] = cert.Raw
	}
	spiffeID := ""
	if len(issued.Certificate.URIs) > 0 {
		spiffeID = issued.Certificate.URIs[0].String()
	}
	return &rootgatev1.FinishEnrollmentResponse{
		DeviceId:    p.deviceID,
		Certificate: issued.Certificate.Raw,
		Chain:       chain,
		NotAfter:    timestamppb.New(issued.Certificate.NotAfter),
		SpiffeId:    spiffeID,
	}, nil
}

// void marks the certificate serial, issued for an enrollment that cause
// then refused, as never handed out (revoked in the journal, with a
// certificate.voided event). Like the refusal event, it outlives the
// request's context, bounded by eventTimeout; if it fails, the failure is
// logged and the refusal stands.
func (s *Service) void(ctx context.Context, c *call, serial string, cause error) {
	vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventTimeout)
	defer cancel()
	if err := s.cfg.Store.VoidCertificate(vctx, serial, actor, cause.Error()); err != nil {
		s.log.Error("voiding a certificate not handed out failed", "serial", serial, "device_id", c.deviceID,
			"peer", c.peer, "error", err.Error())
		return
	}
	s.log.Warn("certificate not handed out voided", "serial", serial, "device_id", c.deviceID, "peer", c.peer)
}

// checkBegin bounds and requires BeginEnrollment's fields.
func checkBegin(req *rootgatev1.BeginEnrollmentRequest) error {
	switch {
	case len(req.GetEkPublic()) == 0:
		return badRequest("ek_public is required")
	case len(req.GetEkPublic()) > maxTPMStruct:
		return badRequest("ek_public exceeds %d bytes", maxTPMStruct)
	case len(req.GetEkCertificate()) > maxCertSize:
		return badRequest("ek_certificate exceeds %d bytes", maxCertSize)
	case len(req.GetEkChain()) > maxChainLen:
		return badRequest("ek_chain has more than %d certificates", maxChainLen)
	case req.GetAk() == nil || len(req.GetAk().GetPublic()) == 0:
		return badRequest("ak.public is required")
	case len(req.GetEnrollmentToken()) > maxTokenLen:
		return badRequest("enrollment_token exceeds %d bytes", maxTokenLen)
	}
	for i, der := range req.GetEkChain() {
		if len(der) > maxCertSize {
			return badRequest("ek_chain[%d] exceeds %d bytes", i, maxCertSize)
		}
	}
	ak := req.GetAk()
	for name, b := range map[string][]byte{
		"ak.public": ak.GetPublic(), "ak.create_data": ak.GetCreateData(),
		"ak.create_attestation": ak.GetCreateAttestation(), "ak.create_signature": ak.GetCreateSignature(),
	} {
		if len(b) > maxTPMStruct {
			return badRequest("%s exceeds %d bytes", name, maxTPMStruct)
		}
	}
	f := req.GetFacts()
	for name, v := range map[string]string{
		"facts.hostname": f.GetHostname(), "facts.os": f.GetOs(),
		"facts.serial": f.GetSerial(), "facts.agent_version": f.GetAgentVersion(),
	} {
		if len(v) > maxFactLen {
			return badRequest("%s exceeds %d bytes", name, maxFactLen)
		}
		if !utf8.ValidString(v) {
			return badRequest("%s is not UTF-8", name)
		}
	}
	return nil
}

// checkFinish bounds and requires FinishEnrollment's fields.
func checkFinish(req *rootgatev1.FinishEnrollmentRequest, maxEventLog int) error {
	dk := req.GetDeviceKey()
	switch {
	case req.GetEnrollmentId() == "":
		return badRequest("enrollment_id is required")
	case len(req.GetEnrollmentId()) > maxIDLen:
		return badRequest("enrollment_id exceeds %d bytes", maxIDLen)
	case len(req.GetActivationSecret()) == 0:
		return badRequest("activation_secret is required")
	case len(req.GetActivationSecret()) > maxSecretLen:
		return badRequest("activation_secret exceeds %d bytes", maxSecretLen)
	case dk == nil || len(dk.GetPublic()) == 0 || len(dk.GetCreateAttestation()) == 0 || len(dk.GetCreateSignature()) == 0:
		return badRequest("device_key public, create_attestation and create_signature are required")
	case len(req.GetCsr()) == 0:
		return badRequest("csr is required")
	case len(req.GetCsr()) > maxCertSize:
		return badRequest("csr exceeds %d bytes", maxCertSize)
	case len(req.GetQuotes()) == 0:
		return badRequest("quotes are required")
	case len(req.GetQuotes()) > maxQuotes:
		return badRequest("more than %d quotes", maxQuotes)
	case len(req.GetPcrs()) > maxPCRs:
		return badRequest("more than %d PCR values", maxPCRs)
	case len(req.GetEventLog()) > maxEventLog:
		return badRequest("event_log exceeds %d bytes", maxEventLog)
	}
	for name, b := range map[string][]byte{
		"device_key.public": dk.GetPublic(), "device_key.create_data": dk.GetCreateData(),
		"device_key.create_attestation": dk.GetCreateAttestation(), "device_key.create_signature": dk.GetCreateSignature(),
	} {
		if len(b) > maxTPMStruct {
			return badRequest("%s exceeds %d bytes", name, maxTPMStruct)
		}
	}
	for i, q := range req.GetQuotes() {
		if len(q.GetQuote()) == 0 || len(q.GetSignature()) == 0 {
			return badRequest("quotes[%d] is empty", i)
		}
		if len(q.GetQuote()) > maxTPMStruct || len(q.GetSignature()) > maxTPMStruct {
			return badRequest("quotes[%d] exceeds %d bytes", i, maxTPMStruct)
		}
	}
	return nil
}

// quoteEvidence converts the quotes and PCRs of a Finish request, checking
// each PCR's index, bank and digest length.
func quoteEvidence(req *rootgatev1.FinishEnrollmentRequest) ([]attest.Quote, []attest.PCR, error) {
	quotes := make([]attest.Quote, len(req.GetQuotes()))
	for i, q := range req.GetQuotes() {
		quotes[i] = attest.Quote{Quote: q.GetQuote(), Signature: q.GetSignature()}
	}
	pcrs := make([]attest.PCR, len(req.GetPcrs()))
	for i, p := range req.GetPcrs() {
		h, name, ok := hashOf(p.GetAlgorithm())
		if !ok {
			return nil, nil, badRequest("pcrs[%d]: unsupported algorithm %v", i, p.GetAlgorithm())
		}
		if p.GetIndex() > maxPCRIndex {
			return nil, nil, badRequest("pcrs[%d]: index %d out of range", i, p.GetIndex())
		}
		if len(p.GetDigest()) != h.Size() {
			return nil, nil, badRequest("pcrs[%d]: %s digest is %d bytes, want %d", i, name, len(p.GetDigest()), h.Size())
		}
		pcrs[i] = attest.PCR{Index: int(p.GetIndex()), Digest: p.GetDigest(), DigestAlg: h}
	}
	return quotes, pcrs, nil
}

// pcrValuesOf converts quote-verified PCRs for the store.
func pcrValuesOf(pcrs []attest.PCR) []inventory.PCRValue {
	out := make([]inventory.PCRValue, 0, len(pcrs))
	for _, p := range pcrs {
		name := strings.ToLower(strings.ReplaceAll(p.DigestAlg.String(), "-", ""))
		out = append(out, inventory.PCRValue{Index: p.Index, Alg: name, Digest: p.Digest})
	}
	return out
}

func hashOf(a rootgatev1.HashAlgorithm) (crypto.Hash, string, bool) {
	switch a {
	case rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA1:
		return crypto.SHA1, "sha1", true
	case rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA256:
		return crypto.SHA256, "sha256", true
	case rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA384:
		return crypto.SHA384, "sha384", true
	case rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA512:
		return crypto.SHA512, "sha512", true
	}
	return 0, "", false
}

func akParams(ak *rootgatev1.AttestationParameters) attest.AttestationParameters {
	return attest.AttestationParameters{
		Public:                  ak.GetPublic(),
		UseTCSDActivationFormat: ak.GetUseTcsdActivationFormat(),
		CreateData:              ak.GetCreateData(),
		CreateAttestation:       ak.GetCreateAttestation(),
		CreateSignature:         ak.GetCreateSignature(),
	}
}

// factsOf collects the device's self-reported facts and what the EK
// certificate says about the TPM. Empty values are left out.
func factsOf(f *rootgatev1.DeviceFacts, ek *attestor.EKResult) map[string]string {
	m := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	put("hostname", f.GetHostname())
	put("os", f.GetOs())
	put("serial", f.GetSerial())
	put("agent_version", f.GetAgentVersion())
	if ek != nil {
		put("tpm_manufacturer", ek.Manufacturer)
		put("tpm_model", ek.Model)
		put("tpm_firmware", ek.FirmwareVersion)
	}
	return m
}

// beginDetails are the audit details of an issued challenge.
func beginDetails(mode Mode, adm admission) map[string]string {
	d := map[string]string{"mode": string(mode), "reenroll": strconv.FormatBool(adm.reenroll)}
	if adm.tokenID != "" {
		d["token"] = adm.tokenID
	}
	return d
}
