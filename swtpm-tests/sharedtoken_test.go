package swtpmtests

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/internal/testenv"
)

// TestSharedTokenSecondFinishRefused: two TPMs Begin with the same
// one-time token (both admitted: the token is unspent at both Begins). The
// first Finish enrolls its device and spends the token; the second, with
// valid evidence, is refused PermissionDenied before anything is issued:
// the journal holds one device certificate, active, and none left issued.
func TestSharedTokenSecondFinishRefused(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2, testenv.ServerOptions{Mode: "token"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := client(t, f.srv)
	d := db(t, f.srv)
	secret, tokenID := token(t, f.srv)
	idA, idB := deviceIDOf(t, f.tpms[0]), deviceIDOf(t, f.tpms[1])

	swA, swB := testenv.StartSwtpm(t, f.tpms[0]), testenv.StartSwtpm(t, f.tpms[1])
	devA := testenv.NewDevice(t, swA.OpenTPM(t), f.tpms[0].EKCert)
	devB := testenv.NewDevice(t, swB.OpenTPM(t), f.tpms[1].EKCert)

	begin := func(dev *testenv.Device) *rootgatev1.BeginEnrollmentResponse {
		t.Helper()
		b, err := c.BeginEnrollment(ctx, dev.Begin(secret))
		if err != nil {
			t.Fatalf("BeginEnrollment: %v", err)
		}
		if b.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE {
			t.Fatalf("BeginEnrollment: %v", b)
		}
		return b
	}
	bA, bB := begin(devA), begin(devB)
	reqA, pubA := devA.Answer(t, bA)
	reqB, _ := devB.Answer(t, bB)

	finA, err := c.FinishEnrollment(ctx, reqA)
	if err != nil {
		t.Fatalf("first Finish: %v", err)
	}
	if cert, err := x509.ParseCertificate(finA.Certificate); err != nil || !samePublicKey(cert.PublicKey, pubA) || finA.DeviceId != idA {
		t.Fatalf("first Finish: device %s, certificate %v", finA.DeviceId, err)
	}

	before := snap(t, d)
	_, err = c.FinishEnrollment(ctx, reqB)
	wantCode(t, err, codes.PermissionDenied, "second Finish with the spent token", "token", "used")
	assertRefusedCleanly(t, d, before, codes.PermissionDenied, "second Finish with the spent token")

	if n := count(t, d, `SELECT count(*) FROM certificates WHERE kind = 'device' AND status = 'issued'`); n != 0 {
		t.Errorf("%d device certificates left with status issued", n)
	}
	if n := count(t, d, `SELECT count(*) FROM certificates WHERE kind = 'device' AND device_id = ?`, idB); n != 0 {
		t.Errorf("%d certificates journaled for the refused device", n)
	}
	if n := count(t, d, `SELECT count(*) FROM certificates WHERE kind = 'device' AND device_id = ? AND status = 'active'`, idA); n != 1 {
		t.Errorf("%d active certificates for the enrolled device, want 1", n)
	}
	if n := count(t, d, `SELECT count(*) FROM devices WHERE id = ?`, idB); n != 0 {
		t.Errorf("refused device is in the inventory")
	}
	if n := count(t, d, `SELECT count(*) FROM enrollment_tokens WHERE id = ? AND used_by = ?`, tokenID, idA); n != 1 {
		t.Errorf("token %s not spent by the first device", tokenID)
	}
	if n := count(t, d, `SELECT count(*) FROM events WHERE type = 'enrollment.refused' AND device_id = ?
		AND json_extract(details, '$.method') = 'finish'`, idB); n != 1 {
		t.Errorf("%d Finish refusal events for the refused device, want 1", n)
	}
	if n := count(t, d, `SELECT count(*) FROM events WHERE type = 'certificate.voided'`); n != 0 {
		t.Errorf("%d certificates voided: the refusal came after issuance", n)
	}
}
