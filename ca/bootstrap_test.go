package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitRoot(t *testing.T) {
	dir := t.TempDir()
	key := newECKey(t, elliptic.P256())
	res, err := Init(context.Background(), key, InitOptions{DataDir: dir, CommonName: "Test Root", Validity: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := res.Certificate
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("basic constraints: CA=%v valid=%v pathlen=%d zero=%v", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if len(c.SubjectKeyId) != 20 || c.Subject.CommonName != "Test Root" {
		t.Errorf("SKID %x subject %v", c.SubjectKeyId, c.Subject)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if res.Path != ChainPath(dir) {
		t.Errorf("Path = %q", res.Path)
	}
	chain, err := LoadChain(dir)
	if err != nil || len(chain) != 1 || !chain[0].Equal(c) {
		t.Fatalf("LoadChain = %v, %v", chain, err)
	}
	// A second Init refuses to replace the CA.
	if _, err := Init(context.Background(), key, InitOptions{DataDir: dir}); !errors.Is(err, ErrCAExists) {
		t.Errorf("second Init: %v, want ErrCAExists", err)
	}
	// LoadChain of an empty directory.
	if _, err := LoadChain(t.TempDir()); !errors.Is(err, ErrNoCA) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadChain(empty) = %v, want ErrNoCA and fs.ErrNotExist", err)
	}
}

// testRoot is an offline root made with an in-memory key (path length 1 so
// it can sign an intermediate).
func testRoot(t *testing.T) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	key := newECKey(t, elliptic.P384())
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Offline Root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * 365 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
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

// signCSR signs csr as an intermediate CA under root, or as a leaf when ca
// is false.
func signCSR(t *testing.T, csr *x509.CertificateRequest, rootKey crypto.Signer, root *x509.Certificate, isCA bool, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               csr.Subject,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		MaxPathLenZero:        isCA,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, csr.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pemOf(certs ...*x509.Certificate) []byte { return EncodeCertificates(certs) }

func TestIntermediateFlow(t *testing.T) {
	dir := t.TempDir()
	key := newECKey(t, elliptic.P256())
	res, err := Init(context.Background(), key, InitOptions{DataDir: dir, Intermediate: true, CommonName: "Rootgate Issuing CA"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Certificate != nil || res.CSR == nil || res.Path != CSRPath(dir) {
		t.Fatalf("result = %+v", res)
	}
	csr, err := LoadCSR(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil || !publicKeysEqual(csr.PublicKey, key.Public()) || csr.Subject.CommonName != "Rootgate Issuing CA" {
		t.Fatalf("CSR: %v, subject %v", err, csr.Subject)
	}
	requested := map[string]bool{}
	for _, e := range csr.Extensions {
		requested[e.Id.String()] = e.Critical
	}
	if !requested["2.5.29.19"] || !requested["2.5.29.15"] {
		t.Errorf("CSR does not request critical basicConstraints and keyUsage: %v", requested)
	}
	if _, err := LoadChain(dir); !errors.Is(err, ErrNoCA) {
		t.Errorf("LoadChain before import: %v, want ErrNoCA", err)
	}

	rootKey, root := testRoot(t)
	inter := signCSR(t, csr, rootKey, root, true, time.Now().Add(90*24*time.Hour))

	// Refusals first: each leaves no chain behind.
	otherKey := newECKey(t, elliptic.P256())
	otherCSR, err := x509.ParseCertificateRequest(makeCSR(t, otherKey))
	if err != nil {
		t.Fatal(err)
	}
	mismatched := signCSR(t, otherCSR, rootKey, root, true, time.Now().Add(time.Hour))
	if _, err := ImportCert(context.Background(), key, dir, pemOf(mismatched), pemOf(root)); !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), "HSM key") {
		t.Errorf("mismatching certificate: %v, want ErrCertificate naming the HSM key", err)
	}
	notCA := signCSR(t, csr, rootKey, root, false, time.Now().Add(time.Hour))
	if _, err := ImportCert(context.Background(), key, dir, pemOf(notCA), pemOf(root)); !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("non-CA certificate: %v, want ErrCertificate", err)
	}
	if _, err := ImportCert(context.Background(), key, dir, pemOf(inter), nil); !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), "root") {
		t.Errorf("no root: %v, want ErrCertificate naming the root", err)
	}
	_, strangerRoot := testRoot(t)
	if _, err := ImportCert(context.Background(), key, dir, pemOf(inter), pemOf(strangerRoot)); !errors.Is(err, ErrCertificate) {
		t.Errorf("wrong root: %v, want ErrCertificate", err)
	}
	if _, err := os.Stat(ChainPath(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused import left %s behind", ChainPath(dir))
	}

	chain, err := ImportCert(context.Background(), key, dir, pemOf(inter), pemOf(root))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[0].Equal(inter) || !chain[1].Equal(root) {
		t.Fatalf("chain = %v", chain)
	}
	if _, err := os.Stat(CSRPath(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Error("pending CSR not removed after import")
	}
	loaded, err := LoadChain(dir)
	if err != nil || len(loaded) != 2 {
		t.Fatalf("LoadChain = %v, %v", loaded, err)
	}
	// The certificate file may carry the chain itself.
	if _, err := ImportCert(context.Background(), key, t.TempDir(), pemOf(inter, root), nil); err != nil {
		t.Errorf("certificate file with the chain: %v", err)
	}

	is, err := New(key, loaded, &memJournal{}, Config{TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	// The intermediate expires in 90 days: a leaf never outlives it.
	is2, err := New(key, loaded, &memJournal{}, Config{TrustDomain: "example.org", MaxLifetime: 200 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	long, err := is2.IssueDevice(context.Background(), DeviceRequest{PublicKey: otherKey.Public(), DeviceID: "d", Lifetime: 150 * 24 * time.Hour})
	if err != nil || !long.Certificate.NotAfter.Equal(inter.NotAfter) {
		t.Errorf("long leaf: %v, %v; want clamped to %v", long, err, inter.NotAfter)
	}
	leaf, err := is.IssueDevice(context.Background(), DeviceRequest{PublicKey: otherKey.Public(), DeviceID: "dev-7", EKFingerprint: testFP})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Certificate.Verify(x509.VerifyOptions{Roots: pool(root), Intermediates: pool(inter), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify through the intermediate: %v", err)
	}
	opensslVerify(t, root, []*x509.Certificate{inter}, leaf.Certificate)
}

func TestOpenSSLVerifyRoot(t *testing.T) {
	ca := newTestCA(t, Config{TrustDomain: "corp.example"}, InitOptions{})
	got, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: newECKey(t, elliptic.P256()).Public(), DeviceID: "dev-42", EKFingerprint: testFP})
	if err != nil {
		t.Fatal(err)
	}
	text := opensslVerify(t, ca.cert, nil, got.Certificate)
	for _, want := range []string{"URI:spiffe://corp.example/device/dev-42", "TLS Web Client Authentication", "Digital Signature", "CA:FALSE"} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
}

// opensslVerify runs `openssl verify` on leaf against root (with the
// untrusted intermediates) and returns `openssl x509 -text` of the leaf.
func opensslVerify(t *testing.T, root *x509.Certificate, inter []*x509.Certificate, leaf *x509.Certificate) string {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not installed: run `make deps`")
	}
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pemOf(certs...), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", write("root.pem", root)}
	if len(inter) > 0 {
		args = append(args, "-untrusted", write("chain.pem", inter...))
	}
	args = append(args, write("leaf.pem", leaf))
	out, err := exec.Command(openssl, args...).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(": OK")) {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	text, err := exec.Command(openssl, "x509", "-noout", "-text", "-in", filepath.Join(dir, "leaf.pem")).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509 -text: %v\n%s", err, text)
	}
	return string(text)
}

func TestOpenSSLSignsIntermediateCSR(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not installed: run `make deps`")
	}
	dir := t.TempDir()
	key := newECKey(t, elliptic.P256())
	if _, err := Init(context.Background(), key, InitOptions{DataDir: dir, Intermediate: true}); err != nil {
		t.Fatal(err)
	}
	// An offline root made by openssl; its CSR extensions are copied.
	w := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Dir = w
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", "root.key", "-out", "root.pem",
		"-subj", "/CN=OpenSSL Offline Root", "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:1", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	run("x509", "-req", "-in", CSRPath(dir), "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial", "-days", "10", "-copy_extensions", "copyall", "-out", "inter.pem")
	certPEM, err := os.ReadFile(filepath.Join(w, "inter.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(w, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ImportCert(context.Background(), key, dir, certPEM, rootPEM)
	if err != nil {
		t.Fatalf("import the openssl-signed intermediate: %v", err)
	}
	if !chain[0].IsCA || chain[0].MaxPathLen != 0 || chain[0].KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("copied extensions: CA=%v pathlen=%d ku=%v", chain[0].IsCA, chain[0].MaxPathLen, chain[0].KeyUsage)
	}
	is, err := New(key, chain, &memJournal{}, Config{TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := is.IssueDevice(context.Background(), DeviceRequest{PublicKey: newECKey(t, elliptic.P256()).Public(), DeviceID: "d"})
	if err != nil {
		t.Fatal(err)
	}
	opensslVerify(t, chain[1], chain[:1], leaf.Certificate)
}

func TestParseCertificates(t *testing.T) {
	_, root := testRoot(t)
	for name, in := range map[string][]byte{
		"PEM":              pemOf(root),
		"DER":              root.Raw,
		"PEM with a key":   append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), pemOf(root)...),
		"PEM, leading txt": append([]byte("subject=...\n"), pemOf(root)...),
	} {
		got, err := ParseCertificates(in)
		if err != nil || len(got) != 1 || !got[0].Equal(root) {
			t.Errorf("%s: %v, %v", name, got, err)
		}
	}
	if got, err := ParseCertificates(nil); err != nil || got != nil {
		t.Errorf("empty: %v, %v", got, err)
	}
	if _, err := ParseCertificates([]byte("garbage")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestLoadChainRejectsBrokenChain(t *testing.T) {
	dir := t.TempDir()
	_, root := testRoot(t)
	_, stranger := testRoot(t)
	if err := writeFileAtomic(ChainPath(dir), pemOf(root, stranger)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadChain(dir); !errors.Is(err, ErrCertificate) {
		t.Errorf("LoadChain(broken) = %v, want ErrCertificate", err)
	}
}
