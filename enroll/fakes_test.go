package enroll

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/inventory"
)

// fakeEvidence stands in for the attestor: an EK is trusted when its
// fingerprint is in trusted; the "credential" is the secret in the clear;
// a certification or quote is valid when its attestation bytes are the
// nonce.
type fakeEvidence struct {
	mu      sync.Mutex
	trusted map[string]bool
}

func (f *fakeEvidence) trust(fp string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.trusted[fp] = true
}

func (f *fakeEvidence) verifyEK(ekPub crypto.PublicKey, _ []byte, _ [][]byte, _ time.Time) (*attestor.EKResult, error) {
	fp, err := attestor.EKFingerprint(ekPub)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.trusted[fp] {
		return nil, fmt.Errorf("%w: EK %s neither certified nor allowlisted", attestor.ErrEKUntrusted, fp)
	}
	return &attestor.EKResult{}, nil
}

func (f *fakeEvidence) verifyAK(_ crypto.PublicKey, ak attest.AttestationParameters) error {
	switch string(ak.Public) {
	case "bad-ak":
		return fmt.Errorf("%w: not a restricted key", attestor.ErrAKInvalid)
	case "garbage":
		return fmt.Errorf("%w: AK public: truncated", attestor.ErrMalformed)
	}
	return nil
}

func (f *fakeEvidence) newChallenge(r io.Reader, _ crypto.PublicKey, _ attest.AttestationParameters) ([]byte, *attest.EncryptedCredential, error) {
	secret := make([]byte, 32)
	if _, err := io.ReadFull(r, secret); err != nil {
		return nil, nil, err
	}
	return secret, &attest.EncryptedCredential{Credential: bytes.Clone(secret), Secret: []byte("sealed")}, nil
}

func (f *fakeEvidence) checkSecret(want, got []byte) error {
	if !bytes.Equal(want, got) {
		return fmt.Errorf("%w: activation secret does not match", attestor.ErrActivation)
	}
	return nil
}

func (f *fakeEvidence) verifyCertification(_ []byte, cp attest.CertificationParameters, nonce []byte, csrPub crypto.PublicKey) (crypto.PublicKey, error) {
	if string(cp.Public) == "other-key" {
		return nil, fmt.Errorf("%w: CSR key is not the certified key", attestor.ErrKeyMismatch)
	}
	if !bytes.Equal(cp.CreateAttestation, nonce) {
		return nil, fmt.Errorf("%w: certification qualifying data", attestor.ErrNonce)
	}
	return csrPub, nil
}

func (f *fakeEvidence) verifyQuote(_ []byte, quotes []attest.Quote, pcrs []attest.PCR, nonce []byte) ([]attest.PCR, error) {
	if !bytes.Equal(quotes[0].Quote, nonce) {
		return nil, fmt.Errorf("%w: quote nonce", attestor.ErrQuote)
	}
	return pcrs, nil
}

// fakeStore is an in-memory inventory with the semantics enroll relies on.
type fakeStore struct {
	mu      sync.Mutex
	devices map[string]*inventory.Device // by EK fingerprint
	tokens  map[string]*fakeToken        // by secret
	certs   map[string]string            // serial -> status
	reasons map[string]string            // serial -> status reason
	events  []inventory.Event
	failGet error
	// failEvent, when set, fails RecordEvent for events of its type.
	failEvent string
	// failActivate, when set, runs first in ActivateDevice; its error
	// refuses the activation, as a concurrent Finish or admin would
	// between readmit and activation.
	failActivate func() error
}

type fakeToken struct {
	tok     inventory.Token
	used    bool
	revoked bool
}

func newFakeStore() *fakeStore {
	return &fakeStore{devices: map[string]*inventory.Device{}, tokens: map[string]*fakeToken{},
		certs: map[string]string{}, reasons: map[string]string{}}
}

func (s *fakeStore) RecordIssuance(_ context.Context, rec ca.IssuanceRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.certs[rec.Serial] = "issued"
	return nil
}

func (s *fakeStore) GetDeviceByEK(_ context.Context, fp string) (*inventory.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failGet != nil {
		return nil, s.failGet
	}
	d, ok := s.devices[fp]
	if !ok {
		return nil, fmt.Errorf("device %s: %w", fp, inventory.ErrNotFound)
	}
	c := *d
	return &c, nil
}

func (s *fakeStore) QueueForApproval(_ context.Context, d *inventory.Device) (*inventory.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.devices[d.EKFingerprint]; !ok {
		c := *d
		c.State = inventory.StatePending
		s.devices[d.EKFingerprint] = &c
		s.events = append(s.events, inventory.Event{Type: inventory.EventDeviceQueued, DeviceID: d.ID})
	}
	c := *s.devices[d.EKFingerprint]
	return &c, nil
}

func (s *fakeStore) CheckToken(_ context.Context, secret, fp string, now time.Time) (*inventory.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[secret]
	switch {
	case !ok:
		return nil, inventory.ErrTokenNotFound
	case t.revoked:
		return nil, inventory.ErrTokenRevoked
	case t.used:
		return nil, inventory.ErrTokenUsed
	case !now.Before(t.tok.ExpiresAt):
		return nil, inventory.ErrTokenExpired
	case t.tok.EKFingerprint != "" && t.tok.EKFingerprint != fp:
		return nil, inventory.ErrTokenWrongEK
	}
	c := t.tok
	return &c, nil
}

func (s *fakeStore) ActivateDevice(_ context.Context, a inventory.Activation) (*inventory.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failActivate != nil {
		if err := s.failActivate(); err != nil {
			return nil, err
		}
	}
	fp := a.Device.EKFingerprint
	existing := s.devices[fp]
	if existing == nil && a.TokenID == "" {
		return nil, fmt.Errorf("%w: not registered, no token", inventory.ErrInvalidState)
	}
	if existing != nil && existing.State != inventory.StateRegistered && existing.State != inventory.StateActive {
		return nil, fmt.Errorf("%w: state %s", inventory.ErrInvalidState, existing.State)
	}
	if s.certs[a.Serial] != "issued" {
		return nil, fmt.Errorf("certificate %s: %w", a.Serial, inventory.ErrConflict)
	}
	if a.TokenID != "" {
		var found *fakeToken
		for _, t := range s.tokens {
			if t.tok.ID == a.TokenID {
				found = t
			}
		}
		if found == nil || found.used {
			return nil, inventory.ErrTokenUsed
		}
		if found.revoked {
			return nil, inventory.ErrTokenRevoked
		}
		found.used = true
	}
	if existing != nil && existing.CurrentSerial != "" {
		s.certs[existing.CurrentSerial] = "superseded"
	}
	s.certs[a.Serial] = "active"
	d := *a.Device
	d.State = inventory.StateActive
	d.CurrentSerial = a.Serial
	s.devices[fp] = &d
	s.events = append(s.events, inventory.Event{Type: inventory.EventEnrollmentFinish, DeviceID: d.ID,
		EKFingerprint: fp, Outcome: inventory.OutcomeAccepted, Peer: a.Peer})
	c := d
	return &c, nil
}

func (s *fakeStore) VoidCertificate(ctx context.Context, serial, actor, reason string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.certs[serial]
	switch {
	case !ok:
		return fmt.Errorf("certificate %s: %w", serial, inventory.ErrNotFound)
	case st != "issued":
		return fmt.Errorf("certificate %s is %s: %w", serial, st, inventory.ErrConflict)
	}
	s.certs[serial] = "revoked"
	s.reasons[serial] = inventory.VoidReasonPrefix + reason
	s.events = append(s.events, inventory.Event{Type: inventory.EventCertVoided, Outcome: inventory.OutcomeInfo,
		Reason: s.reasons[serial], Actor: actor, Details: map[string]string{"serial": serial}})
	return nil
}

func (s *fakeStore) RecordEvent(_ context.Context, e inventory.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failEvent != "" && e.Type == s.failEvent {
		return errors.New("fake store: audit trail unavailable")
	}
	s.events = append(s.events, e)
	return nil
}

func (s *fakeStore) addToken(secret, id, fp string, expires time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[secret] = &fakeToken{tok: inventory.Token{ID: id, EKFingerprint: fp, ExpiresAt: expires}}
}

func (s *fakeStore) revokeToken(secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[secret].revoked = true
}

func (s *fakeStore) setFailActivate(f func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failActivate = f
}

func (s *fakeStore) certReason(serial string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reasons[serial]
}

func (s *fakeStore) eventsOf(typ string) []inventory.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []inventory.Event
	for _, e := range s.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func (s *fakeStore) setDevice(d inventory.Device) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devices[d.EKFingerprint] = &d
}

func (s *fakeStore) device(fp string) *inventory.Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.devices[fp]; ok {
		c := *d
		return &c
	}
	return nil
}

func (s *fakeStore) refusals() []inventory.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []inventory.Event
	for _, e := range s.events {
		if e.Type == inventory.EventEnrollmentRefused {
			out = append(out, e)
		}
	}
	return out
}

func (s *fakeStore) certStatuses() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]string{}
	for k, v := range s.certs {
		m[k] = v
	}
	return m
}

// failingIssuer wraps an Issuer, counts its calls and can be made to fail.
type failingIssuer struct {
	Issuer
	mu    sync.Mutex
	fail  error
	calls int
}

func (f *failingIssuer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *failingIssuer) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *failingIssuer) IssueDevice(ctx context.Context, req ca.DeviceRequest) (*ca.Issued, error) {
	f.mu.Lock()
	f.calls++
	err := f.fail
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.Issuer.IssueDevice(ctx, req)
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is a Service over fakes with a real software-key CA.
type harness struct {
	svc    *Service
	store  *fakeStore
	ev     *fakeEvidence
	issuer *failingIssuer
	clock  *clock
}

func newHarness(t testing.TB, mode Mode, tweak func(*Config)) *harness {
	t.Helper()
	clk := &clock{t: time.Now()}
	store := newFakeStore()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(context.Background(), key, ca.InitOptions{CommonName: "Test CA"})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.New(key, []*x509.Certificate{res.Certificate}, store, ca.Config{TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	fi := &failingIssuer{Issuer: iss}
	cfg := Config{
		Mode:        mode,
		TrustDomain: "example.org",
		EKVerifier:  &attestor.EKVerifier{},
		Store:       store,
		Issuer:      fi,
		Now:         clk.Now,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ev := &fakeEvidence{trusted: map[string]bool{}}
	svc.ev = ev
	return &harness{svc: svc, store: store, ev: ev, issuer: fi, clock: clk}
}

// fakeDevice is the agent side against fakeEvidence.
type fakeDevice struct {
	ekPub []byte
	fp    string
	id    string
	key   *ecdsa.PrivateKey
}

func newFakeDevice(t testing.TB) *fakeDevice {
	t.Helper()
	ek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(ek.Public())
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := attestor.EKFingerprint(ek.Public())
	id, _ := attestor.DeviceID(ek.Public())
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeDevice{ekPub: der, fp: fp, id: id, key: key}
}

func (d *fakeDevice) begin(token string) *rootgatev1.BeginEnrollmentRequest {
	return &rootgatev1.BeginEnrollmentRequest{
		EkPublic:        d.ekPub,
		Ak:              &rootgatev1.AttestationParameters{Public: []byte("ak"), CreateData: []byte("cd"), CreateAttestation: []byte("ca"), CreateSignature: []byte("cs")},
		Facts:           &rootgatev1.DeviceFacts{Hostname: "host-" + d.id[:6], Os: "linux"},
		EnrollmentToken: token,
	}
}

func (d *fakeDevice) finish(t testing.TB, resp *rootgatev1.BeginEnrollmentResponse) *rootgatev1.FinishEnrollmentRequest {
	t.Helper()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, d.key)
	if err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	return &rootgatev1.FinishEnrollmentRequest{
		EnrollmentId:     resp.GetEnrollmentId(),
		ActivationSecret: resp.GetCredential().GetCredential(),
		DeviceKey: &rootgatev1.CertificationParameters{
			Public: []byte("device-key"), CreateData: []byte("cd"),
			CreateAttestation: resp.GetNonce(), CreateSignature: []byte("sig"),
		},
		Quotes: []*rootgatev1.Quote{{Quote: resp.GetNonce(), Signature: []byte("sig")}},
		Pcrs:   []*rootgatev1.PCR{{Index: 0, Digest: digest, Algorithm: rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA256}},
		Csr:    csr,
	}
}

func hexID(b byte) string { return hex.EncodeToString(bytes.Repeat([]byte{b}, enrollmentIDLen)) }
