package enroll

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/inventory"
)

// Errors the service itself raises; statusFor maps them.
var (
	// errBadRequest: a request field is missing, malformed or too large.
	errBadRequest = errors.New("invalid request")
	// errDenied: the device is not admitted in this mode or state.
	errDenied = errors.New("enrollment denied")
)

// badRequest returns an error wrapping errBadRequest.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadRequest}, args...)...)
}

// denied returns an error wrapping errDenied.
func denied(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errDenied}, args...)...)
}

// statusFor is the one place where domain errors become gRPC codes. It
// returns the code and the message the client sees: the error's own text
// for refusals (domain errors name what failed and never carry secrets), a
// fixed text for server-side failures, whose details go to the log only.
// The order matters where an error wraps more than one sentinel: malformed
// input wins over the verdict on it.
func statusFor(err error) (codes.Code, string) {
	switch {
	case err == nil:
		return codes.OK, ""
	case errors.Is(err, context.Canceled):
		return codes.Canceled, "request canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, "request deadline exceeded"

	case errors.Is(err, errBadRequest),
		errors.Is(err, attestor.ErrMalformed),
		errors.Is(err, ca.ErrBadCSR),
		errors.Is(err, ca.ErrWeakKey),
		errors.Is(err, ca.ErrUnsupportedKey),
		errors.Is(err, inventory.ErrInvalidArgument):
		return codes.InvalidArgument, err.Error()

	case errors.Is(err, errDenied),
		errors.Is(err, attestor.ErrEKUntrusted),
		errors.Is(err, attestor.ErrAKInvalid),
		errors.Is(err, attestor.ErrActivation),
		errors.Is(err, attestor.ErrCertification),
		errors.Is(err, attestor.ErrNonce),
		errors.Is(err, attestor.ErrKeyMismatch),
		errors.Is(err, attestor.ErrQuote),
		errors.Is(err, inventory.ErrTokenInvalid),
		errors.Is(err, inventory.ErrInvalidState):
		return codes.PermissionDenied, err.Error()

	case errors.Is(err, errChallengeUnknown), errors.Is(err, errChallengeExpired):
		return codes.FailedPrecondition, err.Error()
	case errors.Is(err, errPendingFull):
		return codes.ResourceExhausted, err.Error()
	case errors.Is(err, inventory.ErrConflict):
		return codes.Aborted, "device changed concurrently; retry"
	case errors.Is(err, hsm.ErrUnavailable):
		return codes.Unavailable, "CA signing key unavailable; retry later"
	}
	return codes.Internal, "internal error"
}
