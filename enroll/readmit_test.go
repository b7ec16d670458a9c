package enroll

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/inventory"
)

// TestFinishReadmits: what Begin admitted on can change before Finish (an
// admin revokes the token or the device, another enrollment spends the
// token). Finish then refuses with the code and message Begin would give
// now, issues nothing (IssueDevice is never called), changes no device
// and records one refusal.
func TestFinishReadmits(t *testing.T) {
	tests := map[string]struct {
		mode   Mode
		state  inventory.DeviceState // at Begin; "" = unknown
		token  string
		change func(t *testing.T, e env) // between Begin and Finish
		want   string                    // in the message
		// beginAdmits: Begin now admits the device otherwise (an admin
		// registered it), so a new attempt succeeds; Finish still refuses
		// the attempt admitted by the token, which it would consume.
		beginAdmits bool
	}{
		"token revoked": {
			mode: ModeToken, token: "rgt_t",
			change: func(t *testing.T, e env) { e.h.store.revokeToken("rgt_t") },
			want:   "revoked",
		},
		"token expired": {
			mode: ModeToken, token: "rgt_t",
			change: func(t *testing.T, e env) { e.h.clock.Advance(DefaultPendingTTL / 2) },
			want:   "expired",
		},
		"token spent by another device": {
			mode: ModeToken, token: "rgt_t",
			change: func(t *testing.T, e env) {
				other := newFakeDevice(t)
				e.h.ev.trust(other.fp)
				e.h.enroll(t, other, "rgt_t")
			},
			want: "already used",
		},
		"registered meanwhile, token revoked": {
			mode: ModeToken, token: "rgt_t",
			change: func(t *testing.T, e env) {
				e.h.store.setDevice(inventory.Device{ID: e.d.id, EKFingerprint: e.d.fp, State: inventory.StateRegistered})
				e.h.store.revokeToken("rgt_t")
			},
			want: "revoked", beginAdmits: true,
		},
		"token-admitted device revoked": {
			mode: ModeToken, token: "rgt_t",
			change: func(t *testing.T, e env) {
				e.h.store.setDevice(inventory.Device{ID: e.d.id, EKFingerprint: e.d.fp, State: inventory.StateRevoked})
			},
			want: "is revoked",
		},
		"registered device revoked": {
			mode: ModePreregistered, state: inventory.StateRegistered,
			change: func(t *testing.T, e env) { e.setState(inventory.StateRevoked) },
			want:   "is revoked",
		},
		"active device revoked (re-enrollment)": {
			mode: ModeToken, state: inventory.StateActive,
			change: func(t *testing.T, e env) { e.setState(inventory.StateRevoked) },
			want:   "is revoked",
		},
		"active device quarantined": {
			mode: ModePreregistered, state: inventory.StateActive,
			change: func(t *testing.T, e env) { e.setState(inventory.StateQuarantined) },
			want:   "is quarantined",
		},
		"approved device rejected": {
			mode: ModeApproval, state: inventory.StateRegistered,
			change: func(t *testing.T, e env) { e.setState(inventory.StateRejected) },
			want:   "is rejected",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.mode, nil)
			d := newFakeDevice(t)
			h.ev.trust(d.fp)
			// The token expires half-way through the challenge's TTL.
			h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(DefaultPendingTTL/4))
			if tc.state != "" {
				h.store.setDevice(inventory.Device{ID: d.id, EKFingerprint: d.fp, State: tc.state})
			}
			ctx := context.Background()
			b, err := h.svc.BeginEnrollment(ctx, d.begin(tc.token))
			if err != nil || b.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE {
				t.Fatalf("Begin: %v %v", b, err)
			}
			e := env{h: h, d: d, token: tc.token}
			tc.change(t, e)
			calls, certs, dev := h.issuer.count(), len(h.store.certStatuses()), h.store.device(d.fp)
			refusals := len(h.store.refusals())

			_, err = h.svc.FinishEnrollment(ctx, d.finish(t, b))
			wantCode(t, err, codes.PermissionDenied, "Finish")
			msg := status.Convert(err).Message()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not name %q", msg, tc.want)
			}
			if n := h.issuer.count(); n != calls {
				t.Errorf("IssueDevice called %d times by the refused Finish", n-calls)
			}
			if n := len(h.store.certStatuses()); n != certs {
				t.Errorf("refused Finish journaled %d certificates", n-certs)
			}
			if got := h.store.device(d.fp); fmt.Sprint(got) != fmt.Sprint(dev) {
				t.Errorf("refused Finish changed the device: %+v -> %+v", dev, got)
			}
			ev := h.store.refusals()
			if len(ev) != refusals+1 {
				t.Fatalf("%d refusal events written, want 1", len(ev)-refusals)
			}
			last := ev[len(ev)-1]
			if last.Code != codes.PermissionDenied.String() || last.DeviceID != d.id || last.EKFingerprint != d.fp ||
				last.Details["method"] != "finish" || !strings.Contains(last.Reason, tc.want) {
				t.Errorf("refusal event: %+v", last)
			}
			if len(h.store.eventsOf(inventory.EventCertVoided)) != 0 {
				t.Error("a certificate was voided: one was issued")
			}

			// Begin now says the same.
			nb, berr := h.svc.BeginEnrollment(ctx, d.begin(tc.token))
			if tc.beginAdmits {
				if berr != nil || nb.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE {
					t.Errorf("Begin after the refusal: %v %v", nb, berr)
				}
				return
			}
			if codeOf(berr) != codeOf(err) || status.Convert(berr).Message() != msg {
				t.Errorf("Finish refused with %v, Begin now with %v", err, berr)
			}
		})
	}
}

// env is what a TestFinishReadmits change acts on.
type env struct {
	h     *harness
	d     *fakeDevice
	token string
}

// setState is an admin changing the device's state.
func (e env) setState(s inventory.DeviceState) {
	dev := e.h.store.device(e.d.fp)
	dev.State = s
	e.h.store.setDevice(*dev)
}

// TestActivateRefusedAfterIssueVoids: when ActivateDevice refuses after the
// certificate was issued (a concurrent Finish spent the token past
// readmit), the certificate is voided (revoked, "not handed out: ...") and
// the refusal is recorded with its code as before. The voiding outlives a
// client that hangs up.
func TestActivateRefusedAfterIssueVoids(t *testing.T) {
	tests := map[string]struct {
		cause func(cancel context.CancelFunc) error
		want  codes.Code
		why   string
	}{
		"token spent concurrently": {
			cause: func(context.CancelFunc) error {
				return fmt.Errorf("inventory: activate device: %w", inventory.ErrTokenUsed)
			},
			want: codes.PermissionDenied, why: "already used",
		},
		"device revoked concurrently": {
			cause: func(context.CancelFunc) error {
				return fmt.Errorf("inventory: activate device: %w: cannot activate a device in state revoked", inventory.ErrInvalidState)
			},
			want: codes.PermissionDenied, why: "state revoked",
		},
		"client hung up": {
			cause: func(cancel context.CancelFunc) error {
				cancel()
				return fmt.Errorf("inventory: activate device: begin: %w", context.Canceled)
			},
			want: codes.Canceled, why: "canceled",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, ModeToken, nil)
			d := newFakeDevice(t)
			h.ev.trust(d.fp)
			h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b, err := h.svc.BeginEnrollment(ctx, d.begin("rgt_t"))
			if err != nil {
				t.Fatal(err)
			}
			h.store.setFailActivate(func() error { return tc.cause(cancel) })

			_, err = h.svc.FinishEnrollment(ctx, d.finish(t, b))
			wantCode(t, err, tc.want, "Finish")
			if n := h.issuer.count(); n != 1 {
				t.Fatalf("IssueDevice called %d times, want 1", n)
			}
			certs := h.store.certStatuses()
			if len(certs) != 1 {
				t.Fatalf("certificates: %v", certs)
			}
			var serial string
			for sn, st := range certs {
				serial = sn
				if st != string(inventory.CertRevoked) {
					t.Errorf("certificate not handed out has status %s, want revoked", st)
				}
			}
			if msg := status.Convert(err).Message(); tc.want == codes.PermissionDenied && !strings.Contains(msg, "certificate "+serial+" not handed out") {
				t.Errorf("message %q does not name the certificate not handed out", msg)
			}
			if r := h.store.certReason(serial); !strings.HasPrefix(r, inventory.VoidReasonPrefix) || !strings.Contains(r, tc.why) {
				t.Errorf("status reason %q", r)
			}
			voided := h.store.eventsOf(inventory.EventCertVoided)
			if len(voided) != 1 || voided[0].Details["serial"] != serial || voided[0].Actor != actor {
				t.Errorf("certificate.voided events: %+v", voided)
			}
			ev := h.store.refusals()
			if len(ev) != 1 || ev[0].Code != tc.want.String() || ev[0].DeviceID != d.id || ev[0].Details["method"] != "finish" {
				t.Errorf("refusal events: %+v", ev)
			}
			if h.store.device(d.fp) != nil {
				t.Error("refused Finish created a device")
			}
		})
	}
}

// TestVoidFailureKeepsRefusal: if the certificate cannot be voided (here
// it is no longer issued), the refusal still stands with its code.
func TestVoidFailureKeepsRefusal(t *testing.T) {
	h := newHarness(t, ModeToken, nil)
	d := newFakeDevice(t)
	h.ev.trust(d.fp)
	h.store.addToken("rgt_t", "tok", "", h.clock.Now().Add(time.Hour))
	b, err := h.svc.BeginEnrollment(context.Background(), d.begin("rgt_t"))
	if err != nil {
		t.Fatal(err)
	}
	h.store.setFailActivate(func() error {
		for sn := range h.store.certs { // lock held by ActivateDevice
			h.store.certs[sn] = "superseded"
		}
		return fmt.Errorf("inventory: activate device: %w", inventory.ErrTokenUsed)
	})
	_, err = h.svc.FinishEnrollment(context.Background(), d.finish(t, b))
	wantCode(t, err, codes.PermissionDenied, "Finish")
	if len(h.store.eventsOf(inventory.EventCertVoided)) != 0 || len(h.store.refusals()) != 1 {
		t.Errorf("events: voided %v, refusals %v", h.store.eventsOf(inventory.EventCertVoided), h.store.refusals())
	}
}
