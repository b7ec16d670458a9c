package enroll

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

// TestFinishHSMOutage moves the CA's SoftHSM token directory away and back
// under a running Service (real attestor checks over the swtpm fixture, an
// Issuer on an hsm.Signer): a Finish meanwhile is refused with Unavailable
// and changes nothing in the store; once the token is back the same Service
// and Issuer enroll again by themselves. SoftHSM recovers only when every
// Token in the process lets go of the module (hsm's TestHSMDisappears), so
// this test does not run in parallel and holds the only Token.
func TestFinishHSMOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SoftHSM")
	}
	ctx := context.Background()
	fx := loadEnrollFixture(t)
	env := newFuzzEnv(t, fx.RootPEM, fx.IssuerPEM, fx.Begin, fx.Now)
	eid, challenge := env.challenge(t, fx)
	var answer rootgatev1.FinishEnrollmentRequest
	if err := proto.Unmarshal(fx.Finish, &answer); err != nil {
		t.Fatal(err)
	}

	sh := testenv.SoftHSM(t)
	tok := sh.Open(t, "", hsm.Options{MaxBackoff: 200 * time.Millisecond})
	signer, _, err := tok.FindOrGenerateSigner(ctx, "enroll-outage", hsm.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(ctx, signer, ca.InitOptions{CommonName: "Outage CA"})
	if err != nil {
		t.Fatal(err)
	}
	st := env.store(ModePreregistered)
	iss, err := ca.New(signer, []*x509.Certificate{res.Certificate}, st, ca.Config{TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	svc := env.serviceWith(t, ModePreregistered, st, iss)

	// finish answers the fixture's challenge, held afresh each time as if
	// the agent had begun again.
	finish := func() (*rootgatev1.FinishEnrollmentResponse, error) {
		env.hold(t, svc, eid, challenge)
		return svc.FinishEnrollment(ctx, proto.Clone(&answer).(*rootgatev1.FinishEnrollmentRequest))
	}
	first, err := finish()
	if err != nil {
		t.Fatalf("FinishEnrollment before the outage: %v", err)
	}

	restore := sh.Outage(t)
	before := stateOf(st)
	refusals := len(st.refusals())
	resp, err := finish()
	wantCode(t, err, codes.Unavailable, "FinishEnrollment while the HSM is away")
	if resp != nil {
		t.Fatal("refused with a response")
	}
	if msg := status.Convert(err).Message(); msg != "CA signing key unavailable; retry later" {
		t.Errorf("message %q", msg)
	}
	if after := stateOf(st); len(after.certs) != len(before.certs) || after.devices[env.ekFP].CurrentSerial != before.devices[env.ekFP].CurrentSerial {
		t.Fatalf("the store changed during the outage:\nbefore %+v\nafter  %+v", before, after)
	}
	if ev := st.refusals(); len(ev) != refusals+1 || ev[len(ev)-1].Code != codes.Unavailable.String() || ev[len(ev)-1].DeviceID != env.deviceID {
		t.Fatalf("refusal events: %+v", ev)
	}

	restore()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err = finish()
		if err == nil {
			break
		}
		wantCode(t, err, codes.Unavailable, "FinishEnrollment after the HSM came back")
		if time.Now().After(deadline) {
			t.Fatalf("FinishEnrollment did not recover within 15s of the HSM coming back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp.GetDeviceId() != first.GetDeviceId() {
		t.Fatalf("device ID %s after the outage, %s before", resp.GetDeviceId(), first.GetDeviceId())
	}
	cert, err := x509.ParseCertificate(resp.GetCertificate())
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(res.Certificate); err != nil {
		t.Fatalf("certificate after the outage: %v", err)
	}
	d := st.device(env.ekFP)
	if d == nil || d.State != inventory.StateActive || d.CurrentSerial != cert.SerialNumber.Text(16) {
		t.Fatalf("device after the outage: %+v", d)
	}
}
