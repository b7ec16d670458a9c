package attestor

import (
	"bytes"
	"crypto"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// SecretSize is the size in bytes of a credential-activation secret.
const SecretSize = 32

// akAttributes are the attributes every attestation key must have: it
// signs, only TPM-generated data (restricted), never leaves this TPM
// (fixedTPM) or its parent (fixedParent), and its private part was made by
// the TPM (sensitiveDataOrigin).
const akAttributes = tpm2.FlagSign | tpm2.FlagRestricted | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin

// VerifyAK checks that ak describes an attestation key created in a TPM: a
// restricted signing key (RSA >= 2048 bits with RSASSA, or ECDSA on a NIST
// curve), fixedTPM, fixedParent, sensitiveDataOrigin, not a decryption key,
// with a SHA-256 or stronger name algorithm and signing hash, whose
// creation data is certified by the TPM (TPM_GENERATED_VALUE, a creation
// attestation naming this very key and digesting this creation data) with a
// valid signature by the key itself. ekPub, the EK the challenge will be
// sealed to, must be an acceptable EK and must not be the AK.
//
// VerifyAK does not prove that the AK and the EK share a TPM: only the
// credential-activation challenge (NewChallenge, CheckSecret) does.
// Errors wrap ErrMalformed or ErrAKInvalid.
func VerifyAK(ekPub crypto.PublicKey, ak attest.AttestationParameters) error {
	if err := checkEKKey(ekPub); err != nil {
		return err
	}
	_, err := verifyAK(ak)
	if err != nil {
		return err
	}
	// go-attestation's own checks, as a second opinion.
	p := attest.ActivationParameters{EK: ekPub, AK: ak}
	if err := safeCall(p.CheckAKParameters); err != nil {
		return fmt.Errorf("%w: %v", ErrAKInvalid, err)
	}
	return nil
}

// verifyAK checks the AK parameters and returns the AK's public area.
func verifyAK(ak attest.AttestationParameters) (*publicArea, error) {
	pub, err := parsePublic("AK public area", ak.Public)
	if err != nil {
		return nil, err
	}
	if err := checkAKPublic(pub); err != nil {
		return nil, err
	}
	if len(ak.CreateData) == 0 {
		return nil, fmt.Errorf("%w: AK creation data missing", ErrMalformed)
	}
	if _, err := safeDecodeCreationData(ak.CreateData); err != nil {
		return nil, fmt.Errorf("%w: AK creation data: %v", ErrMalformed, err)
	}
	att, err := parseAttest("AK creation attestation", ak.CreateAttestation, tpm2.TagAttestCreation)
	if err != nil {
		return nil, err
	}
	if att.Magic != tpmGeneratedValue {
		return nil, fmt.Errorf("%w: AK creation attestation not produced by a TPM (magic 0x%08x)", ErrAKInvalid, att.Magic)
	}
	ci := att.AttestedCreationInfo
	if ci.Name.Digest == nil || ci.Name.Digest.Alg != pub.NameAlg || !bytes.Equal(ci.Name.Digest.Value, pub.nameDigest()) {
		return nil, fmt.Errorf("%w: AK creation attestation names another key", ErrAKInvalid)
	}
	h, _ := nameHash(pub.NameAlg)
	d := h.New()
	d.Write(ak.CreateData)
	if !bytes.Equal(ci.OpaqueDigest, d.Sum(nil)) {
		return nil, fmt.Errorf("%w: AK creation attestation does not digest the creation data", ErrAKInvalid)
	}
	if err := verifySignature(pub, ak.CreateAttestation, ak.CreateSignature); err != nil {
		return nil, fmt.Errorf("%w: AK creation attestation: %v", ErrAKInvalid, err)
	}
	return pub, nil
}

// checkAKPublic checks the attributes and schemes of an attestation key.
func checkAKPublic(pub *publicArea) error {
	if !pub.has(akAttributes) {
		return fmt.Errorf("%w: AK attributes 0x%08x lack %s", ErrAKInvalid, uint32(pub.Attributes), missingAttrs(pub.Attributes, akAttributes))
	}
	if pub.Attributes&tpm2.FlagDecrypt != 0 {
		return fmt.Errorf("%w: AK is a decryption key", ErrAKInvalid)
	}
	if _, err := pub.signHash(); err != nil {
		return fmt.Errorf("%w: AK %v", ErrAKInvalid, err)
	}
	return nil
}

// missingAttrs names the attributes of want that got lacks.
func missingAttrs(got, want tpm2.KeyProp) string {
	names := []struct {
		f tpm2.KeyProp
		n string
	}{
		{tpm2.FlagFixedTPM, "fixedTPM"}, {tpm2.FlagFixedParent, "fixedParent"},
		{tpm2.FlagSensitiveDataOrigin, "sensitiveDataOrigin"}, {tpm2.FlagRestricted, "restricted"},
		{tpm2.FlagSign, "sign"}, {tpm2.FlagDecrypt, "decrypt"},
	}
	var s string
	for _, x := range names {
		if want&x.f != 0 && got&x.f == 0 {
			if s != "" {
				s += ","
			}
			s += x.n
		}
	}
	return s
}

// NewChallenge makes a credential-activation challenge: a fresh secret of
// SecretSize bytes from rand, sealed to ekPub and bound to the AK's name, so
// that only the TPM holding both the EK and the AK can recover it (with
// TPM2_ActivateCredential). The AK is verified first (see VerifyAK). Keep
// secret on the server and compare the device's answer with CheckSecret.
//
// Errors wrap ErrMalformed, ErrAKInvalid or ErrActivation.
func NewChallenge(rand io.Reader, ekPub crypto.PublicKey, ak attest.AttestationParameters) (secret []byte, ec *attest.EncryptedCredential, err error) {
	if rand == nil {
		return nil, nil, fmt.Errorf("%w: no source of randomness", ErrActivation)
	}
	if err := VerifyAK(ekPub, ak); err != nil {
		return nil, nil, err
	}
	p := attest.ActivationParameters{EK: ekPub, AK: ak, Rand: rand}
	err = safeCall(func() error {
		var err error
		secret, ec, err = p.Generate()
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: make challenge: %v", ErrActivation, err)
	}
	if len(secret) != SecretSize {
		return nil, nil, fmt.Errorf("%w: secret of %d bytes", ErrActivation, len(secret))
	}
	return secret, ec, nil
}

// CheckSecret compares the device's answer got with the challenge's secret
// want in constant time. Errors wrap ErrActivation.
func CheckSecret(want, got []byte) error {
	if len(want) == 0 {
		return fmt.Errorf("%w: no secret to compare with", ErrActivation)
	}
	if subtle.ConstantTimeCompare(want, got) != 1 {
		return fmt.Errorf("%w: activation secret does not match", ErrActivation)
	}
	return nil
}

// safeCall runs f, turning a panic into an error.
func safeCall(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return f()
}

func safeDecodeCreationData(b []byte) (cd *tpm2.CreationData, err error) {
	err = safeCall(func() error {
		var err error
		cd, err = tpm2.DecodeCreationData(b)
		return err
	})
	if err == nil && cd == nil {
		err = errors.New("empty")
	}
	return cd, err
}
