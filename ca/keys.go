package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
)

// MinRSABits is the smallest RSA modulus CheckPublicKey accepts.
const MinRSABits = 2048

// CheckPublicKey reports whether the CA certifies pub: RSA keys of at least
// MinRSABits bits, ECDSA keys on P-256, P-384 or P-521, and Ed25519 keys.
// Weaker keys of a known type are refused with an error wrapping ErrWeakKey;
// every other type with one wrapping ErrUnsupportedKey.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return fmt.Errorf("check public key: empty RSA key: %w", ErrUnsupportedKey)
		}
		if n := k.N.BitLen(); n < MinRSABits {
			return fmt.Errorf("check public key: RSA-%d is below %d bits: %w", n, MinRSABits, ErrWeakKey)
		}
		if k.E < 3 || k.E%2 == 0 {
			return fmt.Errorf("check public key: RSA public exponent %d: %w", k.E, ErrWeakKey)
		}
		return nil
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return fmt.Errorf("check public key: empty ECDSA key: %w", ErrUnsupportedKey)
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		if k.Curve.Params().BitSize < 256 {
			return fmt.Errorf("check public key: ECDSA curve %s is below P-256: %w", k.Curve.Params().Name, ErrWeakKey)
		}
		return fmt.Errorf("check public key: ECDSA curve %s: %w", k.Curve.Params().Name, ErrUnsupportedKey)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("check public key: Ed25519 key of %d bytes: %w", len(k), ErrUnsupportedKey)
		}
		return nil
	case nil:
		return fmt.Errorf("check public key: no key: %w", ErrUnsupportedKey)
	default:
		return fmt.Errorf("check public key: %T: %w", pub, ErrUnsupportedKey)
	}
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
