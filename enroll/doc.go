// Package enroll is Rootgate's device-facing enrollment service: the gRPC
// EnrollmentService (api/rootgate/v1) that admits a device on the strength
// of its TPM and hands it its first certificate.
//
// The protocol has two calls. BeginEnrollment checks the EK's provenance
// (manufacturer chain or allowlist), admits the device by the configured
// Mode, checks the AK's parameters and answers with a credential-activation
// challenge sealed to the EK and a fresh nonce, held in memory for a short
// TTL and usable once. FinishEnrollment checks the activation answer, the
// AK's certification of the device key over the nonce, the CSR and a quote
// over the nonce, has the CA issue the certificate (journaled first), then
// activates the device in the store in one transaction and only then returns
// the chain.
//
// Every refusal is a gRPC status whose code is chosen in one place
// (statusFor) from the domain error, whose message names what failed and
// never a secret, and which is written to the store's audit trail as an
// "enrollment.refused" event; a refusal changes nothing else.
//
// Status codes:
//
//	InvalidArgument    malformed or oversized request fields, bad CSR,
//	                   malformed TPM structures (attestor.ErrMalformed)
//	PermissionDenied   untrusted EK, unsound AK, failed activation, bad
//	                   certification, wrong nonce, CSR key not the certified
//	                   key, bad quote, admission denied (unknown device,
//	                   bad token, rejected/revoked/quarantined device, or a
//	                   device whose state changed between Begin and Finish)
//	FailedPrecondition enrollment_id unknown, already used or expired (the
//	                   message tells expired apart while the entry is still
//	                   held): start again with BeginEnrollment
//	ResourceExhausted  too many challenges outstanding (Config.MaxPending)
//	Aborted            a concurrent change to the same device; retry
//	Unavailable        the CA's HSM is unavailable; retry later
//	Canceled, DeadlineExceeded  the caller's context ended
//	Internal           anything else (details only in the server log)
package enroll
