// Package hsm signs with keys that live in a PKCS#11 token and never leave
// it.
//
// A token is named by an RFC 7512 PKCS#11 URI (see [ParseURI]) and opened
// with [Open], which checks the PIN at once. Keys are generated inside the
// token as sensitive, non-extractable, private, sign-only objects
// ([Token.GenerateSigner]) and found again by label or CKA_ID
// ([Token.FindSigner], [Token.FindSignerByID]). A [Signer] is a
// crypto.Signer that survives the token going away: on a session or device
// error it reopens the token, finds its key again and retries once, with
// exponential backoff between reconnect attempts; while the token is gone it
// fails fast with an error wrapping [ErrUnavailable]. A wrong PIN is never
// retried, so a misconfigured process cannot lock the token.
//
// # PIN verification
//
// PKCS#11 keeps the login state per application and token, so a C_Login
// made while another context of the same process is logged in returns
// CKR_USER_ALREADY_LOGGED_IN without looking at the PIN, and crypto11
// accepts that as success. Open therefore checks the PIN itself: in a fresh
// session it generates a throw-away session (CKA_TOKEN=false) ECDSA key
// marked CKA_ALWAYS_AUTHENTICATE, starts a signature with it and answers the
// context-specific login (C_Login with CKU_CONTEXT_SPECIFIC), which the token
// must check against the user PIN whatever the login state. The session key
// disappears with the session; nothing on the token changes. A token that
// does not support context-specific login is reported in the log, and then
// only the plain C_Login done by crypto11 has checked the PIN.
//
// # Reconnecting
//
// Errors that mean the session, the login, the object handles or the device
// are gone (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_ERROR,
// CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_CRYPTOKI_NOT_INITIALIZED,
// CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN,
// CKR_GENERAL_ERROR, ...) invalidate the Token's crypto11 context. One
// goroutine then closes it and configures a new one; the others wait for
// that attempt (Sign for at most a bounded time, the other methods for as
// long as their context allows). A failed attempt sets a backoff (doubling
// from 100ms up to Options.MaxBackoff); until it expires every call returns
// an error wrapping ErrUnavailable without touching the token. If the module
// was finalised under the Token (CKR_CRYPTOKI_NOT_INITIALIZED), it is
// initialised again. crypto11 shares one module instance per module path
// in a process and finalises it only when the last context closes; SoftHSM
// reads its token directory only at C_Initialize, so after SoftHSM's token
// directory disappears a token is found again only once every Token of the
// process using that module has let go of its context (each does so on its
// first failing call).
package hsm
