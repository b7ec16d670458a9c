package ca

import "errors"

// Sentinel errors. Every error returned by this package that is caused by
// the caller's input wraps exactly one of these, so a service can map them
// to status codes in one place.
var (
	// ErrIdentity: a trust domain, device ID, EK fingerprint or server name
	// is malformed.
	ErrIdentity = errors.New("ca: invalid identity")
	// ErrLifetime: the requested lifetime is below the minimum or above the
	// maximum, or the issuing CA expires too soon to issue it.
	ErrLifetime = errors.New("ca: lifetime not allowed")
	// ErrWeakKey: the subject key is of a supported type but too weak (RSA
	// under 2048 bits, ECDSA curves below P-256).
	ErrWeakKey = errors.New("ca: key too weak")
	// ErrUnsupportedKey: the subject key is of a type the CA does not certify.
	ErrUnsupportedKey = errors.New("ca: unsupported key type")
	// ErrBadCSR: a certificate request is malformed, its signature does not
	// verify, or its key differs from the expected one.
	ErrBadCSR = errors.New("ca: bad certificate request")
	// ErrJournal: the issuance journal did not commit the record; no
	// certificate was returned.
	ErrJournal = errors.New("ca: issuance journal failed")
	// ErrNoCA: there is no CA certificate in the data directory yet.
	ErrNoCA = errors.New("ca: no CA certificate")
	// ErrCAExists: a CA certificate is already installed.
	ErrCAExists = errors.New("ca: CA certificate already exists")
	// ErrCertificate: a CA certificate or chain is unusable: it does not
	// match the HSM key, is not a CA certificate, or does not chain to a root.
	ErrCertificate = errors.New("ca: unusable CA certificate")
)
