package ca

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Object identifiers of the device certificate's subjectAltName.
var (
	// OIDSubjectAltName is id-ce-subjectAltName (RFC 5280).
	OIDSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	// OIDPermanentIdentifier is id-on-permanentIdentifier (RFC 4043), the
	// otherName type that carries the device's EK fingerprint.
	OIDPermanentIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 3}
	// OIDTCG is the Trusted Computing Group arc (2.23.133), the assigner of
	// the permanentIdentifier.
	OIDTCG = asn1.ObjectIdentifier{2, 23, 133}
)

const (
	maxTrustDomainLen = 255
	maxDeviceIDLen    = 128
	ekFingerprintLen  = 64 // lowercase hex SHA-256
)

// ValidateTrustDomain checks td against the SPIFFE trust domain syntax:
// 1 to 255 characters of lowercase letters, digits, '.', '-' and '_'.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("trust domain: empty: %w", ErrIdentity)
	}
	if len(td) > maxTrustDomainLen {
		return fmt.Errorf("trust domain %.32q...: longer than %d characters: %w", td, maxTrustDomainLen, ErrIdentity)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' {
			continue
		}
		return fmt.Errorf("trust domain %q: character %q not allowed (lowercase letters, digits, '.', '-', '_'): %w", td, c, ErrIdentity)
	}
	return nil
}

// ValidateDeviceID checks id as one SPIFFE path segment: 1 to 128
// characters of letters, digits, '.', '-' and '_', and neither "." nor "..".
// attestor.DeviceID values (lowercase base32) always pass.
func ValidateDeviceID(id string) error {
	if id == "" {
		return fmt.Errorf("device ID: empty: %w", ErrIdentity)
	}
	if len(id) > maxDeviceIDLen {
		return fmt.Errorf("device ID %.32q...: longer than %d characters: %w", id, maxDeviceIDLen, ErrIdentity)
	}
	if id == "." || id == ".." {
		return fmt.Errorf("device ID %q: not a path segment: %w", id, ErrIdentity)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' {
			continue
		}
		return fmt.Errorf("device ID %q: character %q not allowed (letters, digits, '.', '-', '_'): %w", id, c, ErrIdentity)
	}
	return nil
}

// normalizeEKFingerprint returns fp in lowercase after checking it is a
// hex SHA-256 (64 hex digits).
func normalizeEKFingerprint(fp string) (string, error) {
	if len(fp) != ekFingerprintLen {
		return "", fmt.Errorf("EK fingerprint %q: want %d hex digits (SHA-256), got %d characters: %w", fp, ekFingerprintLen, len(fp), ErrIdentity)
	}
	fp = strings.ToLower(fp)
	if _, err := hex.DecodeString(fp); err != nil {
		return "", fmt.Errorf("EK fingerprint %q: not hexadecimal: %w", fp, ErrIdentity)
	}
	return fp, nil
}

// DeviceSPIFFEID returns spiffe://<trustDomain>/device/<deviceID> after
// validating both parts.
func DeviceSPIFFEID(trustDomain, deviceID string) (*url.URL, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	if err := ValidateDeviceID(deviceID); err != nil {
		return nil, err
	}
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/device/" + deviceID}, nil
}

// DeviceIDFromCertificate returns the device ID of a device certificate
// issued for trustDomain: the last segment of its one SPIFFE URI SAN
// spiffe://<trustDomain>/device/<id>. It does not verify the certificate.
func DeviceIDFromCertificate(cert *x509.Certificate, trustDomain string) (string, error) {
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("device ID of certificate %s: want exactly one URI SAN, have %d: %w", serialHex(cert), len(cert.URIs), ErrIdentity)
	}
	u := cert.URIs[0]
	id, ok := strings.CutPrefix(u.Path, "/device/")
	if u.Scheme != "spiffe" || u.Host != trustDomain || !ok || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", fmt.Errorf("device ID of certificate %s: URI SAN %q is not spiffe://%s/device/<id>: %w", serialHex(cert), u, trustDomain, ErrIdentity)
	}
	if err := ValidateDeviceID(id); err != nil {
		return "", fmt.Errorf("device ID of certificate %s: %w", serialHex(cert), err)
	}
	return id, nil
}

// PermanentIdentifier is the RFC 4043 otherName a device certificate
// carries for its TPM's endorsement key.
type PermanentIdentifier struct {
	// Value is the identifierValue: the EK fingerprint (lowercase hex SHA-256
	// of the EK's PKIX DER).
	Value string
	// Assigner is the assigning authority; OIDTCG for Rootgate devices.
	Assigner asn1.ObjectIdentifier
}

// permanentIdentifierASN1 is RFC 4043's PermanentIdentifier.
type permanentIdentifierASN1 struct {
	IdentifierValue string                `asn1:"utf8,optional"`
	Assigner        asn1.ObjectIdentifier `asn1:"optional"`
}

// GeneralName tags (RFC 5280 §4.2.1.6; IMPLICIT tagging).
const (
	tagOtherName = 0
	tagURI       = 6
)

// DER encodings used by marshalDeviceSAN, fixed by the OIDs above.
var (
	derOIDPermanentIdentifier = []byte{0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03} // 1.3.6.1.5.5.7.8.3
	derOIDTCG                 = []byte{0x06, 0x03, 0x67, 0x81, 0x05}                               // 2.23.133
)

// DER tags (RFC 5280 GeneralName is IMPLICIT; OtherName.value is EXPLICIT).
const (
	derSequence     = 0x30
	derUTF8String   = 0x0c
	derURIName      = 0x80 | tagURI       // [6] IMPLICIT IA5String, primitive
	derOtherName    = 0xa0 | tagOtherName // [0] IMPLICIT OtherName, constructed
	derExplicitZero = 0xa0                // [0] EXPLICIT, constructed
)

// appendDER appends a DER TLV with a definite length.
func appendDER(b []byte, tag byte, content ...[]byte) []byte {
	n := 0
	for _, c := range content {
		n += len(c)
	}
	b = append(b, tag)
	switch {
	case n < 0x80:
		b = append(b, byte(n))
	case n < 0x100:
		b = append(b, 0x81, byte(n))
	case n < 0x10000:
		b = append(b, 0x82, byte(n>>8), byte(n))
	default:
		b = append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	for _, c := range content {
		b = append(b, c...)
	}
	return b
}

// marshalDeviceSAN encodes the device certificate's subjectAltName value:
// the SPIFFE URI and, if ekFingerprint is set, a permanentIdentifier
// otherName:
//
//	GeneralNames ::= SEQUENCE {
//	  [6] uniformResourceIdentifier IA5String,
//	  [0] otherName { type-id id-on-permanentIdentifier,
//	                  value [0] EXPLICIT PermanentIdentifier {
//	                    identifierValue UTF8String, assigner OBJECT IDENTIFIER (TCG) } } }
//
// crypto/x509 cannot emit otherName, so the whole extension is built here
// (by hand: it is on the issuance hot path) and passed as an
// ExtraExtensions entry. Inputs are validated ASCII, so IA5String and
// UTF8String contents are the bytes themselves.
func marshalDeviceSAN(spiffeID, ekFingerprint string) []byte {
	names := appendDER(make([]byte, 0, 160), derURIName, []byte(spiffeID))
	if ekFingerprint != "" {
		pi := appendDER(nil, derSequence, appendDER(nil, derUTF8String, []byte(ekFingerprint)), derOIDTCG)
		names = appendDER(names, derOtherName, derOIDPermanentIdentifier, appendDER(nil, derExplicitZero, pi))
	}
	return appendDER(nil, derSequence, names)
}

// PermanentIdentifiers returns the RFC 4043 permanentIdentifier otherNames
// in cert's subjectAltName extension (crypto/x509 skips otherName).
func PermanentIdentifiers(cert *x509.Certificate) ([]PermanentIdentifier, error) {
	var out []PermanentIdentifier
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(OIDSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) != 0 {
			return nil, errors.Join(fmt.Errorf("parse subjectAltName of certificate %s: %w", serialHex(cert), ErrIdentity), err)
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != tagOtherName || !n.IsCompound {
				continue
			}
			var typeID asn1.ObjectIdentifier
			rest, err := asn1.Unmarshal(n.Bytes, &typeID)
			if err != nil {
				return nil, errors.Join(fmt.Errorf("parse otherName of certificate %s: %w", serialHex(cert), ErrIdentity), err)
			}
			if !typeID.Equal(OIDPermanentIdentifier) {
				continue
			}
			var value asn1.RawValue
			if rest, err = asn1.Unmarshal(rest, &value); err != nil || len(rest) != 0 || value.Class != asn1.ClassContextSpecific || value.Tag != 0 || !value.IsCompound {
				return nil, errors.Join(fmt.Errorf("parse permanentIdentifier of certificate %s: malformed value: %w", serialHex(cert), ErrIdentity), err)
			}
			var pi permanentIdentifierASN1
			if rest, err := asn1.Unmarshal(value.Bytes, &pi); err != nil || len(rest) != 0 {
				return nil, errors.Join(fmt.Errorf("parse permanentIdentifier of certificate %s: %w", serialHex(cert), ErrIdentity), err)
			}
			out = append(out, PermanentIdentifier{Value: pi.IdentifierValue, Assigner: pi.Assigner})
		}
	}
	return out, nil
}

// serialHex is the journal form of a certificate's serial number.
func serialHex(cert *x509.Certificate) string {
	if cert == nil || cert.SerialNumber == nil {
		return "<no serial>"
	}
	return cert.SerialNumber.Text(16)
}
