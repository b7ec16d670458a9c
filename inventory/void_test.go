package inventory

import (
	"context"
	"errors"
	"testing"

	"github.com/rootgate/rootgate/ca"
)

// TestVoidCertificate: a certificate issued for an enrollment refused
// afterwards is marked revoked, "not handed out: <why>", with a
// certificate.voided event on the audit chain; a certificate that was handed
// out (active, superseded) or already revoked is refused and left as is.
func TestVoidCertificate(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fp := randomFP(t)
	d, err := s.RegisterDevice(ctx, fp, nil, "cli:test")
	if err != nil {
		t.Fatal(err)
	}
	voidedEvents := func() []*Event {
		t.Helper()
		ev, err := s.ListEvents(ctx, EventFilter{Type: EventCertVoided, Limit: -1})
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}

	serial := journal(t, s, ca.KindDevice, d.ID)
	if err := s.VoidCertificate(ctx, serial, "enroll", "enrollment token invalid: already used"); err != nil {
		t.Fatalf("VoidCertificate: %v", err)
	}
	c, err := s.GetCertificate(ctx, serial)
	if err != nil {
		t.Fatal(err)
	}
	wantReason := "not handed out: enrollment token invalid: already used"
	if c.Status != CertRevoked || c.StatusReason != wantReason {
		t.Fatalf("voided certificate: status %s, reason %q", c.Status, c.StatusReason)
	}
	ev := voidedEvents()
	if len(ev) != 1 {
		t.Fatalf("%d certificate.voided events, want 1", len(ev))
	}
	if e := ev[0]; e.DeviceID != d.ID || e.Reason != wantReason || e.Actor != "enroll" || e.Outcome != OutcomeInfo ||
		e.Details["serial"] != serial || e.Details["kind"] != ca.KindDevice || e.Details["from"] != string(CertIssued) {
		t.Fatalf("certificate.voided event: %+v", e)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatalf("audit chain after voiding: %v", err)
	}

	// A voided certificate is never activated later, nor voided again.
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: serial, Actor: "enroll"}); !errors.Is(err, ErrConflict) {
		t.Errorf("activating a voided certificate: %v", err)
	}
	if err := s.VoidCertificate(ctx, serial, "enroll", "again"); !errors.Is(err, ErrConflict) {
		t.Errorf("voiding twice: %v", err)
	}

	// Certificates that were handed out are not voided: an active one is
	// withdrawn by revoking its device.
	first := journal(t, s, ca.KindDevice, d.ID)
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: first, Actor: "enroll"}); err != nil {
		t.Fatal(err)
	}
	second := journal(t, s, ca.KindDevice, d.ID)
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: second, Actor: "enroll"}); err != nil {
		t.Fatal(err)
	}
	for serial, want := range map[string]CertStatus{first: CertSuperseded, second: CertActive} {
		if err := s.VoidCertificate(ctx, serial, "enroll", "no"); !errors.Is(err, ErrConflict) {
			t.Errorf("voiding a %s certificate: %v", want, err)
		}
		if c, _ := s.GetCertificate(ctx, serial); c.Status != want || c.StatusReason == wantReason {
			t.Errorf("refused void changed the %s certificate: %+v", want, c)
		}
	}
	if got, _ := s.GetDevice(ctx, d.ID); got.State != StateActive || got.CurrentSerial != second {
		t.Errorf("device after refused voids: %+v", got)
	}

	if err := s.VoidCertificate(ctx, "abcdef", "enroll", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown serial: %v", err)
	}
	if err := s.VoidCertificate(ctx, "0XYZ", "enroll", "x"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("malformed serial: %v", err)
	}
	if n := len(voidedEvents()); n != 1 {
		t.Errorf("%d certificate.voided events after the refused voids, want 1", n)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatalf("audit chain: %v", err)
	}
}
