// Package attestor verifies TPM 2.0 evidence: the EK certificate chain or an
// EK allowlist, the attestation key's parameters, the credential-activation
// challenge, the certification of a device key by the AK, and PCR quotes.
//
// Everything here is a pure function of its arguments: no I/O, no clock and
// no randomness that is not passed in. Every error wraps exactly one of the
// sentinel errors below and names what failed, so that callers map failures
// to protocol status codes in one place with errors.Is.
package attestor

import "errors"

// Sentinel errors. Every error returned by this package wraps one of them.
var (
	// ErrMalformed: the evidence could not be parsed (truncated or corrupt
	// TPM structures, bad DER, missing fields, unsupported algorithms).
	ErrMalformed = errors.New("attestor: malformed evidence")
	// ErrEKUntrusted: the EK certificate does not chain to a configured root,
	// is expired, does not match the EK, or the EK is neither certified nor
	// allowlisted.
	ErrEKUntrusted = errors.New("attestor: EK not trusted")
	// ErrAKInvalid: the attestation key's parameters are not those of a
	// restricted signing key created in the TPM.
	ErrAKInvalid = errors.New("attestor: AK invalid")
	// ErrActivation: the credential-activation answer is wrong, or the
	// challenge could not be made for this EK and AK.
	ErrActivation = errors.New("attestor: credential activation failed")
	// ErrCertification: the device key's certification is not signed by the
	// AK or the key's attributes are not those of a TPM-resident,
	// non-exportable, unrestricted signing key.
	ErrCertification = errors.New("attestor: key certification invalid")
	// ErrNonce: signed evidence carries another nonce than the one expected.
	ErrNonce = errors.New("attestor: nonce mismatch")
	// ErrKeyMismatch: the key in a CSR is not the certified key.
	ErrKeyMismatch = errors.New("attestor: key mismatch")
	// ErrQuote: a quote is not signed by the AK or does not match the PCRs.
	ErrQuote = errors.New("attestor: quote invalid")
)
