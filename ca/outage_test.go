package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/testenv"
)

// TestHSMOutage takes the HSM away from a running Issuer and brings it back
// (issue 2): the process's SoftHSM token directory is moved away and back
// under an Issuer on an hsm.Signer journaling into the real store. While it
// is away IssueDevice fails with an error wrapping hsm.ErrUnavailable,
// returns no certificate and journals nothing; once it is back the same
// Issuer issues again by itself.
//
// SoftHSM 2.6.1 marks the token broken until the module is initialised
// again, which happens only when every Token in the process has let go of
// it (see hsm's TestHSMDisappears). So this test must not run alongside
// others on the shared token: it does not call t.Parallel, and the other ca
// tests close their Tokens at their end (openToken) and run sequentially
// too.
func TestHSMOutage(t *testing.T) {
	ctx := context.Background()
	h := testenv.SoftHSM(t)
	// A short backoff cap keeps the recovery quick; the zero value (30s)
	// would only make the wait longer.
	tok := h.Open(t, "", hsm.Options{MaxBackoff: 200 * time.Millisecond})
	signer, _, err := tok.FindOrGenerateSigner(ctx, "ca-outage", hsm.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(ctx, signer, ca.InitOptions{CommonName: "Outage Root"})
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t)
	is, err := ca.New(signer, []*x509.Certificate{res.Certificate}, st, ca.Config{TrustDomain: "corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	const device = "dev-outage"
	_, pub := deviceCSR(t)
	req := ca.DeviceRequest{PublicKey: pub, DeviceID: device, EKFingerprint: ekFP}
	journaled := func() int {
		t.Helper()
		certs, err := st.ListCertificates(ctx, device)
		if err != nil {
			t.Fatal(err)
		}
		return len(certs)
	}
	checkIssued := func(got *ca.Issued, what string) {
		t.Helper()
		if err := got.Certificate.CheckSignatureFrom(res.Certificate); err != nil {
			t.Fatalf("%s: certificate not signed by the CA: %v", what, err)
		}
		c, err := st.GetCertificate(ctx, got.Certificate.SerialNumber.Text(16))
		if err != nil || string(c.DER) != string(got.Certificate.Raw) {
			t.Fatalf("%s: certificate not journaled: %v", what, err)
		}
	}

	got, err := is.IssueDevice(ctx, req)
	if err != nil {
		t.Fatalf("IssueDevice before the outage: %v", err)
	}
	checkIssued(got, "before the outage")

	restore := h.Outage(t)

	// The first call meets the broken token, later ones the reconnect
	// backoff or a failed reconnect: all of them are "unavailable".
	for i := range 3 {
		got, err := is.IssueDevice(ctx, req)
		if !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("IssueDevice %d while the token is away: %v, want an error wrapping hsm.ErrUnavailable", i, err)
		}
		if got != nil {
			t.Fatalf("IssueDevice %d while the token is away returned a certificate with its error", i)
		}
		if i == 0 {
			t.Logf("while away: %v", err)
		}
	}
	if n := journaled(); n != 1 {
		t.Fatalf("%d certificates journaled after the outage calls, want 1 (from before)", n)
	}

	restore()

	// The same Issuer recovers by itself; the deadline bounds the wait, the
	// poll interval only spaces the attempts.
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err = is.IssueDevice(ctx, req)
		if err == nil {
			break
		}
		if !errors.Is(err, hsm.ErrUnavailable) || got != nil {
			t.Fatalf("IssueDevice after the token came back: %v (certificate %v), want success or hsm.ErrUnavailable", err, got != nil)
		}
		if time.Now().After(deadline) {
			t.Fatalf("IssueDevice did not recover within 15s of the token coming back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkIssued(got, "after the outage")
	if n := journaled(); n != 2 {
		t.Fatalf("%d certificates journaled, want 2", n)
	}
}
