package swtpmtests

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/internal/testenv"
)

// TestProtocolAttacks drives the enrollment protocol by hand against the
// rootgate server binary and tampers with each piece of evidence. Every
// attempt must be refused with a specific gRPC code and a message that
// names what failed, create no device, issue no certificate, and write one
// refusal event. At the end the honest device still enrolls.
func TestProtocolAttacks(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	f := newFleet(t, 2, testenv.ServerOptions{Mode: "token", PendingTTL: ttl})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := client(t, f.srv)
	d := db(t, f.srv)
	secret, _ := token(t, f.srv)

	swA, swB := testenv.StartSwtpm(t, f.tpms[0]), testenv.StartSwtpm(t, f.tpms[1])
	devA := testenv.NewDevice(t, swA.OpenTPM(t), f.tpms[0].EKCert)
	devB := testenv.NewDevice(t, swB.OpenTPM(t), f.tpms[1].EKCert)

	begin := func(req *rootgatev1.BeginEnrollmentRequest) *rootgatev1.BeginEnrollmentResponse {
		t.Helper()
		b, err := c.BeginEnrollment(ctx, req)
		if err != nil {
			t.Fatalf("BeginEnrollment: %v", err)
		}
		if b.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE || len(b.Nonce) < 16 {
			t.Fatalf("BeginEnrollment: %v", b)
		}
		return b
	}
	refuse := func(code codes.Code, what string, call func() error, fragments ...string) {
		t.Helper()
		before := snap(t, d)
		wantCode(t, call(), code, what, fragments...)
		assertRefusedCleanly(t, d, before, code, what)
	}
	finish := func(req *rootgatev1.FinishEnrollmentRequest) func() error {
		return func() error { _, err := c.FinishEnrollment(ctx, req); return err }
	}

	t.Run("AKOfAnotherTPM", func(t *testing.T) {
		// A's EK with B's AK: the credential is sealed to A's EK for B's
		// AK. Neither TPM can open it, so no answer exists.
		req := devA.Begin(secret)
		req.Ak = testenv.AKParameters(devB.AK)
		b := begin(req)
		ec := attest.EncryptedCredential{Credential: b.Credential.Credential, Secret: b.Credential.Secret}
		if _, err := devB.AK.ActivateCredential(devB.TPM, ec); err == nil {
			t.Fatal("TPM B activated a credential sealed to TPM A's EK")
		}
		if _, err := devA.AK.ActivateCredential(devA.TPM, ec); err == nil {
			t.Fatal("TPM A activated a credential made for TPM B's AK")
		}
		// The attacker answers with what it has: B's own evidence.
		fake, _ := devB.Answer(t, begin(devB.Begin(secret)))
		fake.EnrollmentId = b.EnrollmentId
		refuse(codes.PermissionDenied, "AK of another TPM", finish(fake), "activation")
	})

	t.Run("WrongActivationAnswer", func(t *testing.T) {
		req, _ := devA.Answer(t, begin(devA.Begin(secret)))
		req.ActivationSecret[0] ^= 0xff
		refuse(codes.PermissionDenied, "wrong activation answer", finish(req), "activation")
	})

	t.Run("ChallengeUsedTwice", func(t *testing.T) {
		req, _ := devA.Answer(t, begin(devA.Begin(secret)))
		req.ActivationSecret[0] ^= 0xff
		refuse(codes.PermissionDenied, "first use", finish(req), "activation")
		req.ActivationSecret[0] ^= 0xff // now the right answer, but the challenge is spent
		refuse(codes.FailedPrecondition, "challenge used twice", finish(req), "enrollment")
	})

	t.Run("ChallengeAfterTTL", func(t *testing.T) {
		b := begin(devA.Begin(secret))
		req, _ := devA.Answer(t, b)
		time.Sleep(ttl + 500*time.Millisecond)
		refuse(codes.FailedPrecondition, "challenge after its TTL", finish(req), "expired")
	})

	t.Run("KeyCertifiedByAnotherAK", func(t *testing.T) {
		b := begin(devA.Begin(secret))
		req, _ := devA.Answer(t, b)
		// TPM B's AK certifies a TPM B key over A's nonce (a TPM holds
		// only three transient objects, so the other AK lives on B).
		key, err := devB.TPM.NewKey(devB.AK, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: b.Nonce})
		if err != nil {
			t.Fatal(err)
		}
		defer key.Close()
		req.DeviceKey = testenv.CertificationParameters(key.CertificationParameters())
		req.Csr = csrFor(t, key)
		refuse(codes.PermissionDenied, "device key certified by a different AK", finish(req), "certif")
	})

	t.Run("CertificationOverAnotherNonce", func(t *testing.T) {
		b := begin(devA.Begin(secret))
		req, _ := devA.Answer(t, b)
		key, err := devA.TPM.NewKey(devA.AK, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: []byte("some other nonce, chosen by me")})
		if err != nil {
			t.Fatal(err)
		}
		defer key.Close()
		req.DeviceKey = testenv.CertificationParameters(key.CertificationParameters())
		req.Csr = csrFor(t, key)
		refuse(codes.PermissionDenied, "certification over another nonce", finish(req), "nonce")
	})

	t.Run("CSRKeyIsNotTheCertifiedKey", func(t *testing.T) {
		req, _ := devA.Answer(t, begin(devA.Begin(secret)))
		soft, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		req.Csr = csrSignedBy(t, soft)
		refuse(codes.PermissionDenied, "CSR key differs from the certified key", finish(req), "key")
	})

	t.Run("SoftwareKeyPassedOffAsTPMKey", func(t *testing.T) {
		// The attacker keeps a genuine certification's attestation and
		// signature but swaps in the public area of a key it generated
		// in software, claiming the TPM attributes.
		req, _ := devA.Answer(t, begin(devA.Begin(secret)))
		swKey, err := devA.TPM.NewKey(devA.AK, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		otherPublic := swKey.CertificationParameters().Public
		swKey.Close()
		req.DeviceKey.Public = otherPublic
		refuse(codes.PermissionDenied, "software key passed off as the certified key", finish(req), "certif")
	})

	t.Run("QuoteOverAnotherNonce", func(t *testing.T) {
		b := begin(devA.Begin(secret))
		req, _ := devA.Answer(t, b)
		devA.AddQuote(t, req, []byte("stale nonce from yesterday......"))
		refuse(codes.PermissionDenied, "quote over another nonce", finish(req), "nonce")
	})

	t.Run("Malformed", func(t *testing.T) {
		req := devA.Begin(secret)
		req.EkPublic = []byte{0x30, 0x03, 0x02, 0x01}
		refuse(codes.InvalidArgument, "truncated EK public key", func() error { _, err := c.BeginEnrollment(ctx, req); return err }, "ek")

		req = devA.Begin(secret)
		req.Ak.Public = req.Ak.Public[:len(req.Ak.Public)/2]
		refuse(codes.InvalidArgument, "truncated AK public area", func() error { _, err := c.BeginEnrollment(ctx, req); return err }, "ak")

		good, _ := devA.Answer(t, begin(devA.Begin(secret)))
		bad := proto.Clone(good).(*rootgatev1.FinishEnrollmentRequest)
		bad.DeviceKey.CreateAttestation = bad.DeviceKey.CreateAttestation[:7]
		refuse(codes.InvalidArgument, "truncated certification", finish(bad))

		good, _ = devA.Answer(t, begin(devA.Begin(secret)))
		bad = proto.Clone(good).(*rootgatev1.FinishEnrollmentRequest)
		bad.Csr = []byte("not a CSR")
		refuse(codes.InvalidArgument, "garbage CSR", finish(bad), "csr")
	})

	// Nothing above issued anything; the honest device still enrolls, with
	// the same token all the refused attempts presented.
	if n := count(t, d, `SELECT count(*) FROM certificates WHERE kind='device'`); n != 0 {
		t.Fatalf("%d device certificates issued by refused attempts", n)
	}
	req, pub := devA.Answer(t, begin(devA.Begin(secret)))
	fin, err := c.FinishEnrollment(ctx, req)
	if err != nil {
		t.Fatalf("honest enrollment after the attacks: %v", err)
	}
	cert, err := x509.ParseCertificate(fin.Certificate)
	if err != nil || !samePublicKey(cert.PublicKey, pub) {
		t.Fatalf("honest certificate: %v", err)
	}
}

// TestBeginFlood: past max_pending outstanding challenges, Begin gets
// ResourceExhausted; the server keeps serving, and an outstanding
// challenge still finishes.
func TestBeginFlood(t *testing.T) {
	t.Parallel()
	const maxPending = 5
	f := newFleet(t, 1, testenv.ServerOptions{Mode: "token", MaxPending: maxPending})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := client(t, f.srv)
	secret, _ := token(t, f.srv)
	dev := testenv.NewDevice(t, testenv.StartSwtpm(t, f.tpms[0]).OpenTPM(t), f.tpms[0].EKCert)

	var first *rootgatev1.BeginEnrollmentResponse
	exhausted := 0
	for i := 0; i < 3*maxPending; i++ {
		b, err := c.BeginEnrollment(ctx, dev.Begin(secret))
		switch {
		case err == nil && i < maxPending:
			if first == nil {
				first = b
			}
		case err != nil:
			wantCode(t, err, codes.ResourceExhausted, "Begin past the cap")
			exhausted++
		default:
			t.Fatalf("Begin %d succeeded past the cap of %d", i+1, maxPending)
		}
	}
	if exhausted != 2*maxPending {
		t.Fatalf("%d Begin calls refused, want %d", exhausted, 2*maxPending)
	}
	req, _ := dev.Answer(t, first)
	if _, err := c.FinishEnrollment(ctx, req); err != nil {
		t.Fatalf("Finish of an outstanding challenge during the flood: %v", err)
	}
	// The finished challenge freed a place.
	if _, err := c.BeginEnrollment(ctx, dev.Begin("")); err != nil {
		t.Fatalf("Begin after a place was freed: %v", err)
	}
}

// csrFor returns a CSR signed by a TPM key.
func csrFor(t *testing.T, key *attest.Key) []byte {
	t.Helper()
	priv, err := key.Private(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return csrSignedBy(t, priv.(crypto.Signer))
}

func csrSignedBy(t *testing.T, s crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, s)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
