package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/inventory"
)

const ekFP = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// openStore opens a fresh inventory store in a temporary directory.
func openStore(t testing.TB) *inventory.Store {
	t.Helper()
	st, err := inventory.Open(context.Background(), filepath.Join(t.TempDir(), "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func deviceCSR(t testing.TB) ([]byte, crypto.PublicKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der, k.Public()
}

// TestHSMRootAndRerun bootstraps a root whose key is in SoftHSM, issues a
// device certificate journaled in the real store, checks it with openssl,
// then "runs again": a new token session finds the same key by label and
// keeps issuing under the same chain.
func TestHSMRootAndRerun(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	tok := openToken(t)
	signer, created, err := tok.FindOrGenerateSigner(ctx, "ca-root", hsm.KeyAlgorithm("ecdsa-p256"))
	if err != nil || !created {
		t.Fatalf("FindOrGenerateSigner = created %v, %v", created, err)
	}
	info, err := signer.KeyInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Sensitive || info.Extractable || !info.NeverExtractable || !info.AlwaysSensitive {
		t.Errorf("CA key attributes: %+v", info)
	}
	res, err := ca.Init(ctx, signer, ca.InitOptions{DataDir: data, CommonName: "HSM Root"})
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t)
	chain, err := ca.LoadChain(data)
	if err != nil {
		t.Fatal(err)
	}
	is, err := ca.New(signer, chain, st, ca.Config{TrustDomain: "corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := deviceCSR(t)
	got, err := is.IssueDeviceCSR(ctx, csr, ca.DeviceRequest{DeviceID: "dev-1", EKFingerprint: ekFP})
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.GetCertificate(ctx, got.Certificate.SerialNumber.Text(16))
	if err != nil || !bytes.Equal(c.DER, got.Certificate.Raw) {
		t.Fatalf("journaled certificate: %v, %v", c, err)
	}
	text := openssl(t, res.Certificate, nil, got.Certificate)
	if !strings.Contains(text, "URI:spiffe://corp.example/device/dev-1") {
		t.Errorf("openssl x509 -text lacks the SPIFFE URI:\n%s", text)
	}

	// Run again: a fresh session finds the key by label, no new key.
	tok2 := openToken(t)
	again, created, err := tok2.FindOrGenerateSigner(ctx, "ca-root", hsm.KeyAlgorithm("ecdsa-p256"))
	if err != nil || created {
		t.Fatalf("second FindOrGenerateSigner = created %v, %v", created, err)
	}
	if !again.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(signer.Public()) {
		t.Fatal("second run found a different public key")
	}
	if _, err := ca.Init(ctx, again, ca.InitOptions{DataDir: data}); !errors.Is(err, ca.ErrCAExists) {
		t.Errorf("second Init = %v, want ErrCAExists", err)
	}
	is2, err := ca.New(again, chain, st, ca.Config{TrustDomain: "corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	got2, err := is2.IssueDeviceCSR(ctx, csr, ca.DeviceRequest{DeviceID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	openssl(t, res.Certificate, nil, got2.Certificate)
	if certs, err := st.ListCertificates(ctx, "dev-1"); err != nil || len(certs) != 2 {
		t.Errorf("ListCertificates = %d, %v; want 2", len(certs), err)
	}
}

// TestHSMIntermediate: init --intermediate with the key in SoftHSM, an
// offline root signs the CSR, import-cert installs it; a certificate for a
// different key is refused.
func TestHSMIntermediate(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	tok := openToken(t)
	signer, err := tok.GenerateSigner(ctx, "ca-intermediate", hsm.KeyAlgorithm("ecdsa-p384"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(ctx, signer, ca.InitOptions{DataDir: data, Intermediate: true})
	if err != nil {
		t.Fatal(err)
	}
	rootKey, root := offlineRoot(t)
	inter := signCA(t, res.CSR.PublicKey, res.CSR.Subject, rootKey, root)
	_, otherPub := deviceCSR(t)
	wrong := signCA(t, otherPub, res.CSR.Subject, rootKey, root)
	if _, err := ca.ImportCert(ctx, signer, data, ca.EncodeCertificates([]*x509.Certificate{wrong}), ca.EncodeCertificates([]*x509.Certificate{root})); !errors.Is(err, ca.ErrCertificate) {
		t.Errorf("import of a certificate for another key = %v, want ErrCertificate", err)
	}
	chain, err := ca.ImportCert(ctx, signer, data, ca.EncodeCertificates([]*x509.Certificate{inter}), ca.EncodeCertificates([]*x509.Certificate{root}))
	if err != nil {
		t.Fatal(err)
	}
	is, err := ca.New(signer, chain, openStore(t), ca.Config{TrustDomain: "corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := deviceCSR(t)
	got, err := is.IssueDeviceCSR(ctx, csr, ca.DeviceRequest{DeviceID: "dev-2", EKFingerprint: ekFP})
	if err != nil {
		t.Fatal(err)
	}
	openssl(t, root, []*x509.Certificate{inter}, got.Certificate)
}

// TestHSMJournalFailure: with the store closed the journal fails, and no
// certificate comes back.
func TestHSMJournalFailure(t *testing.T) {
	ctx := context.Background()
	signer, chain := hsmRoot(t, "ca-journal")
	st, err := inventory.Open(ctx, filepath.Join(t.TempDir(), "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	is, err := ca.New(signer, chain, st, ca.Config{TrustDomain: "corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	_, pub := deviceCSR(t)
	got, err := is.IssueDevice(ctx, ca.DeviceRequest{PublicKey: pub, DeviceID: "dev-3"})
	if got != nil || !errors.Is(err, ca.ErrJournal) {
		t.Fatalf("IssueDevice with a closed store = %v, %v; want no certificate and ErrJournal", got, err)
	}
}

// hsmRoot finds or makes a SoftHSM key and self-signs a root for it.
func hsmRoot(t testing.TB, label string) (crypto.Signer, []*x509.Certificate) {
	t.Helper()
	tok := openToken(t)
	signer, _, err := tok.FindOrGenerateSigner(context.Background(), label, hsm.KeyAlgorithm("ecdsa-p256"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(context.Background(), signer, ca.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return signer, []*x509.Certificate{res.Certificate}
}

func offlineRoot(t *testing.T) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Offline Root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, c
}

func signCA(t *testing.T, pub crypto.PublicKey, subject pkix.Name, rootKey crypto.Signer, root *x509.Certificate) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, pub, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// openssl verifies leaf against root (with untrusted intermediates) and
// returns `openssl x509 -text` of the leaf.
func openssl(t *testing.T, root *x509.Certificate, inter []*x509.Certificate, leaf *x509.Certificate) string {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not installed: run `make deps`")
	}
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, ca.EncodeCertificates(certs), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", write("root.pem", root)}
	if len(inter) > 0 {
		args = append(args, "-untrusted", write("chain.pem", inter...))
	}
	leafPath := write("leaf.pem", leaf)
	out, err := exec.Command(bin, append(args, leafPath)...).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(": OK")) {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	text, err := exec.Command(bin, "x509", "-noout", "-text", "-in", leafPath).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509 -text: %v\n%s", err, text)
	}
	return string(text)
}
