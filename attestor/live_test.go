package attestor

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/internal/tpmdev"
)

// Tests in this file run against live swtpm devices manufactured by a
// private EK CA (internal/testenv). They are skipped with -short.
// ROOTGATE_WRITE_TESTDATA=1 also rewrites testdata/ and the fuzz seeds from
// the evidence they capture.

// device is one running swtpm with go-attestation open on it. ch is the same
// command channel, for raw go-tpm commands between go-attestation calls.
type device struct {
	tpm   *attest.TPM
	ch    *tpmdev.Channel
	ek    attest.EK
	ekDER []byte
}

func openDevice(t *testing.T, st *testenv.TPMState) *device {
	t.Helper()
	sw := testenv.StartSwtpm(t, st)
	ch, err := tpmdev.OpenChannel(context.Background(), sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := attest.OpenTPM(&attest.OpenConfig{CommandChannel: ch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	eks, err := tpm.EKs()
	if err != nil || len(eks) == 0 {
		t.Fatalf("EKs() = %v, %v", eks, err)
	}
	der, err := x509.MarshalPKIXPublicKey(eks[0].Public)
	if err != nil {
		t.Fatal(err)
	}
	return &device{tpm: tpm, ch: ch, ek: eks[0], ekDER: der}
}

func (d *device) newAK(t *testing.T, alg attest.Algorithm) *attest.AK {
	t.Helper()
	ak, err := d.tpm.NewAK(&attest.AKConfig{Algorithm: alg})
	if err != nil {
		t.Fatal(err)
	}
	return ak // swtpm holds 3 transient objects: callers close at once
}

func (d *device) newKey(t *testing.T, ak *attest.AK, alg attest.Algorithm, nonce []byte) *attest.Key {
	t.Helper()
	size := 256
	if alg == attest.RSA {
		size = 2048
	}
	k, err := d.tpm.NewKey(ak, &attest.KeyConfig{Algorithm: alg, Size: size, QualifyingData: nonce})
	if err != nil {
		t.Fatal(err)
	}
	return k // callers close at once
}

func (d *device) quote(t *testing.T, ak *attest.AK, nonce []byte) ([]attest.Quote, []attest.PCR) {
	t.Helper()
	q, err := ak.Quote(d.tpm, nonce, attest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := d.tpm.PCRs(attest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	return []attest.Quote{*q}, pcrs
}

func nonce(t *testing.T) []byte {
	t.Helper()
	n := make([]byte, 32)
	rand.Read(n)
	return n
}

func wantErr(t *testing.T, what string, err, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Errorf("%s: error = %v, want %v", what, err, sentinel)
	} else {
		t.Logf("%s: %v", what, err)
	}
}

// TestLive runs the whole chain of checks, good and bad, against live
// swtpm devices.
func TestLive(t *testing.T) {
	if testing.Short() {
		t.Skip("needs swtpm")
	}
	ca := testenv.NewEKCA(t)
	states := ca.ManufactureN(t, 2)
	noCert := ca.ManufactureNoCert(t)
	otherCA := testenv.NewEKCA(t)
	foreign := otherCA.Manufacture(t)

	roots, inter, err := ParseEKRoots([][]byte{ca.RootPEM(), ca.IssuerPEM()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, b := openDevice(t, states[0]), openDevice(t, states[1])

	t.Run("GoodPath", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			akAlg, alg attest.Algorithm
		}{{"ECC", attest.ECDSA, attest.ECDSA}, {"RSA", attest.RSA, attest.ECDSA}} {
			t.Run(tc.name, func(t *testing.T) {
				ev := goodPath(t, a, roots, inter, now, tc.akAlg, tc.alg)
				ev.RootPEM, ev.IssuerPEM = ca.RootPEM(), ca.IssuerPEM()
				ev.Source = "swtpm 0.7.1 manufactured by swtpm_setup --create-ek-cert with a private swtpm-localca (TestLive/GoodPath/" + tc.name + ")"
				writeEvidence(t, "swtpm-"+map[attest.Algorithm]string{attest.ECDSA: "ecc", attest.RSA: "rsa"}[tc.akAlg]+".json", ev)
			})
		}
	})

	t.Run("AllowlistedWithoutCert", func(t *testing.T) {
		d := openDevice(t, noCert)
		if d.ek.Certificate != nil {
			t.Fatal("device has an EK certificate")
		}
		fp, _ := EKFingerprint(d.ek.Public)
		v := &EKVerifier{Roots: roots, Intermediates: inter}
		_, err := v.Verify(d.ek.Public, nil, nil, now)
		wantErr(t, "EK without certificate, not allowlisted", err, ErrEKUntrusted)
		v.Allowlist = map[string]bool{fp: true}
		res, err := v.Verify(d.ek.Public, nil, nil, now)
		if err != nil || !res.Allowlisted || res.Certified {
			t.Fatalf("Verify = %+v, %v; want allowlisted", res, err)
		}
		ak := d.newAK(t, attest.ECDSA)
		defer ak.Close(d.tpm)
		secret, ec, err := NewChallenge(rand.Reader, d.ek.Public, ak.AttestationParameters())
		if err != nil {
			t.Fatal(err)
		}
		got, err := ak.ActivateCredential(d.tpm, *ec)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckSecret(secret, got); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("EKFromUnconfiguredCA", func(t *testing.T) {
		d := openDevice(t, foreign)
		v := &EKVerifier{Roots: roots, Intermediates: inter}
		_, err := v.Verify(d.ek.Public, d.ek.Certificate.Raw, nil, now)
		wantErr(t, "EK certificate from another CA", err, ErrEKUntrusted)
		// Even when the device sends the other CA's issuer along.
		_, err = v.Verify(d.ek.Public, foreign.EKCert, [][]byte{otherCA.Issuer().Raw}, now)
		wantErr(t, "EK certificate from another CA, chain presented", err, ErrEKUntrusted)
		// Another TPM's (trusted) certificate for this EK.
		_, err = v.Verify(d.ek.Public, states[0].EKCert, nil, now)
		wantErr(t, "EK certificate of another TPM", err, ErrEKUntrusted)
		// A trusted certificate, outside its validity.
		_, err = v.Verify(a.ek.Public, states[0].EKCert, nil, now.Add(-48*time.Hour))
		wantErr(t, "EK certificate not yet valid", err, ErrEKUntrusted)
	})

	t.Run("AKOfAnotherTPM", func(t *testing.T) {
		akA := a.newAK(t, attest.ECDSA)
		defer akA.Close(a.tpm)
		// The AK of TPM a presented with the EK of TPM b: the AK itself is
		// sound, and the challenge is sealed to b's EK and a's AK name.
		secret, ec, err := NewChallenge(rand.Reader, b.ek.Public, akA.AttestationParameters())
		if err != nil {
			t.Fatal(err)
		}
		if got, err := akA.ActivateCredential(a.tpm, *ec); err == nil {
			t.Fatalf("TPM a activated a credential sealed to TPM b's EK; matches secret: %v", CheckSecret(secret, got) == nil)
		} else {
			t.Logf("TPM a: ActivateCredential: %v", err)
		}
		// TPM b holds the EK but not the AK: its own AK has another name.
		akB := b.newAK(t, attest.ECDSA)
		defer akB.Close(b.tpm)
		if got, err := akB.ActivateCredential(b.tpm, *ec); err == nil {
			t.Fatalf("TPM b activated a credential bound to TPM a's AK; matches secret: %v", CheckSecret(secret, got) == nil)
		} else {
			t.Logf("TPM b: ActivateCredential: %v", err)
		}
		// Whatever the device answers instead is refused.
		wantErr(t, "guessed answer", CheckSecret(secret, make([]byte, SecretSize)), ErrActivation)
	})

	t.Run("WrongActivationAnswer", func(t *testing.T) {
		ak := a.newAK(t, attest.ECDSA)
		defer ak.Close(a.tpm)
		secret, ec, err := NewChallenge(rand.Reader, a.ek.Public, ak.AttestationParameters())
		if err != nil {
			t.Fatal(err)
		}
		got, err := ak.ActivateCredential(a.tpm, *ec)
		if err != nil {
			t.Fatal(err)
		}
		bad := bytes.Clone(got)
		bad[0] ^= 1
		wantErr(t, "flipped bit", CheckSecret(secret, bad), ErrActivation)
		wantErr(t, "truncated", CheckSecret(secret, got[:SecretSize-1]), ErrActivation)
		wantErr(t, "empty", CheckSecret(secret, nil), ErrActivation)
		// The answer to another challenge for the same AK.
		secret2, _, err := NewChallenge(rand.Reader, a.ek.Public, ak.AttestationParameters())
		if err != nil {
			t.Fatal(err)
		}
		wantErr(t, "answer to an earlier challenge", CheckSecret(secret2, got), ErrActivation)
	})

	t.Run("Certification", func(t *testing.T) {
		ak := a.newAK(t, attest.ECDSA)
		defer ak.Close(a.tpm)
		akPub := ak.AttestationParameters().Public
		n := nonce(t)
		key := a.newKey(t, ak, attest.ECDSA, n)
		cp := key.CertificationParameters()
		key.Close()
		if _, err := VerifyCertification(akPub, cp, n, key.Public()); err != nil {
			t.Fatalf("good certification refused: %v", err)
		}

		otherAK := a.newAK(t, attest.ECDSA)
		_, err := VerifyCertification(otherAK.AttestationParameters().Public, cp, n, key.Public())
		wantErr(t, "checked against another AK of the same TPM", err, ErrCertification)
		// An attestation key presented as the device key.
		_, err = VerifyCertification(akPub, mustCertify(t, a, ak, otherAK, n), n, otherAK.Public())
		wantErr(t, "restricted key certified", err, ErrCertification)
		otherAK.Close(a.tpm)

		akB := b.newAK(t, attest.ECDSA)
		keyB := b.newKey(t, akB, attest.ECDSA, n)
		cpB := keyB.CertificationParameters()
		keyB.Close()
		akB.Close(b.tpm)
		_, err = VerifyCertification(akPub, cpB, n, keyB.Public())
		wantErr(t, "device key certified by another TPM's AK", err, ErrCertification)

		_, err = VerifyCertification(akPub, cp, nonce(t), key.Public())
		wantErr(t, "certification over another nonce", err, ErrNonce)
		keyNoNonce := a.newKey(t, ak, attest.ECDSA, nil)
		keyNoNonce.Close()
		_, err = VerifyCertification(akPub, keyNoNonce.CertificationParameters(), n, keyNoNonce.Public())
		wantErr(t, "certification without nonce", err, ErrNonce)

		other := a.newKey(t, ak, attest.ECDSA, n)
		other.Close()
		_, err = VerifyCertification(akPub, cp, n, other.Public())
		wantErr(t, "CSR key is another TPM key", err, ErrKeyMismatch)
		soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		_, err = VerifyCertification(akPub, cp, n, soft.Public())
		wantErr(t, "CSR key is a software key", err, ErrKeyMismatch)
		_, err = VerifyCertification(akPub, cp, n, nil)
		wantErr(t, "no CSR key", err, ErrKeyMismatch)

		// Public area of one key with the certification of another.
		swapped := cp
		swapped.Public = other.CertificationParameters().Public
		_, err = VerifyCertification(akPub, swapped, n, other.Public())
		wantErr(t, "public area of another key", err, ErrCertification)

		// go-attestation's RSA keys may also decrypt: not a device key.
		rsaKey := a.newKey(t, ak, attest.RSA, n)
		rsaKey.Close()
		_, err = VerifyCertification(akPub, rsaKey.CertificationParameters(), n, rsaKey.Public())
		wantErr(t, "RSA sign+decrypt key", err, ErrCertification)
	})

	t.Run("SoftwareKeyAsTPMKey", func(t *testing.T) {
		ak := a.newAK(t, attest.ECDSA)
		defer ak.Close(a.tpm)
		akPub := ak.AttestationParameters().Public
		n := nonce(t)
		soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

		// 1. The software key's public part loaded into the TPM with
		// TPM2_LoadExternal, claiming fixedTPM|fixedParent|sensitiveDataOrigin,
		// then certified by the genuine AK.
		cp, err := certifyExternal(a, ak, soft, n, true)
		if err != nil {
			t.Logf("TPM refused to load or certify the public-only key: %v", err)
		} else {
			_, err = VerifyCertification(akPub, *cp, n, soft.Public())
			wantErr(t, "external public-only key claiming TPM attributes", err, ErrCertification)
			writeEvidence(t, "swtpm-external.json", &evidence{
				Source:   "TestLive/SoftwareKeyAsTPMKey: a software P-256 key loaded with TPM2_LoadExternal (public only, owner hierarchy) claiming fixedTPM|fixedParent|sensitiveDataOrigin, certified by a genuine ECC AK",
				AK:       ak.AttestationParameters(),
				Nonce:    n,
				Key:      *cp,
				KeyPKIX:  mustPKIX(t, soft.Public()),
				EKPublic: a.ekDER,
			})
		}
		// A primary key (the SRK) has a hierarchy as parent, like an
		// externally loaded key: the qualified-name check must see it.
		cpSRK, err := certifyHandle(a, ak, 0x81000001, n)
		if err != nil {
			t.Fatal(err)
		}
		_, err = VerifyCertification(akPub, *cpSRK, n, nil)
		wantErr(t, "primary key (SRK) certified", err, ErrCertification)
		if err == nil || !strings.Contains(err.Error(), "primary") {
			t.Errorf("primary key refused for another reason than its parent: %v", err)
		}

		// 2. The whole software key (private part too) loaded externally: the
		// TPM insists it is not fixedTPM.
		cp, err = certifyExternal(a, ak, soft, n, false)
		if err != nil {
			t.Fatalf("load and certify external key with private part: %v", err)
		}
		_, err = VerifyCertification(akPub, *cp, n, soft.Public())
		wantErr(t, "external key with private part", err, ErrCertification)

		// 3. A forged TPM2_Certify attestation signed by the software key
		// and presented under the genuine AK.
		forged := forgeCertification(t, soft, soft, n)
		_, err = VerifyCertification(akPub, forged, n, soft.Public())
		wantErr(t, "attestation forged with a software key", err, ErrCertification)

		// 4. An unrestricted TPM key posing as the AK: it signs any digest,
		// including that of a forged attestation with TPM_GENERATED_VALUE.
		tpmKey := a.newKey(t, ak, attest.ECDSA, n)
		defer tpmKey.Close()
		priv, err := tpmKey.Private(tpmKey.Public())
		if err != nil {
			t.Fatal(err)
		}
		forged = forgeCertification(t, priv.(crypto.Signer), soft, n)
		_, err = VerifyCertification(tpmKey.CertificationParameters().Public, forged, n, soft.Public())
		wantErr(t, "attestation forged by an unrestricted TPM key as AK", err, ErrAKInvalid)
		forgedAK := forgeAK(t, priv.(crypto.Signer), tpmKey.CertificationParameters().Public)
		wantErr(t, "AK parameters forged with an unrestricted TPM key", VerifyAK(a.ek.Public, forgedAK), ErrAKInvalid)
		_, _, err = NewChallenge(rand.Reader, a.ek.Public, forgedAK)
		wantErr(t, "challenge for a forged AK", err, ErrAKInvalid)
	})

	t.Run("Quote", func(t *testing.T) {
		ak := a.newAK(t, attest.ECDSA)
		defer ak.Close(a.tpm)
		akPub := ak.AttestationParameters().Public
		n := nonce(t)
		quotes, pcrs := a.quote(t, ak, n)
		if _, err := VerifyQuote(akPub, quotes, pcrs, n); err != nil {
			t.Fatalf("good quote refused: %v", err)
		}
		_, err := VerifyQuote(akPub, quotes, pcrs, nonce(t))
		wantErr(t, "quote with another nonce", err, ErrNonce)
		akB := b.newAK(t, attest.ECDSA)
		defer akB.Close(b.tpm)
		_, err = VerifyQuote(akB.AttestationParameters().Public, quotes, pcrs, n)
		wantErr(t, "quote checked against another AK", err, ErrQuote)
		bad := clonePCRs(pcrs)
		bad[0].Digest[0] ^= 1
		_, err = VerifyQuote(akPub, quotes, bad, n)
		wantErr(t, "PCR value changed", err, ErrQuote)
		dup := append(clonePCRs(pcrs), attest.PCR{Index: 0, DigestAlg: crypto.SHA256, Digest: make([]byte, 32)})
		_, err = VerifyQuote(akPub, quotes, dup, n)
		wantErr(t, "PCR 0 given twice", err, ErrMalformed)
		qB, pB := b.quote(t, akB, n)
		_, err = VerifyQuote(akPub, qB, pB, n)
		wantErr(t, "another TPM's quote", err, ErrQuote)
	})
}

// goodPath runs the whole enrollment flow on d and returns its evidence.
func goodPath(t *testing.T, d *device, roots, inter *x509.CertPool, now time.Time, akAlg, keyAlg attest.Algorithm) *evidence {
	t.Helper()
	v := &EKVerifier{Roots: roots, Intermediates: inter}
	ekCert := d.ek.Certificate.Raw
	ekPub, err := ParseEKPublic(d.ekDER)
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Verify(ekPub, ekCert, nil, now)
	if err != nil {
		t.Fatalf("EK: %v", err)
	}
	if !res.Certified || res.Allowlisted || len(res.Chain) != 3 {
		t.Errorf("EK result = %+v, want certified by a chain of 3", res)
	}
	if res.Manufacturer != "id:00001014" || res.Model != "swtpm" || res.FirmwareVersion == "" {
		t.Errorf("EK TPM identity = %q %q %q, want IBM swtpm", res.Manufacturer, res.Model, res.FirmwareVersion)
	}
	ak := d.newAK(t, akAlg)
	defer ak.Close(d.tpm)
	ap := ak.AttestationParameters()
	if err := VerifyAK(ekPub, ap); err != nil {
		t.Fatalf("AK: %v", err)
	}
	secret, ec, err := NewChallenge(rand.Reader, ekPub, ap)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ak.ActivateCredential(d.tpm, *ec)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckSecret(secret, got); err != nil {
		t.Fatal(err)
	}
	n := nonce(t)
	key := d.newKey(t, ak, keyAlg, n)
	key.Close()
	pub, err := VerifyCertification(ap.Public, key.CertificationParameters(), n, key.Public())
	if err != nil {
		t.Fatalf("certification: %v", err)
	}
	if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Error("VerifyCertification returned another key")
	}
	quotes, pcrs := d.quote(t, ak, n)
	verified, err := VerifyQuote(ap.Public, quotes, pcrs, n)
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
	if len(verified) != 24 {
		t.Errorf("verified %d PCRs, want 24", len(verified))
	}
	for _, p := range verified {
		if !p.QuoteVerified() {
			t.Errorf("PCR %d not marked verified", p.Index)
		}
	}
	return &evidence{
		EKPublic:   d.ekDER,
		EKCert:     ekCert,
		Now:        now.UTC().Truncate(time.Second),
		AK:         ap,
		Nonce:      n,
		Key:        key.CertificationParameters(),
		KeyPKIX:    mustPKIX(t, key.Public()),
		Quotes:     quotes,
		PCRs:       toPCRJSON(pcrs),
		Activation: activation{Credential: ec.Credential, Secret: ec.Secret, Answer: got},
	}
}

// mustCertify has ak certify subject (another AK) with qualifying data n.
func mustCertify(t *testing.T, d *device, ak, subject *attest.AK, n []byte) attest.CertificationParameters {
	t.Helper()
	h, err := findLoaded(d.ch, subject.AttestationParameters().Public)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := certifyHandle(d, ak, h, n)
	if err != nil {
		t.Fatal(err)
	}
	return *cp
}

func transientHandles(rw *tpmdev.Channel) ([]tpmutil.Handle, error) {
	vals, _, err := tpm2.GetCapability(rw, tpm2.CapabilityHandles, 64, 0x80000000)
	if err != nil {
		return nil, err
	}
	var hs []tpmutil.Handle
	for _, v := range vals {
		hs = append(hs, v.(tpmutil.Handle))
	}
	return hs, nil
}

// certifyExternal loads soft into the TPM with TPM2_LoadExternal (public
// only, claiming TPM-key attributes; or with its private part and honest
// attributes) and has ak certify it.
func certifyExternal(d *device, ak *attest.AK, soft *ecdsa.PrivateKey, n []byte, publicOnly bool) (*attest.CertificationParameters, error) {
	pub := tpm2.Public{
		Type:       tpm2.AlgECC,
		NameAlg:    tpm2.AlgSHA256,
		Attributes: tpm2.FlagSign | tpm2.FlagUserWithAuth,
		ECCParameters: &tpm2.ECCParams{
			Sign:    &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256},
			CurveID: tpm2.CurveNISTP256,
			Point:   tpm2.ECPoint{XRaw: pad32(soft.X), YRaw: pad32(soft.Y)},
		},
	}
	var priv tpm2.Private
	hier := tpm2.HandleNull
	if publicOnly {
		pub.Attributes |= tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin
		hier = tpm2.HandleOwner
	} else {
		priv = tpm2.Private{Type: tpm2.AlgECC, Sensitive: pad32(soft.D)}
	}
	h, _, err := tpm2.LoadExternal(d.ch, pub, priv, hier)
	if err != nil {
		return nil, err
	}
	defer tpm2.FlushContext(d.ch, h)
	return certifyHandle(d, ak, h, n)
}

// certifyHandle runs TPM2_Certify of h by ak with qualifying data n, on the
// raw channel (go-attestation's AK.Certify takes no qualifying data).
func certifyHandle(d *device, ak *attest.AK, h tpmutil.Handle, n []byte) (*attest.CertificationParameters, error) {
	akH, err := findLoaded(d.ch, ak.AttestationParameters().Public)
	if err != nil {
		return nil, err
	}
	pub, _, _, err := tpm2.ReadPublic(d.ch, h)
	if err != nil {
		return nil, err
	}
	pubEnc, err := pub.Encode()
	if err != nil {
		return nil, err
	}
	att, sig, err := tpm2.CertifyEx(d.ch, "", "", h, akH, n, tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256})
	if err != nil {
		return nil, err
	}
	return &attest.CertificationParameters{Public: pubEnc, CreateAttestation: att, CreateSignature: sig}, nil
}

func findLoaded(rw *tpmdev.Channel, public []byte) (tpmutil.Handle, error) {
	hs, err := transientHandles(rw)
	if err != nil {
		return 0, err
	}
	for _, h := range hs {
		pub, _, _, err := tpm2.ReadPublic(rw, h)
		if err != nil {
			continue
		}
		if enc, _ := pub.Encode(); bytes.Equal(enc, public) {
			return h, nil
		}
	}
	return 0, errors.New("key not loaded")
}

func pad32(x *big.Int) []byte { return x.FillBytes(make([]byte, 32)) }

// forgeCertification builds a TPM2_Certify attestation for subject's key,
// claiming TPM-key attributes, and signs it with signer.
func forgeCertification(t *testing.T, signer crypto.Signer, subject *ecdsa.PrivateKey, n []byte) attest.CertificationParameters {
	t.Helper()
	pub := tpm2.Public{
		Type:       tpm2.AlgECC,
		NameAlg:    tpm2.AlgSHA256,
		Attributes: tpm2.FlagSign | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth,
		ECCParameters: &tpm2.ECCParams{
			Sign:    &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256},
			CurveID: tpm2.CurveNISTP256,
			Point:   tpm2.ECPoint{XRaw: pad32(subject.X), YRaw: pad32(subject.Y)},
		},
	}
	pubEnc, err := pub.Encode()
	if err != nil {
		t.Fatal(err)
	}
	name, _ := pub.Name()
	qn := sha256.Sum256(append([]byte{0x00, 0x0b}, name.Digest.Value...))
	att := tpm2.AttestationData{
		Magic:           tpmGeneratedValue,
		Type:            tpm2.TagAttestCertify,
		QualifiedSigner: tpm2.Name{Digest: &tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: make([]byte, 32)}},
		ExtraData:       n,
		AttestedCertifyInfo: &tpm2.CertifyInfo{
			Name:          name,
			QualifiedName: tpm2.Name{Digest: &tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: qn[:]}},
		},
	}
	attEnc, err := att.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return attest.CertificationParameters{Public: pubEnc, CreateAttestation: attEnc, CreateSignature: signTPM(t, signer, attEnc)}
}

// forgeAK builds creation attestation parameters for the key whose
// TPMT_PUBLIC is public, signed by signer.
func forgeAK(t *testing.T, signer crypto.Signer, public []byte) attest.AttestationParameters {
	t.Helper()
	pub, err := tpm2.DecodePublic(public)
	if err != nil {
		t.Fatal(err)
	}
	name, _ := pub.Name()
	createData := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // a minimal TPMS_CREATION_DATA
	cd := sha256.Sum256(createData)
	att := tpm2.AttestationData{
		Magic:                tpmGeneratedValue,
		Type:                 tpm2.TagAttestCreation,
		QualifiedSigner:      tpm2.Name{Digest: &tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: make([]byte, 32)}},
		AttestedCreationInfo: &tpm2.CreationInfo{Name: name, OpaqueDigest: cd[:]},
	}
	attEnc, err := att.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return attest.AttestationParameters{Public: public, CreateData: createData, CreateAttestation: attEnc, CreateSignature: signTPM(t, signer, attEnc)}
}

// signTPM signs msg (SHA-256, ECDSA) and encodes a TPMT_SIGNATURE.
func signTPM(t *testing.T, signer crypto.Signer, msg []byte) []byte {
	t.Helper()
	d := sha256.Sum256(msg)
	der, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		t.Fatal(err)
	}
	sig, err := tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA256, R: rs.R, S: rs.S}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func clonePCRs(pcrs []attest.PCR) []attest.PCR {
	out := make([]attest.PCR, len(pcrs))
	for i, p := range pcrs {
		out[i] = attest.PCR{Index: p.Index, DigestAlg: p.DigestAlg, Digest: bytes.Clone(p.Digest)}
	}
	return out
}

func mustPKIX(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// writeEvidence stores ev under testdata/ when ROOTGATE_WRITE_TESTDATA=1.
func writeEvidence(t *testing.T, name string, ev *evidence) {
	t.Helper()
	if os.Getenv("ROOTGATE_WRITE_TESTDATA") != "1" {
		return
	}
	b, err := json.MarshalIndent(ev, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", name), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote testdata/%s", name)
}
