package attestor

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"strings"
)

// deviceIDEncoding is lowercase RFC 4648 base32 without padding.
var deviceIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// deviceIDBytes is how many leading bytes of the EK's SHA-256 form a device ID.
const deviceIDBytes = 20

// DeviceID returns the device ID derived from an EK public key: lowercase
// base32 (RFC 4648, no padding) of the first 20 bytes of SHA-256 over the
// key's PKIX DER encoding, 32 characters. It is stable for as long as the
// TPM keeps its EK.
func DeviceID(ekPub crypto.PublicKey) (string, error) {
	sum, err := ekDigest(ekPub)
	if err != nil {
		return "", err
	}
	return deviceIDEncoding.EncodeToString(sum[:deviceIDBytes]), nil
}

// EKFingerprint returns the lowercase hex SHA-256 of the EK public key's
// PKIX DER encoding: what admins pre-register and what allowlists hold.
func EKFingerprint(ekPub crypto.PublicKey) (string, error) {
	sum, err := ekDigest(ekPub)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(sum[:]), nil
}

// DeviceIDFromFingerprint returns the device ID of the EK whose fingerprint
// (see EKFingerprint) is fp, so that DeviceIDFromFingerprint(EKFingerprint(k))
// equals DeviceID(k). Upper-case hex is accepted; anything that is not 64 hex
// digits is an error wrapping ErrMalformed.
func DeviceIDFromFingerprint(fp string) (string, error) {
	sum, err := hex.DecodeString(strings.ToLower(fp))
	if err != nil || len(sum) != sha256.Size {
		return "", fmt.Errorf("%w: EK fingerprint %q is not 64 hex digits", ErrMalformed, fp)
	}
	return deviceIDEncoding.EncodeToString(sum[:deviceIDBytes]), nil
}

// NormalizeFingerprint returns fp in the canonical form EKFingerprint
// produces (lowercase hex), or an error wrapping ErrMalformed if fp is not 64
// hex digits.
func NormalizeFingerprint(fp string) (string, error) {
	sum, err := hex.DecodeString(strings.ToLower(fp))
	if err != nil || len(sum) != sha256.Size {
		return "", fmt.Errorf("%w: EK fingerprint %q is not 64 hex digits", ErrMalformed, fp)
	}
	return hex.EncodeToString(sum), nil
}

func ekDigest(ekPub crypto.PublicKey) ([sha256.Size]byte, error) {
	if ekPub == nil {
		return [sha256.Size]byte{}, fmt.Errorf("%w: EK public key missing", ErrMalformed)
	}
	der, err := x509.MarshalPKIXPublicKey(ekPub)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("%w: EK public key: %v", ErrMalformed, err)
	}
	return sha256.Sum256(der), nil
}
