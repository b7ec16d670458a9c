package attestor

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-attestation/attest"
	x509ext "github.com/google/go-attestation/x509"

	"github.com/rootgate/rootgate/internal/pemcert"
)

var (
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	// oidEKCertificate is tcg-kp-EKCertificate, the extended key usage of an
	// EK certificate.
	oidEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
)

// ParseEKPublic parses an EK public key in PKIX DER: RSA of 2048 to 8192
// bits, or ECDSA on P-256, P-384 or P-521. Errors wrap ErrMalformed.
func ParseEKPublic(der []byte) (crypto.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public key: %v", ErrMalformed, err)
	}
	if err := checkEKKey(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

func checkEKKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("%w: EK public key: RSA key of %d bits, want %d to %d", ErrMalformed, n, minRSABits, maxRSABits)
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return fmt.Errorf("%w: EK public key: curve not supported", ErrMalformed)
		}
	case nil:
		return fmt.Errorf("%w: EK public key missing", ErrMalformed)
	default:
		return fmt.Errorf("%w: EK public key: type %T not supported (want RSA or ECDSA)", ErrMalformed, pub)
	}
	return nil
}

// EKCertificate is a parsed EK certificate with the TPM identity from its
// TCG subject alternative name.
type EKCertificate struct {
	// Certificate is the parsed certificate. The critical TCG subject
	// alternative name, once parsed, is removed from its
	// UnhandledCriticalExtensions so that x509 verification accepts it.
	Certificate *x509.Certificate
	// Manufacturer is the TPM manufacturer (tcg-at-tpmManufacturer), e.g.
	// "id:49465800"; empty if the certificate has no TCG SAN.
	Manufacturer string
	// Model is the TPM model (tcg-at-tpmModel).
	Model string
	// FirmwareVersion is the TPM firmware version (tcg-at-tpmVersion), e.g.
	// "id:00070002".
	FirmwareVersion string
}

// ParseEKCertificate parses an EK certificate as read from the TPM's NV
// index: DER, optionally behind the TCG PC Client NV header (0x10 0x01 0x00
// and a length) and followed by padding. A subject alternative name, if
// present, must parse as a TCG directory name. Errors wrap ErrMalformed.
func ParseEKCertificate(der []byte) (_ *EKCertificate, err error) {
	defer recoverMalformed(&err, "EK certificate")
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: EK certificate empty", ErrMalformed)
	}
	cert, err := attest.ParseEKCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: EK certificate: %v", ErrMalformed, err)
	}
	ek := &EKCertificate{Certificate: cert}
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		san, err := x509ext.ParseSubjectAltName(ext)
		if err != nil {
			return nil, fmt.Errorf("%w: EK certificate: TCG subject alternative name: %v", ErrMalformed, err)
		}
		for _, dn := range san.DirectoryNames {
			for _, atv := range dn.Names {
				v, _ := atv.Value.(string)
				switch {
				case atv.Type.Equal(oidTPMManufacturer):
					ek.Manufacturer = v
				case atv.Type.Equal(oidTPMModel):
					ek.Model = v
				case atv.Type.Equal(oidTPMVersion):
					ek.FirmwareVersion = v
				}
			}
		}
		// Understood: no longer an unhandled critical extension.
		cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions,
			func(id asn1.ObjectIdentifier) bool { return id.Equal(oidSubjectAltName) })
	}
	return ek, nil
}

// ParseEKRoots parses the contents of the files in an EK roots directory:
// each PEM (any number of CERTIFICATE blocks) or a single DER certificate.
// Self-signed certificates become roots, the others intermediates, which
// never anchor trust by themselves. Errors wrap ErrMalformed.
func ParseEKRoots(files [][]byte) (roots, intermediates *x509.CertPool, err error) {
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	for i, b := range files {
		certs, err := pemcert.Parse(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: EK roots file %d: %v", ErrMalformed, i, err)
		}
		if len(certs) == 0 {
			return nil, nil, fmt.Errorf("%w: EK roots file %d: no certificate", ErrMalformed, i)
		}
		for _, c := range certs {
			if !c.IsCA {
				return nil, nil, fmt.Errorf("%w: EK roots file %d: %q is not a CA certificate", ErrMalformed, i, c.Subject)
			}
			if bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
				roots.AddCert(c)
			} else {
				intermediates.AddCert(c)
			}
		}
	}
	return roots, intermediates, nil
}

// EKVerifier decides whether an EK belongs to a genuine TPM. The zero value
// trusts nothing.
type EKVerifier struct {
	// Roots are the TPM manufacturers' root certificates.
	Roots *x509.CertPool
	// Intermediates are manufacturer CAs below Roots, used to build chains
	// in addition to those the device presents.
	Intermediates *x509.CertPool
	// Allowlist holds EK fingerprints (see EKFingerprint, lowercase hex)
	// trusted without a certificate.
	Allowlist map[string]bool
}

// EKResult describes a trusted EK.
type EKResult struct {
	// Public is the EK public key.
	Public crypto.PublicKey
	// DeviceID and Fingerprint are derived from Public (see DeviceID and
	// EKFingerprint).
	DeviceID, Fingerprint string
	// Certified reports that the EK certificate chains to a configured root;
	// Chain is then the verified chain, leaf first.
	Certified bool
	Chain     []*x509.Certificate
	// Allowlisted reports that the EK fingerprint is on the allowlist.
	Allowlisted bool
	// Certificate is the parsed EK certificate, nil when none was presented.
	Certificate *x509.Certificate
	// Manufacturer, Model and FirmwareVersion come from the certificate's
	// TCG subject alternative name; empty without a certificate.
	Manufacturer, Model, FirmwareVersion string
}

// Verify decides whether ekPub is the EK of a genuine TPM: its certificate
// (ekCertDER, optionally with the TCG NV header; chainDER are intermediates
// the device presents) chains at time now to v.Roots, or its fingerprint is
// in v.Allowlist. A certificate presented must be an EK certificate (not a
// CA; key usage and extended key usage, when present, those of an EK) for
// ekPub itself, or the EK is refused even if allowlisted. A certificate that
// does not chain is tolerated when the EK is allowlisted.
//
// Errors wrap ErrMalformed (unparseable input) or ErrEKUntrusted.
func (v *EKVerifier) Verify(ekPub crypto.PublicKey, ekCertDER []byte, chainDER [][]byte, now time.Time) (*EKResult, error) {
	if err := checkEKKey(ekPub); err != nil {
		return nil, err
	}
	fp, _ := EKFingerprint(ekPub)
	id, _ := DeviceID(ekPub)
	res := &EKResult{Public: ekPub, DeviceID: id, Fingerprint: fp, Allowlisted: v.Allowlist[fp]}

	var chainErr error
	if len(ekCertDER) > 0 {
		ek, err := ParseEKCertificate(ekCertDER)
		if err != nil {
			return nil, err
		}
		cert := ek.Certificate
		res.Certificate = cert
		res.Manufacturer, res.Model, res.FirmwareVersion = ek.Manufacturer, ek.Model, ek.FirmwareVersion
		if err := checkEKCertificate(cert, ekPub); err != nil {
			return nil, err
		}
		res.Chain, chainErr = v.chain(cert, chainDER, now)
		res.Certified = chainErr == nil
	}
	switch {
	case res.Certified || res.Allowlisted:
		return res, nil
	case chainErr != nil:
		return nil, chainErr
	default:
		return nil, fmt.Errorf("%w: EK %s has no certificate and is not allowlisted", ErrEKUntrusted, fp)
	}
}

// checkEKCertificate checks that cert is an EK certificate for ekPub.
func checkEKCertificate(cert *x509.Certificate, ekPub crypto.PublicKey) error {
	certPub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || cert.PublicKey == nil {
		return fmt.Errorf("%w: EK certificate: public key algorithm %v not supported", ErrEKUntrusted, cert.PublicKeyAlgorithm)
	}
	if !certPub.Equal(ekPub) {
		return fmt.Errorf("%w: EK certificate is for another key than the EK presented", ErrEKUntrusted)
	}
	if cert.IsCA {
		return fmt.Errorf("%w: EK certificate is a CA certificate", ErrEKUntrusted)
	}
	if cert.KeyUsage != 0 {
		want, name := x509.KeyUsageKeyEncipherment, "keyEncipherment"
		if _, isEC := ekPub.(*ecdsa.PublicKey); isEC {
			want, name = x509.KeyUsageKeyAgreement, "keyAgreement"
		}
		if cert.KeyUsage&want == 0 {
			return fmt.Errorf("%w: EK certificate key usage lacks %s", ErrEKUntrusted, name)
		}
	}
	if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
		ok := slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) ||
			slices.ContainsFunc(cert.UnknownExtKeyUsage, oidEKCertificate.Equal)
		if !ok {
			return fmt.Errorf("%w: EK certificate extended key usage lacks tcg-kp-EKCertificate", ErrEKUntrusted)
		}
	}
	if len(cert.UnhandledCriticalExtensions) > 0 {
		return fmt.Errorf("%w: EK certificate has unhandled critical extension %v", ErrEKUntrusted, cert.UnhandledCriticalExtensions[0])
	}
	return nil
}

// chain verifies cert against v.Roots at time now.
func (v *EKVerifier) chain(cert *x509.Certificate, chainDER [][]byte, now time.Time) ([]*x509.Certificate, error) {
	if v.Roots == nil {
		return nil, fmt.Errorf("%w: EK certificate: no EK roots configured", ErrEKUntrusted)
	}
	if now.IsZero() {
		return nil, fmt.Errorf("%w: EK certificate: no verification time given", ErrEKUntrusted)
	}
	inter := x509.NewCertPool()
	if v.Intermediates != nil {
		inter = v.Intermediates.Clone()
	}
	for i, der := range chainDER {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: EK chain certificate %d: %v", ErrMalformed, i, err)
		}
		inter.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         v.Roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: EK certificate (issuer %q): %v", ErrEKUntrusted, issuerName(cert.Issuer), err)
	}
	return chains[0], nil
}

func issuerName(n pkix.Name) string { return n.String() }
