package swtpmtests

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/internal/testenv"
)

// TestTokenRefusals: a used, expired, revoked, wrongly bound or unknown
// token is refused with PermissionDenied naming the reason; nothing is
// created, each refusal is audited.
func TestTokenRefusals(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2, testenv.ServerOptions{Mode: "token"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := db(t, f.srv)
	sw := testenv.StartSwtpm(t, f.tpms[0])

	used, _ := token(t, f.srv)
	enroll(t, f.srv, testenv.StartSwtpm(t, f.tpms[1]), filepath.Join(t.TempDir(), "other"), "--token", used)
	expired, _ := token(t, f.srv, "--ttl", "1s")
	revoked, revokedID := token(t, f.srv)
	if _, err := f.srv.Admin("tokens", "revoke", revokedID); err != nil {
		t.Fatal(err)
	}
	bound, _ := token(t, f.srv, "--ek-fingerprint", fingerprint(t, f.tpms[1]))
	time.Sleep(1100 * time.Millisecond) // let the 1s token expire

	for _, tc := range []struct{ name, secret, reason string }{
		{"used", used, "used"},
		{"expired", expired, "expired"},
		{"revoked", revoked, "revoked"},
		{"bound to another EK", bound, "bound"},
		{"unknown", "rgt_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "not found"},
	} {
		before := snap(t, d)
		_, err := f.srv.Enroll(ctx, sw, filepath.Join(t.TempDir(), "agent"), "--token", tc.secret)
		if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(strings.ToLower(err.Error()), tc.reason) {
			t.Errorf("%s token: %v, want PermissionDenied naming %q", tc.name, err, tc.reason)
			continue
		}
		assertRefusedCleanly(t, d, before, codes.PermissionDenied, tc.name+" token")
	}
}

// TestEKTrust: an EK certified by a manufacturer the server does not trust
// is refused; an EK without a certificate enrolls only when its
// fingerprint is allowlisted.
func TestEKTrust(t *testing.T) {
	t.Parallel()
	trusted := testenv.NewEKCA(t)
	trusted.Manufacture(t) // makes the CA's root and issuer
	rogue := testenv.NewEKCA(t)
	rogueTPM := rogue.Manufacture(t)
	bare := []*testenv.TPMState{trusted.ManufactureNoCert(t), trusted.ManufactureNoCert(t)}
	swAllowed, swBare := testenv.StartSwtpm(t, bare[0]), testenv.StartSwtpm(t, bare[1])

	// The allowlisted EK's fingerprint, read from its TPM.
	tpm := swAllowed.OpenTPM(t)
	eks, err := tpm.EKs()
	if err != nil || len(eks) == 0 {
		t.Fatalf("EKs: %v", err)
	}
	allowedFP, err := attestor.EKFingerprint(eks[0].Public)
	if err != nil {
		t.Fatal(err)
	}
	tpm.Close()

	srv := testenv.StartServer(t, rootgateBin, testenv.SoftHSM(t), testenv.ServerOptions{
		Mode: "token", EKRoots: trusted.RootsDir(t), EKAllowlist: []string{allowedFP},
	})
	d := db(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, tc := range []struct {
		name string
		sw   *testenv.Swtpm
	}{
		{"EK certificate from an unconfigured CA", testenv.StartSwtpm(t, rogueTPM)},
		{"EK neither certified nor allowlisted", swBare},
	} {
		secret, _ := token(t, srv)
		before := snap(t, d)
		_, err := srv.Enroll(ctx, tc.sw, filepath.Join(t.TempDir(), "agent"), "--token", secret)
		if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "EK") {
			t.Errorf("%s: %v, want PermissionDenied naming the EK", tc.name, err)
			continue
		}
		assertRefusedCleanly(t, d, before, codes.PermissionDenied, tc.name)
	}

	secret, _ := token(t, srv)
	r := enroll(t, srv, swAllowed, filepath.Join(t.TempDir(), "allowed"), "--token", secret)
	want, _ := attestor.DeviceIDFromFingerprint(allowedFP)
	if r.DeviceID != want {
		t.Fatalf("allowlisted device enrolled as %s, want %s", r.DeviceID, want)
	}
}
