package hsm

import (
	"errors"
	"strings"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Every error returned by this package that is caused by
// one of these conditions wraps the matching sentinel, so callers can test
// with errors.Is. Error messages name the module path, token label or key
// label concerned, never the PIN.
var (
	// ErrModule means the PKCS#11 module could not be loaded or initialised.
	ErrModule = errors.New("hsm: PKCS#11 module unusable")
	// ErrTokenNotFound means no token matches the URI.
	ErrTokenNotFound = errors.New("hsm: token not found")
	// ErrPIN means the PIN is missing, wrong, locked or otherwise refused.
	ErrPIN = errors.New("hsm: PIN refused")
	// ErrKeyNotFound means no key pair matches the label or ID.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyExists means a key with the requested label already exists.
	ErrKeyExists = errors.New("hsm: key already exists")
	// ErrUnavailable means the token does not answer at the moment; the
	// operation may succeed later without any action by the caller.
	ErrUnavailable = errors.New("hsm: token unavailable")
	// ErrClosed means the Token was closed.
	ErrClosed = errors.New("hsm: token closed")
	// ErrPINSource means the PIN could not be read from where the URI or
	// the environment says it is (missing file or variable, a PIN file
	// readable by others). It also matches ErrPIN.
	ErrPINSource error = &childError{msg: "hsm: cannot read the PIN", parent: ErrPIN}
)

// childError is a sentinel that also matches a broader one.
type childError struct {
	msg    string
	parent error
}

func (e *childError) Error() string        { return e.msg }
func (e *childError) Is(target error) bool { return target == e.parent }

// p11Code returns the PKCS#11 return value in err's chain, if any.
func p11Code(err error) (uint, bool) {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return uint(pe), true
	}
	return 0, false
}

// isPINError reports whether err is the token refusing a PIN.
func isPINError(err error) bool {
	code, ok := p11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return true
	}
	return false
}

// isDeviceError reports whether err means the session, login, object
// handles or device are gone, so that reopening the token may help.
func isDeviceError(err error) bool {
	if err == nil {
		return false
	}
	if code, ok := p11Code(err); ok {
		switch code {
		case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
			pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_MEMORY,
			pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
			pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID,
			pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
			pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_GENERAL_ERROR,
			pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_SESSION_COUNT:
			return true
		}
		return false
	}
	// crypto11 reports a closed Context and a vanished token with
	// unexported errors; their text is all there is to go by.
	msg := err.Error()
	return strings.Contains(msg, "context is closed") ||
		strings.Contains(msg, "closed Context") ||
		isTokenNotFound(err)
}

// isTokenNotFound reports whether err is crypto11 failing to find the token.
func isTokenNotFound(err error) bool {
	return err != nil && strings.Contains(err.Error(), "could not find PKCS#11 token")
}
