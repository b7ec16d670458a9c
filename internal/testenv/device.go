package testenv

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/google/go-attestation/attest"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
)

// Device drives the device side of the enrollment protocol by hand with
// go-attestation, so tests can answer a challenge correctly or tamper with
// any part of the answer. The agent package is the real client; this is
// for tests that need to step outside it.
type Device struct {
	TPM      *attest.TPM
	EKPublic []byte // PKIX DER
	EKCert   []byte // DER, nil when the TPM has none
	AK       *attest.AK
}

// NewDevice reads the TPM's first (RSA) EK and creates a fresh AK, flushed
// by t.Cleanup.
func NewDevice(tb testing.TB, tpm *attest.TPM, ekCert []byte) *Device {
	tb.Helper()
	eks, err := tpm.EKs()
	if err != nil || len(eks) == 0 {
		tb.Fatalf("testenv: EKs: %v (%d)", err, len(eks))
	}
	der, err := x509.MarshalPKIXPublicKey(eks[0].Public)
	if err != nil {
		tb.Fatal(err)
	}
	ak, err := tpm.NewAK(nil)
	if err != nil {
		tb.Fatalf("testenv: NewAK: %v", err)
	}
	tb.Cleanup(func() { ak.Close(tpm) })
	return &Device{TPM: tpm, EKPublic: der, EKCert: ekCert, AK: ak}
}

// AKParameters returns the wire form of an AK's attestation parameters.
func AKParameters(ak *attest.AK) *rootgatev1.AttestationParameters {
	p := ak.AttestationParameters()
	return &rootgatev1.AttestationParameters{
		Public: p.Public, UseTcsdActivationFormat: p.UseTCSDActivationFormat,
		CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature,
	}
}

// Begin returns a BeginEnrollment request for the device with the token.
func (d *Device) Begin(token string) *rootgatev1.BeginEnrollmentRequest {
	return &rootgatev1.BeginEnrollmentRequest{
		EkPublic:        d.EKPublic,
		EkCertificate:   d.EKCert,
		Ak:              AKParameters(d.AK),
		Facts:           &rootgatev1.DeviceFacts{Hostname: "swtpm-box", Os: "linux", AgentVersion: "test"},
		EnrollmentToken: token,
	}
}

// Activate answers the credential-activation challenge with the device's AK.
func (d *Device) Activate(tb testing.TB, b *rootgatev1.BeginEnrollmentResponse) []byte {
	tb.Helper()
	secret, err := d.AK.ActivateCredential(d.TPM, attest.EncryptedCredential{
		Credential: b.GetCredential().GetCredential(), Secret: b.GetCredential().GetSecret(),
	})
	if err != nil {
		tb.Fatalf("testenv: ActivateCredential: %v", err)
	}
	return secret
}

// Answer does the device's TPM work for a challenge: activation, a device
// key certified by the AK over the nonce, a quote over the nonce, a CSR
// signed by the device key. It returns the request and the device key's
// public key. The key is flushed from the TPM before Answer returns (a TPM
// holds few transient objects).
func (d *Device) Answer(tb testing.TB, b *rootgatev1.BeginEnrollmentResponse) (*rootgatev1.FinishEnrollmentRequest, crypto.PublicKey) {
	tb.Helper()
	secret := d.Activate(tb, b)
	key, err := d.TPM.NewKey(d.AK, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: b.GetNonce()})
	if err != nil {
		tb.Fatalf("testenv: NewKey: %v", err)
	}
	defer key.Close()
	priv, err := key.Private(key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, priv.(crypto.Signer))
	if err != nil {
		tb.Fatalf("testenv: CSR: %v", err)
	}
	req := &rootgatev1.FinishEnrollmentRequest{
		EnrollmentId:     b.GetEnrollmentId(),
		ActivationSecret: secret,
		DeviceKey:        CertificationParameters(key.CertificationParameters()),
		Csr:              csr,
	}
	d.AddQuote(tb, req, b.GetNonce())
	return req, key.Public()
}

// CertificationParameters returns the wire form of a key certification.
func CertificationParameters(cp attest.CertificationParameters) *rootgatev1.CertificationParameters {
	return &rootgatev1.CertificationParameters{
		Public: cp.Public, CreateData: cp.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature,
	}
}

// AddQuote sets the request's quote (by the device's AK over nonce) and
// its SHA-256 PCRs.
func (d *Device) AddQuote(tb testing.TB, req *rootgatev1.FinishEnrollmentRequest, nonce []byte) {
	tb.Helper()
	q, err := d.AK.Quote(d.TPM, nonce, attest.HashSHA256)
	if err != nil {
		tb.Fatalf("testenv: Quote: %v", err)
	}
	pcrs, err := d.TPM.PCRs(attest.HashSHA256)
	if err != nil {
		tb.Fatalf("testenv: PCRs: %v", err)
	}
	req.Quotes = []*rootgatev1.Quote{{Quote: q.Quote, Signature: q.Signature}}
	req.Pcrs = req.Pcrs[:0]
	for _, p := range pcrs {
		req.Pcrs = append(req.Pcrs, &rootgatev1.PCR{Index: uint32(p.Index), Digest: p.Digest, Algorithm: rootgatev1.HashAlgorithm_HASH_ALGORITHM_SHA256})
	}
}
