package attestor

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// deviceKeyAttributes are the attributes a certified device key must have:
// it signs, never leaves this TPM or its parent, and the TPM generated its
// private part.
const deviceKeyAttributes = tpm2.FlagSign | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin

// VerifyCertification checks that cp certifies a key that lives in the same
// TPM as the AK whose TPMT_PUBLIC is akPublic, and returns that key:
//
//   - akPublic is a restricted signing key (fixedTPM, fixedParent,
//     sensitiveDataOrigin), so it signs only attestations the TPM made;
//   - cp.CreateAttestation is a TPM2_Certify attestation (TPM_GENERATED_VALUE)
//     signed by the AK with its scheme;
//   - its qualifying data (extraData) equals nonce;
//   - the Name it certifies is the Name of cp.Public (nameAlg || H(cp.Public)),
//     and its qualified name shows a storage-key parent, not a hierarchy (a
//     key loaded from outside with TPM2_LoadExternal, whose attributes are
//     whatever the loader wrote, has a hierarchy as parent);
//   - cp.Public is a signing key (RSA >= 2048 or NIST ECDSA) that is fixedTPM,
//     fixedParent, sensitiveDataOrigin, neither restricted nor decrypt;
//   - its public key equals csrPub (compared as PKIX DER).
//
// Errors wrap ErrMalformed, ErrAKInvalid, ErrCertification, ErrNonce or
// ErrKeyMismatch.
func VerifyCertification(akPublic []byte, cp attest.CertificationParameters, nonce []byte, csrPub crypto.PublicKey) (crypto.PublicKey, error) {
	if len(nonce) == 0 {
		return nil, fmt.Errorf("%w: no nonce to check the certification against", ErrNonce)
	}
	ak, err := parsePublic("AK public area", akPublic)
	if err != nil {
		return nil, err
	}
	if err := checkAKPublic(ak); err != nil {
		return nil, err
	}
	key, err := parsePublic("certified key public area", cp.Public)
	if err != nil {
		return nil, err
	}
	att, err := parseAttest("certification", cp.CreateAttestation, tpm2.TagAttestCertify)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(ak, cp.CreateAttestation, cp.CreateSignature); err != nil {
		return nil, fmt.Errorf("%w: certification not signed by the AK: %v", ErrCertification, err)
	}
	// Signed by a restricted key, so the TPM made it; checked nonetheless.
	if att.Magic != tpmGeneratedValue {
		return nil, fmt.Errorf("%w: certification not produced by a TPM (magic 0x%08x)", ErrCertification, att.Magic)
	}
	if !bytes.Equal(att.ExtraData, nonce) {
		return nil, fmt.Errorf("%w: certification was made for another nonce", ErrNonce)
	}
	ci := att.AttestedCertifyInfo
	if ci.Name.Digest == nil || ci.Name.Digest.Alg != key.NameAlg || !bytes.Equal(ci.Name.Digest.Value, key.nameDigest()) {
		return nil, fmt.Errorf("%w: certification names another key than the public area presented", ErrCertification)
	}
	if ci.QualifiedName.Digest == nil {
		return nil, fmt.Errorf("%w: certification has no qualified name", ErrCertification)
	}
	if key.parentIsHierarchy(ci.QualifiedName.Digest) {
		return nil, fmt.Errorf("%w: certified key is a primary or externally loaded key, not a key created under a storage key", ErrCertification)
	}
	if !key.has(deviceKeyAttributes) {
		return nil, fmt.Errorf("%w: certified key attributes 0x%08x lack %s", ErrCertification, uint32(key.Attributes), missingAttrs(key.Attributes, deviceKeyAttributes))
	}
	if key.Attributes&tpm2.FlagRestricted != 0 {
		return nil, fmt.Errorf("%w: certified key is restricted (an attestation or storage key, not a device key)", ErrCertification)
	}
	if key.Attributes&tpm2.FlagDecrypt != 0 {
		return nil, fmt.Errorf("%w: certified key can also decrypt", ErrCertification)
	}
	certified, err := x509.MarshalPKIXPublicKey(key.key)
	if err != nil {
		return nil, fmt.Errorf("%w: certified key: %v", ErrMalformed, err)
	}
	if csrPub == nil {
		return nil, fmt.Errorf("%w: no CSR public key to compare with the certified key", ErrKeyMismatch)
	}
	want, err := x509.MarshalPKIXPublicKey(csrPub)
	if err != nil {
		return nil, fmt.Errorf("%w: CSR public key: %v", ErrKeyMismatch, err)
	}
	if !bytes.Equal(certified, want) {
		return nil, fmt.Errorf("%w: CSR public key is not the certified key", ErrKeyMismatch)
	}
	return key.key, nil
}
