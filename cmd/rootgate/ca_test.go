package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/inventory"
)

// parsePEMCerts returns every certificate in a PEM file.
func parsePEMCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data := readFile(t, path)
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			t.Fatalf("%s: PEM block %q", path, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no certificate", path)
	}
	return out
}

// writePEM writes one PEM block of type typ into dir/name and returns the path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// deviceCSR returns the DER of a CSR signed by key.
func deviceCSR(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newP256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ekFingerprint is the documented EK fingerprint of pub: lowercase hex
// SHA-256 of its PKIX DER.
func ekFingerprint(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// openssl runs openssl with args and returns its combined output.
func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCAInitTwiceKeepsKeyAndCertificate(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	first := s.initCA()
	if first.Status != "created" || !first.KeyCreated {
		t.Fatalf("first init: status %q, key_created %v; want created, true", first.Status, first.KeyCreated)
	}
	a := first.Key.Attributes
	if a == nil || !a.Sensitive || a.Extractable || !a.NeverExtractable || !a.AlwaysSensitive || !a.Private || !a.Token ||
		!a.Sign || a.Decrypt || a.Unwrap || a.Derive {
		t.Errorf("CA key attributes %+v: want a private, sensitive, never extractable, sign-only token key", a)
	}
	if first.Key.Matches == nil || !*first.Key.Matches {
		t.Errorf("matches_certificate = %v, want true", first.Key.Matches)
	}
	if first.Key.Label != s.label || !strings.Contains(first.Key.URI, "pin-value=REDACTED") {
		t.Errorf("key label %q, URI %q: want label %q and a redacted PIN", first.Key.Label, first.Key.URI, s.label)
	}
	chainPath := filepath.Join(s.dataDir, "ca", "chain.pem")
	if first.ChainPath != chainPath {
		t.Errorf("chain_path %q, want %q", first.ChainPath, chainPath)
	}
	chain1 := readFile(t, chainPath)
	cert1 := parsePEMCerts(t, chainPath)[0]
	if !cert1.IsCA || cert1.Subject.CommonName != "Rootgate Device CA" || !bytes.Equal(cert1.RawIssuer, cert1.RawSubject) {
		t.Errorf("root: IsCA %v, subject %q, issuer %q: want a self-signed CA named Rootgate Device CA", cert1.IsCA, cert1.Subject, cert1.Issuer)
	}

	second := s.initCA()
	if second.Status != "exists" || second.KeyCreated {
		t.Errorf("second init: status %q, key_created %v; want exists, false", second.Status, second.KeyCreated)
	}
	if second.Key.Attributes == nil || second.Key.Attributes.ID != a.ID {
		t.Errorf("second init found key %+v, want the first key (id %s)", second.Key.Attributes, a.ID)
	}
	if got := readFile(t, chainPath); !bytes.Equal(got, chain1) {
		t.Error("second init rewrote chain.pem")
	}
	if len(second.Chain) != 1 || second.Chain[0].SHA256 != first.Chain[0].SHA256 {
		t.Errorf("second init reports chain %+v, want the first certificate", second.Chain)
	}
	r := ok(t, s.run("ca", "init"))
	if !strings.Contains(r.stdout, "already initialised") {
		t.Errorf("text output of a third init lacks \"already initialised\": %s", r)
	}

	// The key outlives the chain file: init finds it by label again.
	if err := os.Remove(chainPath); err != nil {
		t.Fatal(err)
	}
	third := s.initCA()
	if third.Status != "created" || third.KeyCreated || third.Key.Attributes.ID != a.ID {
		t.Errorf("init without chain.pem: status %q, key_created %v, key id %s; want created, false, %s",
			third.Status, third.KeyCreated, third.Key.Attributes.ID, a.ID)
	}
	cert3 := parsePEMCerts(t, chainPath)[0]
	if !publicKeyEqual(cert3.PublicKey, cert1.PublicKey) {
		t.Error("the new root has another public key than the first")
	}

	// What the token itself says of the key, asked without rootgate.
	hsmMu.Lock()
	out, err := exec.Command("pkcs11-tool", "--module", s.tok.ModulePath, "--token-label", s.tok.Label,
		"--login", "--pin", s.tok.PIN, "--list-objects", "--type", "privkey").CombinedOutput()
	hsmMu.Unlock()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	var mine []string
	for _, obj := range strings.Split(string(out), "Private Key Object")[1:] {
		if strings.Contains(obj, "label:      "+s.label+"\n") {
			mine = append(mine, obj)
		}
	}
	if len(mine) != 1 {
		t.Fatalf("pkcs11-tool lists %d private keys labelled %s, want 1:\n%s", len(mine), s.label, out)
	}
	if !strings.Contains(mine[0], "Access:     sensitive, always sensitive, never extractable") || !strings.Contains(mine[0], "Usage:      sign\n") {
		t.Errorf("pkcs11-tool does not show the key as a sensitive, never extractable signing key:%s", mine[0])
	}
}

func TestCAShow(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	fails(t, s.run("ca", "show"), "no Rootgate CA in "+s.dataDir, "run 'rootgate ca init' or check --data-dir")
	s.initCA("--common-name", "Show & Tell CA")

	var show caShowJSON
	r := s.run("ca", "show", "-o", "json")
	decode(t, r, &show)
	if show.ChainPath != filepath.Join(s.dataDir, "ca", "chain.pem") || len(show.Chain) != 1 || show.CSRPath != "" {
		t.Errorf("ca show: %+v", show)
	}
	if show.Chain[0].Subject != "CN=Show & Tell CA" || !show.Chain[0].IsCA || show.Chain[0].KeyAlg != "ecdsa-p256" {
		t.Errorf("ca show: chain[0] = %+v", show.Chain[0])
	}
	if show.Key.Matches == nil || !*show.Key.Matches || show.Key.Attributes == nil || show.Key.Attributes.Extractable {
		t.Errorf("ca show: key %+v", show.Key)
	}
	// JSON carries & as itself, not \u0026: URIs and subjects read as typed.
	if strings.Contains(r.stdout, `\u0026`) || !strings.Contains(r.stdout, "&pin-value=REDACTED") ||
		!strings.Contains(r.stdout, `"CN=Show & Tell CA"`) {
		t.Errorf("ca show -o json escapes &:\n%s", r.stdout)
	}

	text := ok(t, s.run("ca", "show")).stdout
	for _, want := range []string{`CA chain`, `Show & Tell CA`, `\n\s+extractable\s+false\n`, `never extractable\s+true`,
		`sign only\s+true`, `matches certificate\s+true`, `object=` + s.label + `\?`} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("ca show text lacks %q:\n%s", want, text)
		}
	}
}

// TestHSMFaults: every HSM fault is a non-zero exit with a message naming
// what failed, and no PIN, right or wrong, in any output.
func TestHSMFaults(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.initCA()
	const wrongPIN = "wrong-pin-4711"
	good := s.uri()
	bad := map[string]string{
		"wrong PIN":      strings.Replace(good, "pin-value="+s.tok.PIN, "pin-value="+wrongPIN, 1),
		"missing module": strings.Replace(good, "module-path="+s.tok.ModulePath, "module-path=/nonexistent/libnope.so", 1),
		"missing token":  strings.Replace(good, "token="+s.tok.Label, "token=no-such-token", 1),
		"missing key":    strings.Replace(good, "object="+s.label, "object=no-such-key", 1),
		"no key named":   strings.Replace(good, ";object="+s.label, "", 1),
	}
	for name, uri := range bad {
		if uri == good {
			t.Fatalf("%s: URI not changed: %s", name, uri)
		}
	}
	want := map[string][]string{
		"wrong PIN":      {"PIN refused", `token "` + s.tok.Label + `"`},
		"missing module": {"PKCS#11 module unusable", "/nonexistent/libnope.so"},
		"missing token":  {"token not found", "no-such-token"},
		"missing key":    {"key not found", `"no-such-key"`},
		"no key named":   {"names no key"},
	}
	secrets := append(s.secrets(), wrongPIN)
	for name, uri := range bad {
		for _, c := range []struct {
			name string
			args []string
		}{
			{"ca_show", []string{"ca", "show"}},
			{"ca_init", []string{"ca", "init"}},
			{"server", []string{"server", "--listen", "127.0.0.1:0", "--metrics-listen", ""}},
		} {
			if name == "missing key" && c.name == "ca_init" {
				continue // below: init would make a missing key, but not beside a chain
			}
			t.Run(name+"/"+c.name, func(t *testing.T) {
				r := run(t, nil, secrets, append(c.args, "--config", s.configWithURI(uri))...)
				fails(t, r, want[name]...)
			})
		}
	}
	t.Run("missing key/ca_init", func(t *testing.T) {
		// A chain exists for s.label; another label has no key and init
		// must not make a new one beside a chain it does not match.
		r := run(t, nil, secrets, "ca", "init", "--config", s.configWithURI(bad["missing key"]))
		fails(t, r, "exists but", "key not found", `"no-such-key"`)
	})
	t.Run("ca issue wrong PIN", func(t *testing.T) {
		csr := writePEM(t, t.TempDir(), "d.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
		r := run(t, nil, secrets, "ca", "issue", "--csr", csr, "--device-id", "dev1", "--config", s.configWithURI(bad["wrong PIN"]))
		fails(t, r, "PIN refused")
	})
	t.Run("pin-value on the command line", func(t *testing.T) {
		// A PIN in --hsm would show in ps: refused before anything is opened.
		for _, args := range [][]string{{"ca", "show"}, {"ca", "init"}, {"server"}, {"devices", "list"}, {"tokens", "list"}} {
			r := run(t, nil, secrets, append(args, "--config", s.config, "--hsm", good)...)
			fails(t, r, "pin-value is not accepted on the command line")
		}
	})
	t.Run("pin-source file wrong PIN", func(t *testing.T) {
		pinFile := filepath.Join(t.TempDir(), "pin")
		if err := os.WriteFile(pinFile, []byte(wrongPIN+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		uri := strings.Replace(good, "pin-value="+s.tok.PIN, "pin-source=file:"+pinFile, 1)
		fails(t, run(t, nil, secrets, "ca", "show", "--config", s.config, "--hsm", uri), "PIN refused")
	})
	t.Run("pin-source file", func(t *testing.T) {
		pinFile := filepath.Join(t.TempDir(), "pin")
		if err := os.WriteFile(pinFile, []byte(s.tok.PIN+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		uri := strings.Replace(good, "pin-value="+s.tok.PIN, "pin-source=file:"+pinFile, 1)
		ok(t, run(t, nil, secrets, "ca", "show", "--config", s.config, "--hsm", uri))
	})
	t.Run("PIN from environment", func(t *testing.T) {
		uri := strings.Replace(good, "&pin-value="+s.tok.PIN, "", 1)
		ok(t, run(t, []string{"ROOTGATE_HSM_PIN=" + s.tok.PIN}, secrets, "ca", "show", "--config", s.config, "--hsm", uri))
		fails(t, run(t, []string{"ROOTGATE_HSM_PIN=" + wrongPIN}, secrets, "ca", "show", "--config", s.config, "--hsm", uri), "PIN refused")
	})
}

// offlineRoot is an offline root CA made in memory, as an operator's
// offline root would be.
type offlineRoot struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newOfflineRoot(t *testing.T) *offlineRoot {
	t.Helper()
	key := newP256(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Offline Root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(20 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &offlineRoot{key: key, cert: c}
}

// sign issues an intermediate certificate for pub with csr's subject.
func (o *offlineRoot) sign(t *testing.T, subject pkix.Name, pub crypto.PublicKey, isCA bool) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               subject,
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA:                  isCA,
		BasicConstraintsValid: true,
		MaxPathLenZero:        isCA,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, o.cert, pub, o.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCAIntermediate(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	csrPath := filepath.Join(s.dataDir, "ca", "intermediate.csr")
	chainPath := filepath.Join(s.dataDir, "ca", "chain.pem")

	res := s.initCA("--intermediate", "--common-name", "Site Intermediate")
	if res.Status != "pending" || !res.KeyCreated || res.CSRPath != csrPath || res.ChainPath != "" {
		t.Fatalf("init --intermediate: %+v", res)
	}
	csrPEM := readFile(t, csrPath)
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("%s is not a PEM CSR:\n%s", csrPath, csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("the intermediate CSR's signature: %v", err)
	}
	if csr.Subject.CommonName != "Site Intermediate" {
		t.Errorf("CSR subject %q", csr.Subject)
	}
	if _, err := os.Stat(chainPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("init --intermediate wrote %s (err %v)", chainPath, err)
	}

	// Pending: show says so, init again keeps the CSR, a self-signed root is refused.
	var show caShowJSON
	s.json(&show, "ca", "show")
	if show.CSRPath != csrPath || len(show.Chain) != 0 || show.Key.Attributes == nil {
		t.Errorf("ca show while pending: %+v", show)
	}
	again := s.initCA("--intermediate")
	if again.Status != "pending" || again.KeyCreated {
		t.Errorf("init --intermediate again: %+v", again)
	}
	if !bytes.Equal(readFile(t, csrPath), csrPEM) {
		t.Error("init --intermediate again rewrote the CSR")
	}
	fails(t, s.run("ca", "init"), "intermediate CSR is waiting", csrPath)
	if td := readFile(t, filepath.Join(s.dataDir, "ca", "trust-domain")); string(td) != s.trustDomain+"\n" {
		t.Errorf("trust domain recorded with the CSR: %q, want %q", td, s.trustDomain)
	}
	fails(t, s.run("server", "--listen", "127.0.0.1:0", "--metrics-listen", ""), "rootgate ca init")

	root := newOfflineRoot(t)
	dir := t.TempDir()
	rootPath := writePEM(t, dir, "root.pem", "CERTIFICATE", root.cert.Raw)

	// A certificate for another key is refused, and nothing is installed.
	other := writePEM(t, dir, "other.pem", "CERTIFICATE", root.sign(t, csr.Subject, newP256(t).Public(), true))
	fails(t, s.run("ca", "import-cert", other, "--chain", rootPath), "not the HSM key")
	// So is a certificate for the right key that is not a CA.
	leaf := writePEM(t, dir, "leaf.pem", "CERTIFICATE", root.sign(t, csr.Subject, csr.PublicKey, false))
	fails(t, s.run("ca", "import-cert", leaf, "--chain", rootPath), "not a CA certificate")
	// And the right certificate without its root.
	good := writePEM(t, dir, "good.pem", "CERTIFICATE", root.sign(t, csr.Subject, csr.PublicKey, true))
	fails(t, s.run("ca", "import-cert", good), "no self-signed root")
	// And a chain to another root.
	strayRoot := writePEM(t, dir, "stray.pem", "CERTIFICATE", newOfflineRoot(t).cert.Raw)
	fails(t, s.run("ca", "import-cert", good, "--chain", strayRoot), "does not chain")
	if _, err := os.Stat(chainPath); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused import left %s (err %v)", chainPath, err)
	}
	if _, err := os.Stat(csrPath); err != nil {
		t.Fatalf("a refused import removed the CSR: %v", err)
	}

	var imp caInitJSON
	s.json(&imp, "ca", "import-cert", good, "--chain", rootPath)
	if imp.Status != "imported" || imp.ChainPath != chainPath || len(imp.Chain) != 2 || imp.Key.Matches == nil || !*imp.Key.Matches {
		t.Fatalf("import-cert: %+v", imp)
	}
	if imp.Chain[0].Subject != "CN=Site Intermediate" || imp.Chain[1].Subject != "CN=Offline Root" {
		t.Errorf("imported chain subjects %q, %q", imp.Chain[0].Subject, imp.Chain[1].Subject)
	}
	if _, err := os.Stat(csrPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the CSR is still there after the import (err %v)", err)
	}
	if imp.TrustDomain != s.trustDomain || string(readFile(t, imp.TrustDomainPath)) != s.trustDomain+"\n" {
		t.Errorf("import-cert: trust domain %q in %q, want %s kept", imp.TrustDomain, imp.TrustDomainPath, s.trustDomain)
	}
	if again := s.initCA(); again.Status != "exists" || len(again.Chain) != 2 {
		t.Errorf("init after import: %+v", again)
	}

	// The intermediate issues leaves that verify up to the offline root.
	out := filepath.Join(dir, "device.pem")
	csrFile := writePEM(t, dir, "device.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
	ok(t, s.run("ca", "issue", "--csr", csrFile, "--device-id", "dev-int", "--out", out))
	if v := openssl(t, "verify", "-CAfile", rootPath, "-untrusted", chainPath, out); !strings.Contains(v, ": OK") {
		t.Errorf("openssl verify: %s", v)
	}
}

// issue runs `rootgate ca issue --csr csrPath -o json ARGS` and returns
// the decoded output (on success) and the run.
func (s *site) issue(csrPath string, args ...string) (caIssueJSON, result) {
	s.t.Helper()
	r := s.run(append([]string{"ca", "issue", "--csr", csrPath, "-o", "json"}, args...)...)
	var out caIssueJSON
	if r.code == 0 {
		decode(s.t, r, &out)
	}
	return out, r
}

func TestCAIssue(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	dir := t.TempDir()
	csrPath := writePEM(t, dir, "device.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
	fails(t, s.run("ca", "issue", "--csr", csrPath, "--device-id", "dev1"), "no Rootgate CA in "+s.dataDir, "run 'rootgate ca init' or check --data-dir")

	s.initCA()
	chainPath := filepath.Join(s.dataDir, "ca", "chain.pem")
	ek := newP256(t)
	fp := ekFingerprint(t, ek.Public())
	leafPath := filepath.Join(dir, "leaf.pem")
	start := time.Now()
	got, _ := s.issue(csrPath, "--device-id", "dev1", "--ek-fingerprint", fp, "--out", leafPath)
	if got.SPIFFEID != "spiffe://cli.rootgate.test/device/dev1" || got.DeviceID != "dev1" || got.EKFingerprint != fp ||
		got.Out != leafPath || got.PEM != "" {
		t.Errorf("ca issue -o json: %+v", got)
	}
	if life := got.NotAfter.Sub(got.NotBefore); life < 24*time.Hour || life > 24*time.Hour+2*time.Minute {
		t.Errorf("default lifetime %s, want 24h plus a small backdate", life)
	}
	if got.NotBefore.After(start) || got.NotAfter.Before(start.Add(24*time.Hour-time.Minute)) {
		t.Errorf("validity %s .. %s around %s", got.NotBefore, got.NotAfter, start)
	}

	// As openssl sees it: verifies against the chain, carries the SPIFFE ID.
	if v := openssl(t, "verify", "-CAfile", chainPath, leafPath); !strings.Contains(v, leafPath+": OK") {
		t.Errorf("openssl verify: %s", v)
	}
	text := openssl(t, "x509", "-in", leafPath, "-noout", "-text")
	for _, want := range []string{"URI:spiffe://cli.rootgate.test/device/dev1", "TLS Web Client Authentication", "CA:FALSE"} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	leaf := parsePEMCerts(t, leafPath)[0]
	if leaf.SerialNumber.Text(16) != got.Serial {
		t.Errorf("serial %s in JSON, %x in the certificate", got.Serial, leaf.SerialNumber)
	}

	// Journaled in the store before it was written out.
	st, err := inventory.Open(context.Background(), filepath.Join(s.dataDir, "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := st.ListCertificates(context.Background(), "dev1")
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 1 || certs[0].Serial != got.Serial || certs[0].Kind != "device" || !bytes.Equal(certs[0].DER, leaf.Raw) {
		t.Errorf("journal for dev1: %+v, want the one certificate %s", certs, got.Serial)
	}

	// Text mode: the PEM on stdout, a progress line on stderr.
	r := ok(t, s.run("ca", "issue", "--csr", csrPath, "--device-id", "dev2", "--lifetime", "1h"))
	if !strings.HasPrefix(r.stdout, "-----BEGIN CERTIFICATE-----") || !strings.Contains(r.stderr, "issued serial") {
		t.Errorf("ca issue text output: %s", r)
	}
	if c, _ := pem.Decode([]byte(r.stdout)); c != nil {
		lc, err := x509.ParseCertificate(c.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if life := lc.NotAfter.Sub(lc.NotBefore); life < time.Hour || life > time.Hour+2*time.Minute {
			t.Errorf("--lifetime 1h: validity %s .. %s", lc.NotBefore, lc.NotAfter)
		}
	}

	// -o json without --out carries the PEM.
	withPEM, _ := s.issue(csrPath, "--device-id", "dev3")
	if !strings.HasPrefix(withPEM.PEM, "-----BEGIN CERTIFICATE-----") {
		t.Errorf("ca issue -o json without --out: pem %q", withPEM.PEM)
	}

	// The data directory belongs to the file's trust domain, recorded by
	// ca init: another one on the command line is refused.
	_, r = s.issue(csrPath, "--device-id", "dev4", "--trust-domain", "flag.rootgate.test")
	fails(t, r, "data dir "+s.dataDir+" belongs to trust domain cli.rootgate.test; --trust-domain says flag.rootgate.test")
}

// TestCAIssueRefuses: bad requests exit non-zero with the reason, and no
// certificate is journaled.
func TestCAIssueRefuses(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.initCA()
	dir := t.TempDir()
	good := deviceCSR(t, newP256(t))

	badSig := bytes.Clone(good)
	badSig[len(badSig)-3] ^= 0x55 // inside the signature BIT STRING
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	// Go will not sign with P-224; openssl will.
	p224Key := filepath.Join(dir, "p224.key")
	openssl(t, "ecparam", "-name", "secp224r1", "-genkey", "-noout", "-out", p224Key)
	p224CSR := filepath.Join(dir, "p224.csr")
	openssl(t, "req", "-new", "-key", p224Key, "-subj", "/CN=weak", "-out", p224CSR)
	ed448Key := filepath.Join(dir, "ed448.key")
	openssl(t, "genpkey", "-algorithm", "ed448", "-out", ed448Key)
	ed448CSR := filepath.Join(dir, "ed448.csr")
	openssl(t, "req", "-new", "-key", ed448Key, "-subj", "/CN=odd", "-out", ed448CSR)
	certNotCSR := writePEM(t, dir, "cert.pem", "CERTIFICATE", parsePEMCerts(t, filepath.Join(s.dataDir, "ca", "chain.pem"))[0].Raw)

	goodPath := writePEM(t, dir, "good.csr", "CERTIFICATE REQUEST", good)
	for _, tc := range []struct {
		name string
		csr  string
		args []string
		want []string
	}{
		{"bad signature", writePEM(t, dir, "badsig.csr", "CERTIFICATE REQUEST", badSig), nil, []string{"bad certificate request", "signature"}},
		{"RSA-1024", writePEM(t, dir, "rsa1024.csr", "CERTIFICATE REQUEST", deviceCSR(t, rsaKey)), nil, []string{"key too weak", "RSA-1024"}},
		{"P-224", p224CSR, nil, []string{"key too weak", "P-224"}},
		{"Ed448", ed448CSR, nil, []string{"bad certificate request"}},
		{"truncated", writePEM(t, dir, "trunc.csr", "CERTIFICATE REQUEST", good[:len(good)/2]), nil, []string{"bad certificate request"}},
		{"a certificate", certNotCSR, nil, []string{`PEM block is "CERTIFICATE"`}},
		{"missing file", filepath.Join(dir, "nope.csr"), nil, []string{"read CSR", "no such file"}},
		{"lifetime above max", goodPath, []string{"--lifetime", "169h"}, []string{"lifetime 169h0m0s is above the maximum 168h0m0s"}},
		{"lifetime below min", goodPath, []string{"--lifetime", "1m"}, []string{"below the minimum"}},
		{"bad device ID", goodPath, []string{"--device-id", "a/b"}, []string{"invalid identity"}},
		{"bad EK fingerprint", goodPath, []string{"--ek-fingerprint", "xyz"}, []string{"invalid identity"}},
		{"no device ID", goodPath, []string{"--device-id", ""}, []string{"--csr and --device-id are required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--device-id", "refused"}, tc.args...)
			_, r := s.issue(tc.csr, args...)
			fails(t, r, tc.want...)
			if r.stdout != "" {
				t.Errorf("a refused issue printed on stdout: %s", r)
			}
		})
	}

	st, err := inventory.Open(context.Background(), filepath.Join(s.dataDir, "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, id := range []string{"refused", "a/b", ""} {
		if certs, err := st.ListCertificates(context.Background(), id); err != nil || len(certs) != 0 {
			t.Errorf("journal for %q after refusals: %v, %d certificates", id, err, len(certs))
		}
	}
}

// TestCAIssueNeverOutlivesCA: a leaf asked to outlive its CA ends when the
// CA does.
func TestCAIssueNeverOutlivesCA(t *testing.T) {
	t.Parallel()
	s := newSite(t, "ca:\n  max_lifetime: 8760h\n")
	init := s.initCA("--validity", "2d")
	caNotAfter := init.Chain[0].NotAfter
	csrPath := writePEM(t, t.TempDir(), "d.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
	got, r := s.issue(csrPath, "--device-id", "dev1", "--lifetime", "100h")
	ok(t, r)
	if !got.NotAfter.Equal(caNotAfter) {
		t.Errorf("leaf not_after %s with the CA's %s: want the leaf clamped to the CA", got.NotAfter, caNotAfter)
	}
	_, r = s.issue(csrPath, "--device-id", "dev1", "--lifetime", "8761h")
	fails(t, r, "above the maximum 8760h")
}
