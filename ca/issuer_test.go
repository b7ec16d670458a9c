package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

const testFP = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestIssueDeviceTemplate(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t, Config{TrustDomain: "corp.example", Now: fixedNow(now)}, InitOptions{Now: fixedNow(now.Add(-time.Hour))})
	dev := newECKey(t, elliptic.P256())
	got, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: dev.Public(), DeviceID: "abcdefghijklmnopqrstuvwxyz234567", EKFingerprint: strings.ToUpper(testFP)})
	if err != nil {
		t.Fatal(err)
	}
	c := got.Certificate
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://corp.example/device/abcdefghijklmnopqrstuvwxyz234567" {
		t.Errorf("URI SANs = %v", c.URIs)
	}
	if len(c.DNSNames)+len(c.EmailAddresses)+len(c.IPAddresses) != 0 {
		t.Errorf("unexpected SANs: %v %v %v", c.DNSNames, c.EmailAddresses, c.IPAddresses)
	}
	pis, err := PermanentIdentifiers(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(pis) != 1 || pis[0].Value != testFP || !pis[0].Assigner.Equal(OIDTCG) {
		t.Errorf("permanentIdentifiers = %+v", pis)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("EKU = %v", c.ExtKeyUsage)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("basic constraints: IsCA=%v valid=%v", c.IsCA, c.BasicConstraintsValid)
	}
	if !bytes.Equal(c.AuthorityKeyId, ca.cert.SubjectKeyId) || len(c.AuthorityKeyId) == 0 {
		t.Errorf("AKID %x, CA SKID %x", c.AuthorityKeyId, ca.cert.SubjectKeyId)
	}
	if !c.NotBefore.Equal(now.Add(-time.Minute)) {
		t.Errorf("NotBefore = %v, want backdated 1m from %v", c.NotBefore, now)
	}
	if !c.NotAfter.Equal(now.Add(24 * time.Hour)) {
		t.Errorf("NotAfter = %v, want default 24h", c.NotAfter)
	}
	for _, e := range c.Extensions {
		if e.Id.Equal(OIDSubjectAltName) && e.Critical {
			t.Error("SAN is critical with a non-empty subject")
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca.cert), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify against the root: %v", err)
	}
	id, err := DeviceIDFromCertificate(c, "corp.example")
	if err != nil || id != "abcdefghijklmnopqrstuvwxyz234567" {
		t.Errorf("DeviceIDFromCertificate = %q, %v", id, err)
	}
	if _, err := DeviceIDFromCertificate(c, "other.example"); !errors.Is(err, ErrIdentity) {
		t.Errorf("DeviceIDFromCertificate(other trust domain) = %v, want ErrIdentity", err)
	}
	recs := ca.journal.records()
	if len(recs) != 1 {
		t.Fatalf("journal has %d records", len(recs))
	}
	r := recs[0]
	if r.Serial != c.SerialNumber.Text(16) || r.Kind != KindDevice || r.DeviceID != "abcdefghijklmnopqrstuvwxyz234567" ||
		r.Subject != c.URIs[0].String() || !bytes.Equal(r.DER, c.Raw) || !r.NotBefore.Equal(c.NotBefore) || !r.NotAfter.Equal(c.NotAfter) {
		t.Errorf("journal record = %+v", r)
	}
	if len(got.Chain) != 1 || !got.Chain[0].Equal(ca.cert) {
		t.Errorf("Issued.Chain = %v", got.Chain)
	}
	if certs, err := ParseCertificates(got.PEM()); err != nil || len(certs) != 2 {
		t.Errorf("Issued.PEM: %d certificates, %v", len(certs), err)
	}
}

// TestPermanentIdentifierDER checks the exact RFC 4043 encoding of the SAN.
func TestPermanentIdentifierDER(t *testing.T) {
	der := marshalDeviceSAN("spiffe://td/device/x", "ab")
	want := "30" + "2f" + // GeneralNames
		"86" + "14" + hex.EncodeToString([]byte("spiffe://td/device/x")) + // [6] URI
		"a0" + "17" + // [0] otherName (constructed, implicit)
		"0608" + "2b06010505070803" + // type-id 1.3.6.1.5.5.7.8.3
		"a0" + "0b" + // [0] EXPLICIT
		"3009" + "0c02" + hex.EncodeToString([]byte("ab")) + "0603" + "678105" // PermanentIdentifier{UTF8String, OID 2.23.133}
	if got := hex.EncodeToString(der); got != want {
		t.Errorf("SAN DER\n got %s\nwant %s", got, want)
	}
	// The same structure through encoding/asn1, and a long URI (two-byte
	// length) both ways.
	long := "spiffe://td/device/" + strings.Repeat("a", 128)
	for _, tc := range []struct{ uri, fp string }{{"spiffe://td/device/x", "ab"}, {long, testFP}, {long, ""}} {
		if got, want := marshalDeviceSAN(tc.uri, tc.fp), marshalDeviceSANReflect(t, tc.uri, tc.fp); !bytes.Equal(got, want) {
			t.Errorf("SAN(%q, %q)\n got %x\nwant %x", tc.uri, tc.fp, got, want)
		}
	}
}

// marshalDeviceSANReflect is marshalDeviceSAN written with encoding/asn1.
func marshalDeviceSANReflect(t *testing.T, uri, fp string) []byte {
	t.Helper()
	names := []asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: tagURI, Bytes: []byte(uri)}}
	if fp != "" {
		pi, err := asn1.Marshal(permanentIdentifierASN1{IdentifierValue: fp, Assigner: OIDTCG})
		if err != nil {
			t.Fatal(err)
		}
		typeID, err := asn1.Marshal(OIDPermanentIdentifier)
		if err != nil {
			t.Fatal(err)
		}
		value, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: pi})
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagOtherName, IsCompound: true, Bytes: append(typeID, value...)})
	}
	der, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSerial(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	pub := newECKey(t, elliptic.P256()).Public()
	seen := map[string]bool{}
	maxBits := 0
	for k := 0; k < 64; k++ {
		got, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: pub, DeviceID: "d"})
		if err != nil {
			t.Fatal(err)
		}
		s := got.Certificate.SerialNumber
		if s.Sign() <= 0 || s.BitLen() > 128 {
			t.Fatalf("serial %x: sign %d, %d bits", s, s.Sign(), s.BitLen())
		}
		maxBits = max(maxBits, s.BitLen())
		if seen[s.Text(16)] {
			t.Fatalf("serial %x repeated", s)
		}
		seen[s.Text(16)] = true
	}
	if maxBits < 120 {
		t.Errorf("largest of 64 serials has %d bits; want close to 128", maxBits)
	}
}

func TestLifetimes(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// The root expires 30 days after now.
	ca := newTestCA(t, Config{Now: fixedNow(now), MaxLifetime: 60 * 24 * time.Hour},
		InitOptions{Now: fixedNow(now.Add(-time.Hour)), Validity: 30*24*time.Hour + time.Hour})
	pub := newECKey(t, elliptic.P256()).Public()
	issue := func(is *Issuer, d time.Duration) (*x509.Certificate, error) {
		got, err := is.IssueDevice(context.Background(), DeviceRequest{PublicKey: pub, DeviceID: "d1", Lifetime: d})
		if err != nil {
			return nil, err
		}
		return got.Certificate, nil
	}
	if c, err := issue(ca.issuer, 5*time.Minute); err != nil || !c.NotAfter.Equal(now.Add(5*time.Minute)) {
		t.Errorf("5m: %v, %v", c, err)
	}
	if _, err := issue(ca.issuer, 4*time.Minute); !errors.Is(err, ErrLifetime) {
		t.Errorf("4m: %v, want ErrLifetime", err)
	}
	if _, err := issue(ca.issuer, 61*24*time.Hour); !errors.Is(err, ErrLifetime) || !strings.Contains(err.Error(), "maximum") {
		t.Errorf("above max: %v, want ErrLifetime naming the maximum", err)
	}
	// Allowed by the maximum but past the CA's expiry: clamped.
	c, err := issue(ca.issuer, 45*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !c.NotAfter.Equal(ca.cert.NotAfter) {
		t.Errorf("NotAfter %v, want clamped to the CA's %v", c.NotAfter, ca.cert.NotAfter)
	}
	// Close to the CA's expiry: less than the minimum left, refused.
	late, err := New(ca.key, []*x509.Certificate{ca.cert}, ca.journal, Config{TrustDomain: "example.org", MaxLifetime: 60 * 24 * time.Hour,
		Now: fixedNow(ca.cert.NotAfter.Add(-4 * time.Minute))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := issue(late, 0); !errors.Is(err, ErrLifetime) || !strings.Contains(err.Error(), "expires") {
		t.Errorf("near CA expiry: %v, want ErrLifetime naming the expiry", err)
	}
	// Backdate never before the CA's NotBefore.
	early, err := New(ca.key, []*x509.Certificate{ca.cert}, ca.journal, Config{TrustDomain: "example.org", Now: fixedNow(ca.cert.NotBefore.Add(10 * time.Second))})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := issue(early, 0); err != nil || !c.NotBefore.Equal(ca.cert.NotBefore) {
		t.Errorf("backdate near CA start: %v, %v", c.NotBefore, err)
	}
	// Bad configurations.
	for _, cfg := range []Config{
		{TrustDomain: "example.org", DefaultLifetime: time.Minute},
		{TrustDomain: "example.org", MaxLifetime: time.Hour},
		{TrustDomain: "example.org", MinLifetime: 2 * time.Hour, MaxLifetime: time.Hour},
	} {
		if _, err := New(ca.key, []*x509.Certificate{ca.cert}, ca.journal, cfg); !errors.Is(err, ErrLifetime) {
			t.Errorf("New(%+v) = %v, want ErrLifetime", cfg, err)
		}
	}
}

func TestJournalFailureReturnsNoCertificate(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	ca.journal.fail = errJournalDown
	got, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: newECKey(t, elliptic.P256()).Public(), DeviceID: "d"})
	if got != nil || !errors.Is(err, ErrJournal) || !errors.Is(err, errJournalDown) {
		t.Fatalf("IssueDevice with a failing journal = %v, %v; want nil and ErrJournal wrapping the cause", got, err)
	}
	got, err = ca.issuer.IssueServer(context.Background(), newECKey(t, elliptic.P256()).Public(), []string{"localhost"}, nil, 0)
	if got != nil || !errors.Is(err, ErrJournal) {
		t.Fatalf("IssueServer with a failing journal = %v, %v", got, err)
	}
}

func TestContextCanceled(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ca.issuer.IssueDevice(ctx, DeviceRequest{PublicKey: newECKey(t, elliptic.P256()).Public(), DeviceID: "d"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := len(ca.journal.records()); n != 0 {
		t.Fatalf("%d journal records after a canceled issuance", n)
	}
}

func makeCSR(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}, DNSNames: []string{"ignored.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestIssueDeviceCSR(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	key := newECKey(t, elliptic.P384())
	csr := makeCSR(t, key)
	got, err := ca.issuer.IssueDeviceCSR(context.Background(), csr, DeviceRequest{DeviceID: "dev-1", EKFingerprint: testFP})
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(got.Certificate.PublicKey, key.Public()) {
		t.Error("certificate key is not the CSR's")
	}
	if got.Certificate.Subject.CommonName != "dev-1" || len(got.Certificate.DNSNames) != 0 {
		t.Errorf("CSR contents leaked into the certificate: %v %v", got.Certificate.Subject, got.Certificate.DNSNames)
	}

	// Bad signature: flip a bit in the signature (the last byte).
	bad := bytes.Clone(csr)
	bad[len(bad)-1] ^= 1
	if got, err := ca.issuer.IssueDeviceCSR(context.Background(), bad, DeviceRequest{DeviceID: "dev-1"}); got != nil || !errors.Is(err, ErrBadCSR) {
		t.Errorf("bad signature: %v, %v; want ErrBadCSR", got, err)
	}
	// Garbage.
	if _, err := ca.issuer.IssueDeviceCSR(context.Background(), []byte("nope"), DeviceRequest{DeviceID: "dev-1"}); !errors.Is(err, ErrBadCSR) {
		t.Errorf("garbage CSR: %v, want ErrBadCSR", err)
	}
	// Expected key differs from the CSR's.
	other := newECKey(t, elliptic.P256())
	if _, err := ca.issuer.IssueDeviceCSR(context.Background(), csr, DeviceRequest{DeviceID: "dev-1", PublicKey: other.Public()}); !errors.Is(err, ErrBadCSR) {
		t.Errorf("mismatched key: %v, want ErrBadCSR", err)
	}
	if n := len(ca.journal.records()); n != 1 {
		t.Errorf("journal has %d records, want 1 (refusals journal nothing)", n)
	}
}

func TestWeakAndUnsupportedKeysRefused(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224 := newECKey(t, elliptic.P224())
	for name, key := range map[string]crypto.Signer{"RSA-1024": rsa1024, "P-224": p224} {
		if _, err := ca.issuer.IssueDeviceCSR(context.Background(), makeCSR(t, key), DeviceRequest{DeviceID: "d"}); !errors.Is(err, ErrWeakKey) {
			t.Errorf("%s CSR: %v, want ErrWeakKey", name, err)
		}
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range map[string]crypto.PublicKey{"X25519": x.PublicKey(), "nil": nil, "string": "key"} {
		if _, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: pub, DeviceID: "d"}); !errors.Is(err, ErrUnsupportedKey) {
			t.Errorf("%s key: %v, want ErrUnsupportedKey", name, err)
		}
	}
	// Accepted kinds.
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range map[string]crypto.PublicKey{
		"RSA-2048": rsa2048.Public(), "Ed25519": edPub,
		"P-256": newECKey(t, elliptic.P256()).Public(), "P-521": newECKey(t, elliptic.P521()).Public(),
	} {
		if err := CheckPublicKey(pub); err != nil {
			t.Errorf("CheckPublicKey(%s) = %v", name, err)
		}
	}
	if n := len(ca.journal.records()); n != 0 {
		t.Errorf("journal has %d records after refusals", n)
	}
}

func TestIdentityValidation(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	pub := newECKey(t, elliptic.P256()).Public()
	for _, req := range []DeviceRequest{
		{DeviceID: ""},
		{DeviceID: "a/b"},
		{DeviceID: ".."},
		{DeviceID: "dev 1"},
		{DeviceID: strings.Repeat("a", 129)},
		{DeviceID: "ok", EKFingerprint: "abc"},
		{DeviceID: "ok", EKFingerprint: strings.Repeat("g", 64)},
	} {
		req.PublicKey = pub
		if _, err := ca.issuer.IssueDevice(context.Background(), req); !errors.Is(err, ErrIdentity) {
			t.Errorf("%q/%q: %v, want ErrIdentity", req.DeviceID, req.EKFingerprint, err)
		}
	}
	for _, td := range []string{"", "Example.org", "a/b", "x:1", strings.Repeat("a", 256)} {
		if _, err := New(ca.key, []*x509.Certificate{ca.cert}, ca.journal, Config{TrustDomain: td}); !errors.Is(err, ErrIdentity) {
			t.Errorf("trust domain %q: %v, want ErrIdentity", td, err)
		}
	}
	// No EK fingerprint: no otherName.
	got, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: pub, DeviceID: "Dev_1.a-b"})
	if err != nil {
		t.Fatal(err)
	}
	if pis, err := PermanentIdentifiers(got.Certificate); err != nil || len(pis) != 0 {
		t.Errorf("permanentIdentifiers without a fingerprint: %v, %v", pis, err)
	}
}

func TestIssueServer(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	key := newECKey(t, elliptic.P256())
	got, err := ca.issuer.IssueServer(context.Background(), key.Public(), []string{"rootgate.example", "localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := got.Certificate
	if c.Subject.CommonName != "rootgate.example" || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("subject %v EKU %v", c.Subject, c.ExtKeyUsage)
	}
	if _, err := c.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool(ca.cert)}); err != nil {
		t.Error(err)
	}
	if err := c.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if r := ca.journal.records(); len(r) != 1 || r[0].Kind != KindServer || r[0].DeviceID != "" {
		t.Errorf("journal = %+v", r)
	}
	for _, names := range [][]string{nil, {"bad name"}, {"a..b"}} {
		if _, err := ca.issuer.IssueServer(context.Background(), key.Public(), names, nil, 0); !errors.Is(err, ErrIdentity) {
			t.Errorf("names %q: %v, want ErrIdentity", names, err)
		}
	}
}

func TestNewChecks(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	other := newECKey(t, elliptic.P256())
	if _, err := New(other, []*x509.Certificate{ca.cert}, ca.journal, Config{TrustDomain: "x"}); !errors.Is(err, ErrCertificate) {
		t.Errorf("mismatched signer: %v, want ErrCertificate", err)
	}
	if _, err := New(ca.key, nil, ca.journal, Config{TrustDomain: "x"}); !errors.Is(err, ErrNoCA) {
		t.Errorf("no chain: %v, want ErrNoCA", err)
	}
	leaf, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: other.Public(), DeviceID: "d"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(other, []*x509.Certificate{leaf.Certificate}, ca.journal, Config{TrustDomain: "x"}); !errors.Is(err, ErrCertificate) {
		t.Errorf("leaf as CA: %v, want ErrCertificate", err)
	}
	if got := ca.issuer.Bundle(); !bytes.Contains(got, []byte("BEGIN CERTIFICATE")) {
		t.Errorf("Bundle = %q", got)
	}
	if ca.issuer.Certificate() != ca.cert || len(ca.issuer.Chain()) != 1 || ca.issuer.TrustDomain() != "example.org" {
		t.Error("accessors")
	}
}

func TestIssueConcurrent(t *testing.T) {
	ca := newTestCA(t, Config{}, InitOptions{})
	pub := newECKey(t, elliptic.P256()).Public()
	errs := make(chan error, 16)
	for k := 0; k < 16; k++ {
		go func() {
			_, err := ca.issuer.IssueDevice(context.Background(), DeviceRequest{PublicKey: pub, DeviceID: "d"})
			errs <- err
		}()
	}
	for k := 0; k < 16; k++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := len(ca.journal.records()); n != 16 {
		t.Errorf("%d records", n)
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// fingerprint is the SHA-256 of a certificate, for messages.
func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}
