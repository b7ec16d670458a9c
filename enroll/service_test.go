package enroll

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/inventory"
)

func codeOf(err error) codes.Code { return status.Code(err) }

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if got := codeOf(err); got != want {
		t.Fatalf("%s: code %v (%v), want %v", what, got, err, want)
	}
}

// enroll runs Begin and Finish for d and returns the Finish response.
func (h *harness) enroll(t *testing.T, d *fakeDevice, token string) *rootgatev1.FinishEnrollmentResponse {
	t.Helper()
	ctx := context.Background()
	b, err := h.svc.BeginEnrollment(ctx, d.begin(token))
	if err != nil {
		t.Fatalf("BeginEnrollment: %v", err)
	}
	if b.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE {
		t.Fatalf("BeginEnrollment status %v, want CHALLENGE", b.Status)
	}
	f, err := h.svc.FinishEnrollment(ctx, d.finish(t, b))
	if err != nil {
		t.Fatalf("FinishEnrollment: %v", err)
	}
	return f
}

func TestEnrollTokenMode(t *testing.T) {
	h := newHarness(t, ModeToken, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_secret", "tok1", d.fp, h.clock.Now().Add(time.Hour))

	b, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_secret"))
	if err != nil {
		t.Fatal(err)
	}
	if b.DeviceId != d.id || len(b.Nonce) != nonceSize || b.EnrollmentId == "" || b.Credential == nil {
		t.Fatalf("bad challenge: %+v", b)
	}
	if got := b.ExpiresAt.AsTime(); !got.Equal(h.clock.Now().Add(DefaultPendingTTL)) {
		t.Errorf("expires_at %v, want now+%v", got, DefaultPendingTTL)
	}
	if h.svc.Pending() != 1 {
		t.Errorf("Pending() = %d, want 1", h.svc.Pending())
	}
	f, err := h.svc.FinishEnrollment(context.Background(), d.finish(t, b))
	if err != nil {
		t.Fatal(err)
	}
	if f.DeviceId != d.id || f.SpiffeId != "spiffe://example.org/device/"+d.id || len(f.Chain) != 1 {
		t.Fatalf("bad finish response: id %s spiffe %s chain %d", f.DeviceId, f.SpiffeId, len(f.Chain))
	}
	dev := h.store.device(d.fp)
	if dev == nil || dev.State != inventory.StateActive || dev.Facts["hostname"] == "" || len(dev.PCRs) != 1 {
		t.Fatalf("device after enrollment: %+v", dev)
	}
	if h.svc.Pending() != 0 {
		t.Errorf("Pending() = %d after Finish, want 0", h.svc.Pending())
	}
	// The token is spent: a second device (or the same one, were it not
	// active) cannot use it.
	d2 := newFakeDevice(t)
	h.ev.trust(d2.fp)
	_, err = h.svc.BeginEnrollment(context.Background(), d2.begin("rgt_secret"))
	wantCode(t, err, codes.PermissionDenied, "used token")
}

func TestChallengeUsableOnce(t *testing.T) {
	h := newHarness(t, ModePreregistered, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.setDevice(inventory.Device{ID: d.id, EKFingerprint: d.fp, State: inventory.StateRegistered})

	b, err := h.svc.BeginEnrollment(context.Background(), d.begin(""))
	if err != nil {
		t.Fatal(err)
	}
	req := d.finish(t, b)
	if _, err := h.svc.FinishEnrollment(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	_, err = h.svc.FinishEnrollment(context.Background(), req)
	wantCode(t, err, codes.FailedPrecondition, "second Finish")
	if !strings.Contains(status.Convert(err).Message(), "unknown or already used") {
		t.Errorf("message %q does not say the challenge was used", status.Convert(err).Message())
	}
	// A wrong answer also uses the challenge up: no second guess.
	b, err = h.svc.BeginEnrollment(context.Background(), d.begin(""))
	if err != nil {
		t.Fatal(err)
	}
	req = d.finish(t, b)
	good := req.ActivationSecret
	req.ActivationSecret = []byte("wrong")
	_, err = h.svc.FinishEnrollment(context.Background(), req)
	wantCode(t, err, codes.PermissionDenied, "wrong secret")
	req.ActivationSecret = good
	_, err = h.svc.FinishEnrollment(context.Background(), req)
	wantCode(t, err, codes.FailedPrecondition, "retry after wrong secret")
	_, err = h.svc.FinishEnrollment(context.Background(), &rootgatev1.FinishEnrollmentRequest{
		EnrollmentId: hexID(7), ActivationSecret: good, DeviceKey: req.DeviceKey, Quotes: req.Quotes, Csr: req.Csr,
	})
	wantCode(t, err, codes.FailedPrecondition, "never-issued enrollment_id")
}

func TestChallengeExpires(t *testing.T) {
	h := newHarness(t, ModeToken, func(c *Config) { c.PendingTTL = 30 * time.Second })
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
	b, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_t"))
	if err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(30 * time.Second)
	_, err = h.svc.FinishEnrollment(context.Background(), d.finish(t, b))
	wantCode(t, err, codes.FailedPrecondition, "expired challenge")
	if !strings.Contains(status.Convert(err).Message(), "expired") {
		t.Errorf("message %q does not say expired", status.Convert(err).Message())
	}
	if h.store.device(d.fp) != nil {
		t.Error("device created by an expired challenge")
	}
	if len(h.store.certStatuses()) != 0 {
		t.Error("certificate issued for an expired challenge")
	}
}

func TestPendingCap(t *testing.T) {
	h := newHarness(t, ModeToken, func(c *Config) { c.MaxPending = 3 })
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
	ctx := context.Background()
	var first *rootgatev1.BeginEnrollmentResponse
	for i := range 3 {
		b, err := h.svc.BeginEnrollment(ctx, d.begin("rgt_t"))
		if err != nil {
			t.Fatalf("Begin %d: %v", i, err)
		}
		if first == nil {
			first = b
		}
	}
	// A flood past the cap: every call refused, concurrently, no panic.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			_, err := h.svc.BeginEnrollment(ctx, d.begin("rgt_t"))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		wantCode(t, err, codes.ResourceExhausted, "Begin past the cap")
	}
	// Outstanding challenges still finish while the cap is reached.
	if _, err := h.svc.FinishEnrollment(ctx, d.finish(t, first)); err != nil {
		t.Fatalf("Finish at the cap: %v", err)
	}
	// The finished one freed a slot.
	if _, err := h.svc.BeginEnrollment(ctx, d.begin("")); err != nil {
		t.Fatalf("Begin after a slot freed: %v", err)
	}
	_, err := h.svc.BeginEnrollment(ctx, d.begin(""))
	wantCode(t, err, codes.ResourceExhausted, "Begin at the cap again")
	// Expired challenges are evicted to make room.
	h.clock.Advance(DefaultPendingTTL)
	for i := range 3 {
		if _, err := h.svc.BeginEnrollment(ctx, d.begin("")); err != nil {
			t.Fatalf("Begin %d after expiry: %v", i, err)
		}
	}
	if got := len(h.store.refusals()); got != 21 {
		t.Errorf("%d refusal events, want 21", got)
	}
}

func TestAdmission(t *testing.T) {
	type setup struct {
		mode   Mode
		state  inventory.DeviceState // "" = unknown device
		token  string                // token presented
		tokFP  string                // "self" binds the token to the device's EK, "other" to another
		want   codes.Code
		status rootgatev1.EnrollmentStatus
	}
	const (
		challenge = rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE
		pending   = rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_PENDING_APPROVAL
	)
	tests := map[string]setup{
		"preregistered/unknown":     {mode: ModePreregistered, want: codes.PermissionDenied},
		"preregistered/registered":  {mode: ModePreregistered, state: inventory.StateRegistered, status: challenge},
		"preregistered/active":      {mode: ModePreregistered, state: inventory.StateActive, status: challenge},
		"preregistered/revoked":     {mode: ModePreregistered, state: inventory.StateRevoked, want: codes.PermissionDenied},
		"preregistered/quarantined": {mode: ModePreregistered, state: inventory.StateQuarantined, want: codes.PermissionDenied},
		"token/none":                {mode: ModeToken, want: codes.PermissionDenied},
		"token/unknown":             {mode: ModeToken, token: "rgt_nope", want: codes.PermissionDenied},
		"token/valid":               {mode: ModeToken, token: "rgt_ok", status: challenge},
		"token/bound-self":          {mode: ModeToken, token: "rgt_ok", tokFP: "self", status: challenge},
		"token/bound-other":         {mode: ModeToken, token: "rgt_ok", tokFP: "other", want: codes.PermissionDenied},
		"token/expired":             {mode: ModeToken, token: "rgt_old", want: codes.PermissionDenied},
		"token/registered":          {mode: ModeToken, state: inventory.StateRegistered, status: challenge},
		"token/active":              {mode: ModeToken, state: inventory.StateActive, status: challenge},
		"token/revoked+token":       {mode: ModeToken, state: inventory.StateRevoked, token: "rgt_ok", want: codes.PermissionDenied},
		"token/pending":             {mode: ModeToken, state: inventory.StatePending, want: codes.PermissionDenied},
		"approval/unknown":          {mode: ModeApproval, status: pending},
		"approval/pending":          {mode: ModeApproval, state: inventory.StatePending, status: pending},
		"approval/registered":       {mode: ModeApproval, state: inventory.StateRegistered, status: challenge},
		"approval/active":           {mode: ModeApproval, state: inventory.StateActive, status: challenge},
		"approval/rejected":         {mode: ModeApproval, state: inventory.StateRejected, want: codes.PermissionDenied},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.mode, nil)
			d := newFakeDevice(t)
			h.ev.trust(d.fp)
			if tc.state != "" {
				h.store.setDevice(inventory.Device{ID: d.id, EKFingerprint: d.fp, State: tc.state})
			}
			bound := ""
			switch tc.tokFP {
			case "self":
				bound = d.fp
			case "other":
				bound = strings.Repeat("ab", 32)
			}
			h.store.addToken("rgt_ok", "tok-ok", bound, h.clock.Now().Add(time.Hour))
			h.store.addToken("rgt_old", "tok-old", "", h.clock.Now().Add(-time.Second))
			before := h.store.device(d.fp)

			b, err := h.svc.BeginEnrollment(context.Background(), d.begin(tc.token))
			wantCode(t, err, tc.want, "Begin")
			if err != nil {
				if got := h.store.device(d.fp); fmt.Sprint(got) != fmt.Sprint(before) {
					t.Errorf("refusal changed the device: %+v -> %+v", before, got)
				}
				ev := h.store.refusals()
				if len(ev) != 1 || ev[0].Code != tc.want.String() || ev[0].EKFingerprint != d.fp || ev[0].DeviceID != d.id {
					t.Errorf("refusal events: %+v", ev)
				}
				return
			}
			if b.Status != tc.status || b.DeviceId != d.id {
				t.Fatalf("status %v device %s, want %v %s", b.Status, b.DeviceId, tc.status, d.id)
			}
			if b.Status == pending {
				if b.PollInterval.AsDuration() != DefaultPollInterval || b.EnrollmentId != "" || h.svc.Pending() != 0 {
					t.Errorf("pending answer: %+v", b)
				}
				if dev := h.store.device(d.fp); dev == nil || dev.State != inventory.StatePending {
					t.Errorf("device not queued: %+v", dev)
				}
				return
			}
			if _, err := h.svc.FinishEnrollment(context.Background(), d.finish(t, b)); err != nil {
				t.Fatalf("Finish: %v", err)
			}
			if dev := h.store.device(d.fp); dev.State != inventory.StateActive || dev.ID != d.id {
				t.Errorf("device after Finish: %+v", dev)
			}
		})
	}
}

func TestApprovalFlow(t *testing.T) {
	h := newHarness(t, ModeApproval, func(c *Config) { c.PollInterval = 2 * time.Second })
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	for range 2 {
		b, err := h.svc.BeginEnrollment(context.Background(), d.begin(""))
		if err != nil || b.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_PENDING_APPROVAL || b.PollInterval.AsDuration() != 2*time.Second {
			t.Fatalf("Begin before approval: %+v, %v", b, err)
		}
	}
	dev := h.store.device(d.fp)
	dev.State = inventory.StateRegistered // an admin approves
	h.store.setDevice(*dev)
	h.enroll(t, d, "")
	if got := h.store.device(d.fp); got.State != inventory.StateActive {
		t.Fatalf("state %s after enrollment", got.State)
	}
}

func TestReenrollSupersedes(t *testing.T) {
	h := newHarness(t, ModeToken, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok", d.fp, h.clock.Now().Add(time.Hour))
	f1 := h.enroll(t, d, "rgt_t")
	f2 := h.enroll(t, d, "") // active: no token needed, same ID
	if f1.DeviceId != f2.DeviceId {
		t.Fatalf("device ID changed on re-enrollment: %s -> %s", f1.DeviceId, f2.DeviceId)
	}
	st := h.store.certStatuses()
	if len(st) != 2 {
		t.Fatalf("certificates: %v", st)
	}
	n := map[string]int{}
	for _, s := range st {
		n[s]++
	}
	if n["active"] != 1 || n["superseded"] != 1 {
		t.Fatalf("certificate statuses %v, want one active, one superseded", st)
	}
}

func TestFinishRefusals(t *testing.T) {
	tests := map[string]struct {
		mutate func(*rootgatev1.FinishEnrollmentRequest)
		issuer error
		want   codes.Code
	}{
		"wrong secret":          {mutate: func(r *rootgatev1.FinishEnrollmentRequest) { r.ActivationSecret = []byte("nope") }, want: codes.PermissionDenied},
		"certification nonce":   {mutate: func(r *rootgatev1.FinishEnrollmentRequest) { r.DeviceKey.CreateAttestation = []byte("other") }, want: codes.PermissionDenied},
		"CSR key not certified": {mutate: func(r *rootgatev1.FinishEnrollmentRequest) { r.DeviceKey.Public = []byte("other-key") }, want: codes.PermissionDenied},
		"quote nonce":           {mutate: func(r *rootgatev1.FinishEnrollmentRequest) { r.Quotes[0].Quote = []byte("other") }, want: codes.PermissionDenied},
		"CSR garbage":           {mutate: func(r *rootgatev1.FinishEnrollmentRequest) { r.Csr = []byte("garbage") }, want: codes.InvalidArgument},
		"CSR bad signature":     {mutate: func(r *rootgatev1.FinishEnrollmentRequest) { r.Csr[len(r.Csr)-5] ^= 0xff }, want: codes.InvalidArgument},
		"HSM unavailable":       {issuer: fmt.Errorf("ca: sign: %w", hsm.ErrUnavailable), want: codes.Unavailable},
		"journal down":          {issuer: fmt.Errorf("ca: %w: disk full", ca.ErrJournal), want: codes.Internal},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, ModeToken, nil)
			d := newFakeDevice(t)
			h.ev.trust(d.fp)
			h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
			b, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_t"))
			if err != nil {
				t.Fatal(err)
			}
			req := d.finish(t, b)
			if tc.mutate != nil {
				tc.mutate(req)
			}
			h.issuer.setFail(tc.issuer)
			_, err = h.svc.FinishEnrollment(context.Background(), req)
			wantCode(t, err, tc.want, "Finish")
			if h.store.device(d.fp) != nil {
				t.Error("refused Finish created a device")
			}
			if len(h.store.certStatuses()) != 0 {
				t.Error("refused Finish issued a certificate")
			}
			ev := h.store.refusals()
			if len(ev) != 1 || ev[0].Code != tc.want.String() || ev[0].DeviceID != d.id || ev[0].Details["method"] != "finish" {
				t.Fatalf("refusal events: %+v", ev)
			}
			if msg := status.Convert(err).Message(); strings.Contains(msg, fmt.Sprintf("%x", req.ActivationSecret)) {
				t.Errorf("message leaks the secret: %q", msg)
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	h := newHarness(t, ModeToken, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
	ctx := context.Background()

	begins := map[string]func(*rootgatev1.BeginEnrollmentRequest){
		"nil request":     nil,
		"no EK":           func(r *rootgatev1.BeginEnrollmentRequest) { r.EkPublic = nil },
		"EK garbage":      func(r *rootgatev1.BeginEnrollmentRequest) { r.EkPublic = []byte{0x30, 0x03, 1, 2} },
		"no AK":           func(r *rootgatev1.BeginEnrollmentRequest) { r.Ak = nil },
		"AK garbage":      func(r *rootgatev1.BeginEnrollmentRequest) { r.Ak.Public = []byte("garbage") },
		"AK huge":         func(r *rootgatev1.BeginEnrollmentRequest) { r.Ak.CreateData = make([]byte, maxTPMStruct+1) },
		"chain too long":  func(r *rootgatev1.BeginEnrollmentRequest) { r.EkChain = make([][]byte, maxChainLen+1) },
		"hostname huge":   func(r *rootgatev1.BeginEnrollmentRequest) { r.Facts.Hostname = strings.Repeat("h", maxFactLen+1) },
		"token huge":      func(r *rootgatev1.BeginEnrollmentRequest) { r.EnrollmentToken = strings.Repeat("t", maxTokenLen+1) },
		"EK cert too big": func(r *rootgatev1.BeginEnrollmentRequest) { r.EkCertificate = make([]byte, maxCertSize+1) },
	}
	for name, mutate := range begins {
		req := d.begin("rgt_t")
		if mutate == nil {
			req = nil
		} else {
			mutate(req)
		}
		_, err := h.svc.BeginEnrollment(ctx, req)
		wantCode(t, err, codes.InvalidArgument, "Begin "+name)
	}

	b, err := h.svc.BeginEnrollment(ctx, d.begin("rgt_t"))
	if err != nil {
		t.Fatal(err)
	}
	finishes := map[string]func(*rootgatev1.FinishEnrollmentRequest){
		"nil request":      nil,
		"no id":            func(r *rootgatev1.FinishEnrollmentRequest) { r.EnrollmentId = "" },
		"no secret":        func(r *rootgatev1.FinishEnrollmentRequest) { r.ActivationSecret = nil },
		"no device key":    func(r *rootgatev1.FinishEnrollmentRequest) { r.DeviceKey = nil },
		"no quotes":        func(r *rootgatev1.FinishEnrollmentRequest) { r.Quotes = nil },
		"empty quote":      func(r *rootgatev1.FinishEnrollmentRequest) { r.Quotes[0].Signature = nil },
		"no CSR":           func(r *rootgatev1.FinishEnrollmentRequest) { r.Csr = nil },
		"event log huge":   func(r *rootgatev1.FinishEnrollmentRequest) { r.EventLog = make([]byte, DefaultMaxEventLog+1) },
		"PCR alg missing":  func(r *rootgatev1.FinishEnrollmentRequest) { r.Pcrs[0].Algorithm = 0 },
		"PCR short digest": func(r *rootgatev1.FinishEnrollmentRequest) { r.Pcrs[0].Digest = r.Pcrs[0].Digest[:5] },
		"PCR index":        func(r *rootgatev1.FinishEnrollmentRequest) { r.Pcrs[0].Index = 99 },
	}
	for name, mutate := range finishes {
		req := d.finish(t, b)
		if mutate == nil {
			req = nil
		} else {
			mutate(req)
		}
		_, err := h.svc.FinishEnrollment(ctx, req)
		wantCode(t, err, codes.InvalidArgument, "Finish "+name)
	}
	// None of the malformed Finish calls used up the challenge.
	if _, err := h.svc.FinishEnrollment(ctx, d.finish(t, b)); err != nil {
		t.Fatalf("Finish after malformed attempts: %v", err)
	}
	if got, want := len(h.store.refusals()), len(begins)+len(finishes); got != want {
		t.Errorf("%d refusal events, want %d", got, want)
	}
}

func TestUntrustedEK(t *testing.T) {
	h := newHarness(t, ModeToken, nil)
	d := newFakeDevice(t)
	h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
	_, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_t"))
	wantCode(t, err, codes.PermissionDenied, "untrusted EK")
	if !strings.Contains(status.Convert(err).Message(), "EK") {
		t.Errorf("message %q does not name the EK", status.Convert(err).Message())
	}
	req := d.begin("rgt_t")
	req.Ak.Public = []byte("bad-ak")
	h.ev.trust(d.fp)
	_, err = h.svc.BeginEnrollment(context.Background(), req)
	wantCode(t, err, codes.PermissionDenied, "unsound AK")
}

func TestStatusFor(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{badRequest("x"), codes.InvalidArgument},
		{fmt.Errorf("attestor: %w: truncated TPMT_PUBLIC", attestor.ErrMalformed), codes.InvalidArgument},
		{fmt.Errorf("%w: %w", attestor.ErrAKInvalid, attestor.ErrMalformed), codes.InvalidArgument},
		{fmt.Errorf("ca: %w", ca.ErrBadCSR), codes.InvalidArgument},
		{fmt.Errorf("ca: %w", ca.ErrWeakKey), codes.InvalidArgument},
		{fmt.Errorf("ca: %w", ca.ErrUnsupportedKey), codes.InvalidArgument},
		{fmt.Errorf("x: %w", inventory.ErrInvalidArgument), codes.InvalidArgument},
		{denied("not registered"), codes.PermissionDenied},
		{attestor.ErrEKUntrusted, codes.PermissionDenied},
		{attestor.ErrAKInvalid, codes.PermissionDenied},
		{attestor.ErrActivation, codes.PermissionDenied},
		{attestor.ErrCertification, codes.PermissionDenied},
		{attestor.ErrNonce, codes.PermissionDenied},
		{attestor.ErrKeyMismatch, codes.PermissionDenied},
		{attestor.ErrQuote, codes.PermissionDenied},
		{fmt.Errorf("enroll: %w", inventory.ErrTokenUsed), codes.PermissionDenied},
		{inventory.ErrTokenWrongEK, codes.PermissionDenied},
		{fmt.Errorf("activate: %w", inventory.ErrInvalidState), codes.PermissionDenied},
		{errChallengeUnknown, codes.FailedPrecondition},
		{errChallengeExpired, codes.FailedPrecondition},
		{errPendingFull, codes.ResourceExhausted},
		{fmt.Errorf("activate: %w", inventory.ErrConflict), codes.Aborted},
		{fmt.Errorf("ca: sign: %w", hsm.ErrUnavailable), codes.Unavailable},
		{errors.Join(errors.New("x"), hsm.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("store: %w", context.Canceled), codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{fmt.Errorf("ca: %w", ca.ErrJournal), codes.Internal},
		{fmt.Errorf("%w: sql: database is locked", inventory.ErrNotFound), codes.Internal},
		{errors.New("boom"), codes.Internal},
	}
	for _, tc := range tests {
		code, msg := statusFor(tc.err)
		if code != tc.want {
			t.Errorf("statusFor(%v) = %v, want %v", tc.err, code, tc.want)
		}
		if code == codes.Internal && msg != "internal error" {
			t.Errorf("statusFor(%v): internal message %q leaks details", tc.err, msg)
		}
	}
}

func TestStoreFailureIsInternal(t *testing.T) {
	h := newHarness(t, ModePreregistered, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.failGet = errors.New("sqlite: disk I/O error /var/lib/rootgate/rootgate.db")
	_, err := h.svc.BeginEnrollment(context.Background(), d.begin(""))
	wantCode(t, err, codes.Internal, "store failure")
	if strings.Contains(err.Error(), "sqlite") {
		t.Errorf("client message leaks store details: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	h := newHarness(t, ModeToken, func(c *Config) { c.Metrics = reg })
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
	h.enroll(t, d, "rgt_t")
	_, _ = h.svc.BeginEnrollment(context.Background(), newFakeDevice(t).begin(""))
	if _, err := h.svc.BeginEnrollment(context.Background(), d.begin("")); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP rootgate_enroll_pending_challenges Challenges issued and not yet answered (expired ones until swept).
# TYPE rootgate_enroll_pending_challenges gauge
rootgate_enroll_pending_challenges 1
# HELP rootgate_enroll_requests_total Enrollment RPCs by method, outcome (challenge, pending, accepted, refused) and gRPC code.
# TYPE rootgate_enroll_requests_total counter
rootgate_enroll_requests_total{code="OK",method="begin",outcome="challenge"} 2
rootgate_enroll_requests_total{code="OK",method="finish",outcome="accepted"} 1
rootgate_enroll_requests_total{code="PermissionDenied",method="begin",outcome="refused"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"rootgate_enroll_requests_total", "rootgate_enroll_pending_challenges"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(h.svc.metrics.latency); n != 2 {
		t.Errorf("latency series: %d, want 2", n)
	}
	// A second Service on the same registry is an error, not a panic.
	if _, err := New(Config{Store: h.store, Issuer: h.issuer, EKVerifier: &attestor.EKVerifier{}, Metrics: reg}); err == nil {
		t.Error("New registered duplicate metrics without error")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without Store/Issuer/EKVerifier succeeded")
	}
	h := newHarness(t, ModeToken, nil)
	if _, err := New(Config{Mode: "open", Store: h.store, Issuer: h.issuer, EKVerifier: &attestor.EKVerifier{}}); err == nil {
		t.Error("New accepted an unknown mode")
	}
	for _, m := range []string{"preregistered", "token", "approval"} {
		if _, err := ParseMode(m); err != nil {
			t.Errorf("ParseMode(%q): %v", m, err)
		}
	}
}

// TestBeginAuditedOrRefused: a challenge goes out only once the attempt is
// on the audit trail; when the trail cannot be written, Begin fails closed
// and holds no challenge.
func TestBeginAuditedOrRefused(t *testing.T) {
	h := newHarness(t, ModeToken, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok1", d.fp, h.clock.Now().Add(time.Hour))

	if _, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_t")); err != nil {
		t.Fatal(err)
	}
	var begins int
	for _, e := range h.store.events {
		if e.Type == inventory.EventEnrollmentBegin {
			begins++
			if e.EKFingerprint == "" || e.Details["token"] != "tok1" {
				t.Errorf("begin event: %+v", e)
			}
		}
	}
	if begins != 1 || h.svc.Pending() != 1 {
		t.Fatalf("%d begin events, %d pending; want 1 and 1", begins, h.svc.Pending())
	}

	h.store.mu.Lock()
	h.store.failEvent = inventory.EventEnrollmentBegin
	h.store.mu.Unlock()
	_, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_t"))
	wantCode(t, err, codes.Internal, "Begin with the audit trail down")
	if h.svc.Pending() != 1 {
		t.Fatalf("%d challenges pending after an unaudited Begin, want 1", h.svc.Pending())
	}
}
