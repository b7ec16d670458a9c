package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"io"
	"log/slog"
	"testing"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/rootgate/rootgate/internal/testenv"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestTPMAKAndDeviceKey runs the TPM side of enrollment against a real
// swtpm: the EK with its certificate, an ECC AK created then reloaded
// through the state directory, credential activation against the RSA EK,
// a device key certified with the nonce as qualifying data, and a CSR
// signed inside the TPM.
func TestTPMAKAndDeviceKey(t *testing.T) {
	ekca := testenv.NewEKCA(t)
	sw := testenv.StartSwtpm(t, ekca.Manufacture(t))
	tpm := sw.OpenTPM(t)
	sd, err := OpenStateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	eks, err := tpm.EKs()
	if err != nil {
		t.Fatal(err)
	}
	ek, err := chooseEK(eks)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ek.Public.(*rsa.PublicKey); !ok || ek.Certificate == nil {
		t.Fatalf("EK %T with certificate %v, want RSA with a certificate", ek.Public, ek.Certificate != nil)
	}
	if err := ek.Certificate.CheckSignatureFrom(ekca.Issuer()); err != nil {
		t.Fatalf("EK certificate not from the test EK CA: %v", err)
	}
	t.Log(describeEK(ek))

	// First run creates and saves the AK; the second loads the same AK.
	ak, created, err := loadOrCreateAK(tpm, sd, discardLogger())
	if err != nil || !created {
		t.Fatalf("first loadOrCreateAK: created=%v err=%v", created, err)
	}
	ap1 := ak.AttestationParameters()
	if err := ak.Close(tpm); err != nil {
		t.Fatal(err)
	}
	checkMode(t, sd.File(AKFile), FileMode)
	ak, created, err = loadOrCreateAK(tpm, sd, discardLogger())
	if err != nil || created {
		t.Fatalf("second loadOrCreateAK: created=%v err=%v", created, err)
	}
	defer ak.Close(tpm)
	ap := ak.AttestationParameters()
	if !bytes.Equal(ap.Public, ap1.Public) || !bytes.Equal(ap.CreateAttestation, ap1.CreateAttestation) {
		t.Fatal("reloaded AK differs from the saved one")
	}
	akPub, err := attest.ParseAKPublic(ap.Public)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := akPub.Public.(*ecdsa.PublicKey); !ok {
		t.Fatalf("AK is %T, want ECDSA", akPub.Public)
	}

	// The ECC AK activates against the RSA EK.
	act := attest.ActivationParameters{EK: ek.Public, AK: ap}
	want, ec, err := act.Generate()
	if err != nil {
		t.Fatalf("challenge for the AK: %v", err)
	}
	got, err := ak.ActivateCredentialWithEK(tpm, *ec, ek)
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("activation returned a different secret")
	}

	// A garbage blob is replaced by a new AK.
	if err := sd.Write(AKFile, []byte(`{"garbage":true}`)); err != nil {
		t.Fatal(err)
	}
	ak2, created, err := loadOrCreateAK(tpm, sd, discardLogger())
	if err != nil || !created {
		t.Fatalf("loadOrCreateAK over a bad blob: created=%v err=%v", created, err)
	}
	ak2.Close(tpm)

	// Device key certified by the (reloaded) AK with the nonce.
	nonce := bytes.Repeat([]byte{0x5a}, 32)
	key, err := newDeviceKey(tpm, ak, nonce)
	if err != nil {
		t.Fatal(err)
	}
	cp := key.CertificationParameters()
	if err := cp.Verify(attest.VerifyOpts{Public: akPub.Public, Hash: crypto.SHA256}); err != nil {
		t.Fatalf("certification does not verify with the AK: %v", err)
	}
	att, err := tpm2.DecodeAttestationData(cp.CreateAttestation)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(att.ExtraData, nonce) {
		t.Fatalf("certification ExtraData = %x, want the nonce", att.ExtraData)
	}
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve.Params().BitSize != 256 {
		t.Fatalf("device key %T, want ECDSA P-256", key.Public())
	}
	certPub, err := tpm2.DecodePublic(cp.Public)
	if err != nil {
		t.Fatal(err)
	}
	if certPub.Attributes&tpm2.FlagFixedTPM == 0 || certPub.Attributes&tpm2.FlagSensitiveDataOrigin == 0 {
		t.Fatalf("device key attributes %v: want fixedTPM and sensitiveDataOrigin", certPub.Attributes)
	}

	// CSR signed inside the TPM verifies and carries the device key.
	signer, err := keySigner(key)
	if err != nil {
		t.Fatal(err)
	}
	der, err := newCSR(signer, "devid", "spiffe://example.org/device/devid")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	if !pub.Equal(csr.PublicKey) || csr.Subject.CommonName != "devid" || len(csr.URIs) != 1 || csr.URIs[0].String() != "spiffe://example.org/device/devid" {
		t.Fatalf("CSR %+v", csr.Subject)
	}

	// The key blob reloads as the same TPM key, and signs. (swtpm has three
	// object slots and a persistent parent takes one while in use: unload
	// the first copy.)
	blob, err := key.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := key.Close(); err != nil {
		t.Fatal(err)
	}
	k2, err := tpm.LoadKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer k2.Close()
	s2, err := keySigner(k2)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("hello"))
	sig, err := s2.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("signature by the reloaded key does not verify with the device key")
	}

	// Quote with the nonce verifies against the PCRs.
	q, err := ak.Quote(tpm, nonce, attest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := tpm.PCRs(attest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := akPub.Verify(*q, pcrs, nonce); err != nil {
		t.Fatalf("quote: %v", err)
	}
	if pp := pcrsToProto(pcrs); len(pp) != 24 || pp[0].GetAlgorithm().String() != "HASH_ALGORITHM_SHA256" {
		t.Fatalf("pcrsToProto: %d PCRs, first %v", len(pp), pp[0].GetAlgorithm())
	}
}
