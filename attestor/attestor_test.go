package attestor

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
)

// Fast tests over evidence captured from swtpm (testdata/README.md).

var sentinels = []error{ErrMalformed, ErrEKUntrusted, ErrAKInvalid, ErrActivation, ErrCertification, ErrNonce, ErrKeyMismatch, ErrQuote}

// checkSentinel fails unless err is nil or wraps exactly one sentinel.
func checkSentinel(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%s: error %q wraps %d sentinels, want 1", what, err, n)
	}
}

func fixtures(t *testing.T) map[string]*evidence {
	return map[string]*evidence{"ecc": loadEvidence(t, "swtpm-ecc.json"), "rsa": loadEvidence(t, "swtpm-rsa.json")}
}

func verifier(t testing.TB, ev *evidence) *EKVerifier {
	roots, inter, err := ParseEKRoots([][]byte{ev.RootPEM, ev.IssuerPEM})
	if err != nil {
		t.Fatal(err)
	}
	return &EKVerifier{Roots: roots, Intermediates: inter}
}

func TestFixtureGoodPath(t *testing.T) {
	for name, ev := range fixtures(t) {
		t.Run(name, func(t *testing.T) {
			ekPub, err := ParseEKPublic(ev.EKPublic)
			if err != nil {
				t.Fatal(err)
			}
			res, err := verifier(t, ev).Verify(ekPub, ev.EKCert, nil, ev.Now)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Certified || res.Manufacturer != "id:00001014" || res.Model != "swtpm" {
				t.Errorf("EK result = %+v", res)
			}
			if err := VerifyAK(ekPub, ev.AK); err != nil {
				t.Fatal(err)
			}
			secret, ec, err := NewChallenge(bytes.NewReader(bytes.Repeat([]byte{7}, 4096)), ekPub, ev.AK)
			if err != nil || len(secret) != SecretSize || ec == nil {
				t.Fatalf("NewChallenge = %x, %v, %v", secret, ec, err)
			}
			if err := CheckSecret(secret, bytes.Clone(secret)); err != nil {
				t.Fatal(err)
			}
			csrPub, err := x509.ParsePKIXPublicKey(ev.KeyPKIX)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyCertification(ev.AK.Public, ev.Key, ev.Nonce, csrPub); err != nil {
				t.Fatal(err)
			}
			pcrs, err := VerifyQuote(ev.AK.Public, ev.Quotes, fromPCRJSON(ev.PCRs), ev.Nonce)
			if err != nil || len(pcrs) != 24 {
				t.Fatalf("VerifyQuote = %d PCRs, %v", len(pcrs), err)
			}
		})
	}
}

func TestFixtureRefusals(t *testing.T) {
	f := fixtures(t)
	ecc, rsa := f["ecc"], f["rsa"]
	ekPub, _ := ParseEKPublic(ecc.EKPublic)
	csrPub, _ := x509.ParsePKIXPublicKey(ecc.KeyPKIX)
	v := verifier(t, ecc)
	otherNonce := bytes.Repeat([]byte{1}, 32)

	type check struct {
		name string
		err  error
		want error
	}
	var checks []check
	add := func(name string, want error, err error) { checks = append(checks, check{name, err, want}) }

	_, err := v.Verify(ekPub, ecc.EKCert, nil, ecc.Now.Add(-72*time.Hour))
	add("EK cert not yet valid", ErrEKUntrusted, err)
	_, err = v.Verify(ekPub, ecc.EKCert, nil, time.Time{})
	add("no verification time", ErrEKUntrusted, err)
	_, err = (&EKVerifier{}).Verify(ekPub, ecc.EKCert, nil, ecc.Now)
	add("no roots", ErrEKUntrusted, err)
	_, err = v.Verify(ekPub, nil, nil, ecc.Now)
	add("no cert, not allowlisted", ErrEKUntrusted, err)
	rsaEK, _ := ParseEKPublic(rsa.EKPublic)
	if !bytes.Equal(rsa.EKPublic, ecc.EKPublic) {
		_, err = v.Verify(rsaEK, ecc.EKCert, nil, ecc.Now)
		add("cert of another EK", ErrEKUntrusted, err)
	}
	// Only the issuer configured, as a root: the chain must end at a root.
	onlyRoots, onlyInter, _ := ParseEKRoots([][]byte{ecc.IssuerPEM})
	_, err = (&EKVerifier{Roots: onlyRoots, Intermediates: onlyInter}).Verify(ekPub, ecc.EKCert, nil, ecc.Now)
	add("issuer only (no root)", ErrEKUntrusted, err)
	_, err = v.Verify(ekPub, []byte{0x30, 0x03, 0x02, 0x01}, nil, ecc.Now)
	add("garbage certificate", ErrMalformed, err)

	ak := ecc.AK
	ak.CreateSignature = bytes.Clone(ak.CreateSignature)
	ak.CreateSignature[len(ak.CreateSignature)-1] ^= 1
	add("AK creation signature altered", ErrAKInvalid, VerifyAK(ekPub, ak))
	ak = ecc.AK
	ak.CreateData = append(bytes.Clone(ak.CreateData), 0)
	add("AK creation data altered", ErrAKInvalid, VerifyAK(ekPub, ak))
	ak = ecc.AK
	ak.Public = rsa.AK.Public
	add("AK public of another AK", ErrAKInvalid, VerifyAK(ekPub, ak))
	add("AK is the EK's TPMT_PUBLIC? (garbage)", ErrMalformed, VerifyAK(ekPub, attest.AttestationParameters{Public: []byte{0, 1}}))
	add("no EK", ErrMalformed, VerifyAK(nil, ecc.AK))
	_, _, err = NewChallenge(nil, ekPub, ecc.AK)
	add("no randomness", ErrActivation, err)
	_, _, err = NewChallenge(bytes.NewReader(nil), ekPub, ecc.AK)
	add("randomness exhausted", ErrActivation, err)
	add("wrong answer", ErrActivation, CheckSecret([]byte("secret"), []byte("secreT")))
	add("no secret", ErrActivation, CheckSecret(nil, nil))

	_, err = VerifyCertification(ecc.AK.Public, ecc.Key, otherNonce, csrPub)
	add("certification, other nonce", ErrNonce, err)
	_, err = VerifyCertification(ecc.AK.Public, ecc.Key, nil, csrPub)
	add("certification, no nonce", ErrNonce, err)
	_, err = VerifyCertification(rsa.AK.Public, ecc.Key, ecc.Nonce, csrPub)
	add("certification by another AK", ErrCertification, err)
	_, err = VerifyCertification(ecc.AK.Public, rsa.Key, ecc.Nonce, csrPub)
	add("another TPM's certification", ErrCertification, err)
	rsaCSR, _ := x509.ParsePKIXPublicKey(rsa.KeyPKIX)
	_, err = VerifyCertification(ecc.AK.Public, ecc.Key, ecc.Nonce, rsaCSR)
	add("CSR key differs", ErrKeyMismatch, err)
	_, err = VerifyCertification(ecc.Key.Public, ecc.Key, ecc.Nonce, csrPub)
	add("device key as AK", ErrAKInvalid, err)

	_, err = VerifyQuote(ecc.AK.Public, ecc.Quotes, fromPCRJSON(ecc.PCRs), otherNonce)
	add("quote, other nonce", ErrNonce, err)
	_, err = VerifyQuote(rsa.AK.Public, ecc.Quotes, fromPCRJSON(ecc.PCRs), ecc.Nonce)
	add("quote, other AK", ErrQuote, err)
	_, err = VerifyQuote(ecc.AK.Public, nil, fromPCRJSON(ecc.PCRs), ecc.Nonce)
	add("no quote", ErrQuote, err)
	pcrs := fromPCRJSON(ecc.PCRs)
	pcrs[7].Digest[0] ^= 0xff
	_, err = VerifyQuote(ecc.AK.Public, ecc.Quotes, pcrs, ecc.Nonce)
	add("PCR 7 altered", ErrQuote, err)
	_, err = VerifyQuote(ecc.AK.Public, ecc.Quotes, append(fromPCRJSON(ecc.PCRs), attest.PCR{Index: 24, DigestAlg: crypto.SHA256, Digest: make([]byte, 32)}), ecc.Nonce)
	add("PCR 24", ErrMalformed, err)
	_, err = VerifyQuote(ecc.AK.Public, ecc.Quotes, append(fromPCRJSON(ecc.PCRs), attest.PCR{Index: 1, DigestAlg: crypto.SHA1, Digest: make([]byte, 20)}), ecc.Nonce)
	add("PCR in an unquoted bank", ErrQuote, err)

	for _, c := range checks {
		checkSentinel(t, c.name, c.err)
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: error = %v, want %v", c.name, c.err, c.want)
		}
	}
}

// TestAllowlist: an allowlisted EK is trusted without certificate, and with
// one that does not chain; a certificate for another key is refused even so.
func TestAllowlist(t *testing.T) {
	ev := fixtures(t)["ecc"]
	ekPub, _ := ParseEKPublic(ev.EKPublic)
	fp, _ := EKFingerprint(ekPub)
	v := &EKVerifier{Allowlist: map[string]bool{fp: true}}
	for _, cert := range [][]byte{nil, ev.EKCert} {
		res, err := v.Verify(ekPub, cert, nil, ev.Now)
		if err != nil || !res.Allowlisted || res.Certified {
			t.Errorf("Verify(cert=%v) = %+v, %v", cert != nil, res, err)
		}
	}
	other, _ := ParseEKPublic(fixtures(t)["rsa"].EKPublic)
	if fp2, _ := EKFingerprint(other); fp2 != fp {
		v.Allowlist[fp2] = true
		_, err := v.Verify(other, ev.EKCert, nil, ev.Now)
		if !errors.Is(err, ErrEKUntrusted) {
			t.Errorf("allowlisted EK with another EK's certificate: %v", err)
		}
	}
}

// TestParseEKCertificateNV: the TCG NV header and trailing padding.
func TestParseEKCertificateNV(t *testing.T) {
	ev := fixtures(t)["ecc"]
	nv := append([]byte{0x10, 0x01, 0x00, 0, 0}, ev.EKCert...)
	binary.BigEndian.PutUint16(nv[3:5], uint16(len(ev.EKCert)))
	nv = append(nv, bytes.Repeat([]byte{0xff}, 100)...)
	for name, der := range map[string][]byte{"plain": ev.EKCert, "nv": nv, "padded": append(bytes.Clone(ev.EKCert), 0, 0, 0)} {
		c, err := ParseEKCertificate(der)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(c.Certificate.Raw, ev.EKCert) || len(c.Certificate.UnhandledCriticalExtensions) != 0 || c.Manufacturer == "" {
			t.Errorf("%s: %+v", name, c)
		}
	}
	ekPub, _ := ParseEKPublic(ev.EKPublic)
	if _, err := verifier(t, ev).Verify(ekPub, nv, nil, ev.Now); err != nil {
		t.Errorf("Verify with NV header: %v", err)
	}
}

// TestTruncated cuts every structure at many lengths and flips bytes: each
// call must return an error wrapping one sentinel, never panic or succeed.
func TestTruncated(t *testing.T) {
	ev := fixtures(t)["ecc"]
	ekPub, _ := ParseEKPublic(ev.EKPublic)
	csrPub, _ := x509.ParsePKIXPublicKey(ev.KeyPKIX)
	pcrs := func() []attest.PCR { return fromPCRJSON(ev.PCRs) }
	type field struct {
		name string
		b    []byte
		run  func(b []byte) error
	}
	fields := []field{
		{"AK.Public", ev.AK.Public, func(b []byte) error { ak := ev.AK; ak.Public = b; return VerifyAK(ekPub, ak) }},
		{"AK.CreateData", ev.AK.CreateData, func(b []byte) error { ak := ev.AK; ak.CreateData = b; return VerifyAK(ekPub, ak) }},
		{"AK.CreateAttestation", ev.AK.CreateAttestation, func(b []byte) error { ak := ev.AK; ak.CreateAttestation = b; return VerifyAK(ekPub, ak) }},
		{"AK.CreateSignature", ev.AK.CreateSignature, func(b []byte) error { ak := ev.AK; ak.CreateSignature = b; return VerifyAK(ekPub, ak) }},
		{"Key.Public", ev.Key.Public, func(b []byte) error {
			k := ev.Key
			k.Public = b
			_, err := VerifyCertification(ev.AK.Public, k, ev.Nonce, csrPub)
			return err
		}},
		{"Key.CreateAttestation", ev.Key.CreateAttestation, func(b []byte) error {
			k := ev.Key
			k.CreateAttestation = b
			_, err := VerifyCertification(ev.AK.Public, k, ev.Nonce, csrPub)
			return err
		}},
		{"Key.CreateSignature", ev.Key.CreateSignature, func(b []byte) error {
			k := ev.Key
			k.CreateSignature = b
			_, err := VerifyCertification(ev.AK.Public, k, ev.Nonce, csrPub)
			return err
		}},
		{"AKPublic (certification)", ev.AK.Public, func(b []byte) error {
			_, err := VerifyCertification(b, ev.Key, ev.Nonce, csrPub)
			return err
		}},
		{"Quote", ev.Quotes[0].Quote, func(b []byte) error {
			q := ev.Quotes[0]
			q.Quote = b
			_, err := VerifyQuote(ev.AK.Public, []attest.Quote{q}, pcrs(), ev.Nonce)
			return err
		}},
		{"Quote.Signature", ev.Quotes[0].Signature, func(b []byte) error {
			q := ev.Quotes[0]
			q.Signature = b
			_, err := VerifyQuote(ev.AK.Public, []attest.Quote{q}, pcrs(), ev.Nonce)
			return err
		}},
		{"EKCert", ev.EKCert, func(b []byte) error {
			_, err := verifier(t, ev).Verify(ekPub, b, nil, ev.Now)
			return err
		}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, f := range fields {
		for n := 0; n < len(f.b); n++ {
			err := f.run(bytes.Clone(f.b[:n]))
			if err == nil {
				t.Errorf("%s truncated to %d of %d bytes: accepted", f.name, n, len(f.b))
				continue
			}
			checkSentinel(t, f.name+" truncated to "+strconv.Itoa(n), err)
		}
		for i := 0; i < 200; i++ {
			b := bytes.Clone(f.b)
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
			checkSentinel(t, f.name+" with a byte flipped", f.run(b))
		}
	}
}

// TestWriteFuzzSeeds rewrites the committed seed corpora from the fixtures
// when ROOTGATE_WRITE_TESTDATA=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("ROOTGATE_WRITE_TESTDATA") != "1" {
		t.Skip("set ROOTGATE_WRITE_TESTDATA=1 to rewrite testdata/fuzz")
	}
	for name, ev := range fixtures(t) {
		seeds := map[string][][]byte{
			"FuzzVerifyAK":                {ev.EKPublic, ev.AK.Public, ev.AK.CreateData, ev.AK.CreateAttestation, ev.AK.CreateSignature},
			"FuzzVerifyCertification":     {ev.AK.Public, ev.Key.Public, ev.Key.CreateAttestation, ev.Key.CreateSignature, ev.Nonce, ev.KeyPKIX},
			"FuzzVerifyQuote":             {ev.AK.Public, ev.Quotes[0].Quote, ev.Quotes[0].Signature, pcrBlob(fromPCRJSON(ev.PCRs)), ev.Nonce},
			"FuzzParseEKCertificate":      {ev.EKCert},
			"FuzzParseEKPublic":           {ev.EKPublic},
			"FuzzParseEKRoots":            {ev.RootPEM, ev.IssuerPEM},
			"FuzzEKVerify":                {ev.EKPublic, ev.EKCert, ev.IssuerPEM},
			"FuzzDeviceIDFromFingerprint": {[]byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")},
		}
		for target, args := range seeds {
			dir := filepath.Join("testdata", "fuzz", target)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			sb.WriteString("go test fuzz v1\n")
			for i, a := range args {
				if target == "FuzzDeviceIDFromFingerprint" {
					fmt.Fprintf(&sb, "string(%q)\n", a)
					continue
				}
				_ = i
				fmt.Fprintf(&sb, "[]byte(%q)\n", a)
			}
			if err := os.WriteFile(filepath.Join(dir, "swtpm-"+name), []byte(sb.String()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// pcrBlob encodes SHA-256 PCRs 0..n-1 as their concatenated digests, the
// form the quote fuzzer takes.
func pcrBlob(pcrs []attest.PCR) []byte {
	var b []byte
	for _, p := range pcrs {
		b = append(b, p.Digest...)
	}
	return b
}

func pcrsFromBlob(b []byte) []attest.PCR {
	var out []attest.PCR
	for i := 0; len(b) >= 32 && i <= maxPCRIndex; i++ {
		out = append(out, attest.PCR{Index: i, DigestAlg: crypto.SHA256, Digest: b[:32]})
		b = b[32:]
	}
	return out
}
