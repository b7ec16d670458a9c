package attestor

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// This file holds the parsers of TPM wire structures (hostile input) and the
// small predicates over what they return. Policy lives in ak.go, certify.go
// and quote.go.

const (
	// minRSABits is the smallest RSA key accepted for an EK, an AK or a
	// device key.
	minRSABits = 2048
	// maxRSABits bounds RSA keys so hostile input cannot make verification
	// expensive.
	maxRSABits = 8192
	// tpmGeneratedValue is TPM_GENERATED_VALUE, the magic that starts every
	// TPMS_ATTEST the TPM produces. A restricted signing key refuses to sign
	// data starting with it unless the TPM made that data.
	tpmGeneratedValue = 0xff544347
)

// publicArea is a decoded TPMT_PUBLIC together with the exact bytes it came
// from.
type publicArea struct {
	tpm2.Public
	raw []byte
	key crypto.PublicKey // the asymmetric public key (RSA or ECDSA)
}

// parsePublic decodes a TPMT_PUBLIC holding an RSA or ECC key. The encoding
// must be canonical (re-encoding gives the same bytes, nothing trails it), so
// that the Name computed over raw and the key extracted from the parsed
// structure describe the same object.
func parsePublic(what string, raw []byte) (_ *publicArea, err error) {
	defer recoverMalformed(&err, what)
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: %s: empty", ErrMalformed, what)
	}
	pub, err := tpm2.DecodePublic(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	enc, err := pub.Encode()
	if err != nil || !bytes.Equal(enc, raw) {
		return nil, fmt.Errorf("%w: %s: not a canonical TPMT_PUBLIC (trailing or re-encoded bytes)", ErrMalformed, what)
	}
	if _, err := nameHash(pub.NameAlg); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	var key crypto.PublicKey
	switch pub.Type {
	case tpm2.AlgRSA:
		if pub.RSAParameters == nil {
			return nil, fmt.Errorf("%w: %s: RSA parameters missing", ErrMalformed, what)
		}
		n := len(pub.RSAParameters.ModulusRaw) * 8
		if int(pub.RSAParameters.KeyBits) != n || n < minRSABits || n > maxRSABits {
			return nil, fmt.Errorf("%w: %s: RSA key of %d bits (modulus %d bits), want %d to %d", ErrMalformed, what, pub.RSAParameters.KeyBits, n, minRSABits, maxRSABits)
		}
	case tpm2.AlgECC:
		if pub.ECCParameters == nil {
			return nil, fmt.Errorf("%w: %s: ECC parameters missing", ErrMalformed, what)
		}
		if curve(pub.ECCParameters.CurveID) == nil {
			return nil, fmt.Errorf("%w: %s: ECC curve 0x%x not supported (want NIST P-256, P-384 or P-521)", ErrMalformed, what, uint16(pub.ECCParameters.CurveID))
		}
	default:
		return nil, fmt.Errorf("%w: %s: key type %v not supported (want RSA or ECC)", ErrMalformed, what, pub.Type)
	}
	key, err = pub.Key()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: public key: %v", ErrMalformed, what, err)
	}
	if k, ok := key.(*ecdsa.PublicKey); ok {
		// go-tpm does not check that the point is on the curve.
		if !k.Curve.IsOnCurve(k.X, k.Y) {
			return nil, fmt.Errorf("%w: %s: ECC point not on the curve", ErrMalformed, what)
		}
	}
	return &publicArea{Public: pub, raw: raw, key: key}, nil
}

// curve maps the NIST curves a TPM offers to Go's; nil for any other.
func curve(id tpm2.EllipticCurve) elliptic.Curve {
	switch id {
	case tpm2.CurveNISTP256:
		return elliptic.P256()
	case tpm2.CurveNISTP384:
		return elliptic.P384()
	case tpm2.CurveNISTP521:
		return elliptic.P521()
	}
	return nil
}

// nameHash returns the hash of a TPM name algorithm. SHA-1 names are refused:
// the credential-activation binding and the certify-info Name rest on them.
func nameHash(alg tpm2.Algorithm) (crypto.Hash, error) {
	switch alg {
	case tpm2.AlgSHA256:
		return crypto.SHA256, nil
	case tpm2.AlgSHA384:
		return crypto.SHA384, nil
	case tpm2.AlgSHA512:
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("name algorithm %v not accepted (want SHA-256, SHA-384 or SHA-512)", alg)
}

// nameDigest returns H_nameAlg(raw), the digest part of the object's Name.
func (p *publicArea) nameDigest() []byte {
	h, _ := nameHash(p.NameAlg) // checked by parsePublic
	d := h.New()
	d.Write(p.raw)
	return d.Sum(nil)
}

// fullName returns the object's Name as the TPM encodes it:
// nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC).
func (p *publicArea) fullName() []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(p.NameAlg)), p.nameDigest()...)
}

// has reports whether every attribute in want is set.
func (p *publicArea) has(want tpm2.KeyProp) bool { return p.Attributes&want == want }

// signHash returns the hash of the key's signing scheme, which must be
// RSASSA for RSA keys and ECDSA for ECC keys (what go-attestation makes and
// verifies).
func (p *publicArea) signHash() (crypto.Hash, error) {
	var s *tpm2.SigScheme
	var want tpm2.Algorithm
	switch p.Type {
	case tpm2.AlgRSA:
		s, want = p.RSAParameters.Sign, tpm2.AlgRSASSA
	case tpm2.AlgECC:
		s, want = p.ECCParameters.Sign, tpm2.AlgECDSA
	}
	if s == nil || s.Alg != want {
		return 0, fmt.Errorf("signing scheme not %v", want)
	}
	switch s.Hash {
	case tpm2.AlgSHA256:
		return crypto.SHA256, nil
	case tpm2.AlgSHA384:
		return crypto.SHA384, nil
	case tpm2.AlgSHA512:
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("signing hash %v not accepted (want SHA-256 or stronger)", s.Hash)
}

// parseAttest decodes a TPMS_ATTEST of the wanted type (creation, certify or
// quote) and checks that it carries TPM_GENERATED_VALUE. Trailing bytes are
// tolerated, as the signature covers them.
func parseAttest(what string, raw []byte, want tpmutil.Tag) (_ *tpm2.AttestationData, err error) {
	defer recoverMalformed(&err, what)
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: %s: empty", ErrMalformed, what)
	}
	att, err := tpm2.DecodeAttestationData(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if att.Type != want {
		return nil, fmt.Errorf("%w: %s: attestation type 0x%x, want 0x%x", ErrMalformed, what, uint16(att.Type), uint16(want))
	}
	ok := false
	switch want {
	case tpm2.TagAttestCreation:
		ok = att.AttestedCreationInfo != nil
	case tpm2.TagAttestCertify:
		ok = att.AttestedCertifyInfo != nil
	case tpm2.TagAttestQuote:
		ok = att.AttestedQuoteInfo != nil
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s: attested information missing", ErrMalformed, what)
	}
	return att, nil
}

// verifySignature checks sig, a TPMT_SIGNATURE, over msg by the key of pub
// with its signing scheme.
func verifySignature(pub *publicArea, msg, sig []byte) (err error) {
	defer recoverMalformed(&err, "signature")
	h, err := pub.signHash()
	if err != nil {
		return err
	}
	s, err := tpm2.DecodeSignature(bytes.NewBuffer(sig))
	if err != nil {
		return fmt.Errorf("signature: %v", err)
	}
	d := h.New()
	d.Write(msg)
	digest := d.Sum(nil)
	switch k := pub.key.(type) {
	case *rsa.PublicKey:
		if s.Alg != tpm2.AlgRSASSA || s.RSA == nil {
			return fmt.Errorf("signature is %v, want RSASSA", s.Alg)
		}
		if s.RSA.HashAlg != pubHashAlg(pub) {
			return fmt.Errorf("signature hash %v differs from the key's scheme", s.RSA.HashAlg)
		}
		if err := rsa.VerifyPKCS1v15(k, h, digest, s.RSA.Signature); err != nil {
			return fmt.Errorf("signature does not verify: %v", err)
		}
	case *ecdsa.PublicKey:
		if s.Alg != tpm2.AlgECDSA || s.ECC == nil || s.ECC.R == nil || s.ECC.S == nil {
			return fmt.Errorf("signature is %v, want ECDSA", s.Alg)
		}
		if s.ECC.HashAlg != pubHashAlg(pub) {
			return fmt.Errorf("signature hash %v differs from the key's scheme", s.ECC.HashAlg)
		}
		if !ecdsa.Verify(k, digest, s.ECC.R, s.ECC.S) {
			return fmt.Errorf("signature does not verify")
		}
	default:
		return fmt.Errorf("key type %T cannot sign", k)
	}
	return nil
}

func pubHashAlg(p *publicArea) tpm2.Algorithm {
	if p.Type == tpm2.AlgRSA {
		return p.RSAParameters.Sign.Hash
	}
	return p.ECCParameters.Sign.Hash
}

// hierarchies are the handles that parent primary objects and objects loaded
// with TPM2_LoadExternal.
var hierarchies = [...]tpmutil.Handle{tpm2.HandleOwner, tpm2.HandleNull, tpm2.HandleEndorsement, tpm2.HandlePlatform}

// parentIsHierarchy reports whether qualifiedName (nameAlg || digest) is that
// of an object whose parent is a hierarchy: a primary key, or a key loaded
// from outside with TPM2_LoadExternal (whose attributes the loader chooses
// freely). Ordinary keys created under a storage key never match.
func (p *publicArea) parentIsHierarchy(qualifiedName *tpm2.HashValue) bool {
	h, _ := nameHash(p.NameAlg)
	if qualifiedName == nil || qualifiedName.Alg != p.NameAlg {
		return false
	}
	name := p.fullName()
	for _, hier := range hierarchies {
		d := h.New()
		binary.Write(d, binary.BigEndian, uint32(hier))
		d.Write(name)
		if bytes.Equal(d.Sum(nil), qualifiedName.Value) {
			return true
		}
	}
	return false
}

// recoverMalformed turns a panic in a third-party decoder of hostile input
// into an error wrapping ErrMalformed. Defense in depth: the checks before
// each decoder are meant to make it unreachable.
func recoverMalformed(err *error, what string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %s: decoder failed: %v", ErrMalformed, what, r)
	}
}
