package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/rootgate/rootgate/internal/tpmdev"
)

// ErrKeyNotVerified is wrapped by the errors VerifyKey returns when the TPM
// does not hold the certificate's key: key.blob does not load, its public
// key is not the certificate's, a signature by it does not verify with the
// certificate, or its attributes let the private key leave the TPM.
var ErrKeyNotVerified = errors.New("agent: device key not verified")

// KeyReport is what VerifyKey found out about the device key.
type KeyReport struct {
	// TPM is the TPM asked to load the key.
	TPM string `json:"tpm"`
	// KeyPath and CertPath are the key blob and the certificate checked.
	KeyPath  string `json:"key_path"`
	CertPath string `json:"cert_path"`
	// Algorithm is the key's algorithm and size, e.g. "ECC P-256".
	Algorithm string `json:"algorithm,omitempty"`
	// InTPM is true when the TPM loaded key.blob: the private key is
	// wrapped by this TPM's storage root key and usable only inside it.
	InTPM bool `json:"in_tpm"`
	// Attributes are the key's TPM object attributes (TPMA_OBJECT), e.g.
	// fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign. The
	// TPM checks the public area against the private part when it loads
	// the blob, so these are the attributes the TPM enforces.
	Attributes []string `json:"attributes,omitempty"`
	// MatchesCertificate is true when the loaded key's public key is the
	// certificate's.
	MatchesCertificate bool `json:"matches_certificate"`
	// SignatureVerified is true when a signature made by the TPM over a
	// fresh random challenge verified with the certificate's public key.
	SignatureVerified bool `json:"signature_verified"`
	// Verified is true when all of the above hold and the key is fixedTPM
	// and sensitiveDataOrigin (created in the TPM, never outside it).
	Verified bool `json:"verified"`
}

// HasAttribute reports whether the key has the named TPM attribute.
func (r *KeyReport) HasAttribute(name string) bool {
	for _, a := range r.Attributes {
		if a == name {
			return true
		}
	}
	return false
}

// Summary is a one-line description of a verified key, e.g. "in the TPM
// (fixedTPM, fixedParent, sensitiveDataOrigin), matches the certificate,
// signature verified".
func (r *KeyReport) Summary() string {
	var parts []string
	if r.InTPM {
		var attrs []string
		for _, a := range []string{"fixedTPM", "fixedParent", "sensitiveDataOrigin"} {
			if r.HasAttribute(a) {
				attrs = append(attrs, a)
			}
		}
		s := "in the TPM"
		if len(attrs) > 0 {
			s += " (" + strings.Join(attrs, ", ") + ")"
		}
		parts = append(parts, s)
	} else {
		parts = append(parts, "not loaded by the TPM")
	}
	if r.MatchesCertificate {
		parts = append(parts, "matches the certificate")
	}
	if r.SignatureVerified {
		parts = append(parts, "signature verified")
	}
	return strings.Join(parts, ", ")
}

// keyAttributes names the TPMA_OBJECT bits set in a, in bit order.
var keyAttributes = []struct {
	flag tpm2.KeyProp
	name string
}{
	{tpm2.FlagFixedTPM, "fixedTPM"},
	{tpm2.FlagStClear, "stClear"},
	{tpm2.FlagFixedParent, "fixedParent"},
	{tpm2.FlagSensitiveDataOrigin, "sensitiveDataOrigin"},
	{tpm2.FlagUserWithAuth, "userWithAuth"},
	{tpm2.FlagAdminWithPolicy, "adminWithPolicy"},
	{tpm2.FlagNoDA, "noDA"},
	{tpm2.FlagRestricted, "restricted"},
	{tpm2.FlagDecrypt, "decrypt"},
	{tpm2.FlagSign, "sign"},
}

func attributeNames(a tpm2.KeyProp) []string {
	var out []string
	for _, k := range keyAttributes {
		if a&k.flag != 0 {
			out = append(out, k.name)
		}
	}
	return out
}

// VerifyKey proves that the device certificate in the state directory is
// for a key held by the TPM at tpmDevice (see ParseTPMDevice; empty means
// DefaultTPM). It loads key.blob into the TPM, checks that the loaded key's
// public key is the certificate's, has the TPM sign a fresh random
// challenge and verifies that signature with the certificate's public key,
// and reads the key's TPM attributes, requiring fixedTPM and
// sensitiveDataOrigin. It changes nothing, on disk or in the TPM.
//
// When the enrollment can be read, the report is returned even with an
// error, showing what did check out. Errors about the key itself wrap
// ErrKeyNotVerified; a missing enrollment wraps ErrNotEnrolled.
func VerifyKey(ctx context.Context, tpmDevice, stateDir string) (*KeyReport, error) {
	dev, err := ParseTPMDevice(tpmDevice)
	if err != nil {
		return nil, err
	}
	enr, err := ReadEnrollment(stateDir)
	if err != nil {
		return nil, err
	}
	sd := &StateDir{path: stateDir}
	r := &KeyReport{
		TPM:       dev.String(),
		KeyPath:   sd.File(KeyFile),
		CertPath:  sd.File(CertFile),
		Algorithm: describeKey(enr.Certificate.PublicKey),
	}
	notVerified := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrKeyNotVerified, fmt.Sprintf(format, args...))
	}

	tpm, err := tpmdev.Open(ctx, dev.String())
	if err != nil {
		return r, fmt.Errorf("agent: open TPM %s: %w", dev, err)
	}
	defer tpm.Close()
	key, err := tpm.LoadKey(enr.KeyBlob)
	if err != nil {
		return r, notVerified("the TPM %s does not load %s (a key of another TPM, or the TPM was cleared): %v", dev, r.KeyPath, err)
	}
	defer key.Close()
	r.InTPM = true
	pub, err := tpm2.DecodePublic(key.CertificationParameters().Public)
	if err != nil {
		return r, notVerified("decode the key's TPM public area: %v", err)
	}
	r.Attributes = attributeNames(pub.Attributes)

	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := key.Public().(equaler); !ok || !k.Equal(enr.Certificate.PublicKey) {
		return r, notVerified("the TPM key in %s (%s) is not the key of the certificate %s (%s)",
			r.KeyPath, describeKey(key.Public()), r.CertPath, r.Algorithm)
	}
	r.MatchesCertificate = true

	challenge := make([]byte, 32)
	if _, err := rand.Read(challenge); err != nil {
		return r, fmt.Errorf("agent: challenge: %w", err)
	}
	digest := sha256.Sum256(challenge)
	signer, err := keySigner(key)
	if err != nil {
		return r, notVerified("%v", err)
	}
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return r, notVerified("the TPM did not sign with the key: %v", err)
	}
	if err := verifySignature(enr.Certificate.PublicKey, digest[:], sig); err != nil {
		return r, notVerified("the TPM's signature does not verify with the certificate's public key: %v", err)
	}
	r.SignatureVerified = true

	for _, a := range []string{"fixedTPM", "sensitiveDataOrigin"} {
		if !r.HasAttribute(a) {
			return r, notVerified("the key is not %s (attributes %s): its private key may exist outside the TPM", a, strings.Join(r.Attributes, ", "))
		}
	}
	r.Verified = true
	return r, nil
}

// verifySignature checks a SHA-256 signature as a TPM makes it: ECDSA
// (ASN.1) or RSASSA-PKCS1-v1_5.
func verifySignature(pub crypto.PublicKey, digest, sig []byte) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA signature invalid")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig)
	}
	return fmt.Errorf("unsupported public key %T", pub)
}
