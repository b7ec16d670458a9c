package hsm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

const (
	// defaultMaxBackoff is the longest wait between reconnect attempts when
	// Options.MaxBackoff is zero.
	defaultMaxBackoff = 30 * time.Second
	// minBackoff is the wait after the first failed reconnect attempt, and
	// the shortest time between two attempts.
	minBackoff = 100 * time.Millisecond
	// signWait bounds how long Sign, which has no context, waits for a
	// reconnect attempt that is already running.
	signWait = 10 * time.Second
	// poolWait bounds how long an operation waits for a free session.
	poolWait = 10 * time.Second
)

// Options tune a Token. The zero value is usable.
type Options struct {
	// Logger receives reconnect and PIN-check events, never the PIN.
	// Nil discards them.
	Logger *slog.Logger
	// MaxBackoff caps the wait between two reconnect attempts while the
	// token is unavailable. Zero means 30 seconds.
	MaxBackoff time.Duration
}

// Token is an open PKCS#11 token. It is safe for concurrent use. While the
// token is unreachable its methods return errors wrapping ErrUnavailable;
// it reconnects by itself.
type Token struct {
	uri        *URI // without the PIN
	cfg        crypto11.Config
	pin        string
	log        *slog.Logger
	maxBackoff time.Duration
	done       chan struct{} // closed by Close

	// raw is a handle on the module outside crypto11, used to check the
	// PIN, to probe the token and to re-initialise a module finalised under
	// us. It is only used while rawMu is held: RLock for calls, Lock for
	// anything that may finalise or initialise the module and for Destroy.
	rawMu   sync.RWMutex
	raw     *pkcs11.Ctx
	rawGone bool

	genMu sync.Mutex // serialises key generation within the Token

	mu          sync.Mutex
	ctx         *crypto11.Context // nil while unavailable
	slot        uint
	gen         uint64              // bumped at each successful (re)connect
	stale       []*crypto11.Context // invalidated, still to be closed
	lastErr     error               // why the token is unavailable
	fatal       error               // a PIN failure: never retried
	backoff     time.Duration
	next        time.Time     // no reconnect attempt before this
	lastAttempt time.Time     // start of the latest reconnect attempt
	attempt     chan struct{} // non-nil while a reconnect runs
	closed      bool
}

// conn is a snapshot of the Token's live connection.
type conn struct {
	ctx  *crypto11.Context
	slot uint
	gen  uint64
}

// Open loads the module named by u.ModulePath, finds the token u selects
// (by slot-id if given, else by label, else by serial; manufacturer, model
// and serial must match when given), logs in and checks the PIN for real
// (see the package documentation), so a wrong PIN fails here with ErrPIN
// and is not tried again. The PIN comes from u.ResolvePIN.
//
// Errors wrap ErrModule, ErrTokenNotFound, ErrPIN or ErrUnavailable and
// name the module path and token.
func Open(ctx context.Context, u *URI, opts Options) (*Token, error) {
	if u == nil {
		return nil, errors.New("hsm: open: nil URI")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("hsm: open token: %w", err)
	}
	if u.ModulePath == "" {
		return nil, fmt.Errorf("%w: URI %s has no module-path", ErrModule, u)
	}
	if u.Token == "" && u.SlotID == nil && u.Serial == "" {
		return nil, fmt.Errorf("%w: URI %s selects no token (token=, serial= or slot-id=)", ErrTokenNotFound, u)
	}
	if _, err := os.Stat(u.ModulePath); err != nil {
		return nil, fmt.Errorf("%w: module %s: %w", ErrModule, u.ModulePath, err)
	}
	pin, err := u.ResolvePIN()
	if err != nil {
		return nil, err
	}
	raw := pkcs11.New(u.ModulePath)
	if raw == nil {
		return nil, fmt.Errorf("%w: module %s cannot be loaded as a PKCS#11 library", ErrModule, u.ModulePath)
	}
	t := &Token{
		uri:        u.Redacted(),
		pin:        pin,
		log:        opts.Logger,
		maxBackoff: opts.MaxBackoff,
		done:       make(chan struct{}),
		raw:        raw,
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	logName := u.Token
	if logName == "" {
		logName = t.name()
	}
	t.log = t.log.With("module", u.ModulePath, "token", logName)
	if t.maxBackoff <= 0 {
		t.maxBackoff = defaultMaxBackoff
	}
	t.cfg = crypto11.Config{Path: u.ModulePath, PoolWaitTimeout: poolWait}
	switch {
	case u.SlotID != nil:
		n := *u.SlotID
		t.cfg.SlotNumber = &n
	case u.Token != "":
		t.cfg.TokenLabel = u.Token
	default:
		t.cfg.TokenSerial = u.Serial
	}

	type result struct {
		c    *crypto11.Context
		slot uint
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		c, slot, err := t.configure(true)
		ch <- result{c, slot, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.destroyRaw()
			return nil, r.err
		}
		t.ctx, t.slot, t.gen = r.c, r.slot, 1
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				t.closeContexts([]*crypto11.Context{r.c})
			}
			t.destroyRaw()
		}()
		return nil, fmt.Errorf("hsm: open token %s: %w", t.name(), ctx.Err())
	}
	t.log.Debug("hsm: token open")
	return t, nil
}

// name describes the token the URI selects, for messages.
func (t *Token) name() string {
	u := t.uri
	var parts []string
	if u.Token != "" {
		parts = append(parts, strconv.Quote(u.Token))
	}
	if u.Serial != "" {
		parts = append(parts, "serial "+strconv.Quote(u.Serial))
	}
	if u.SlotID != nil {
		parts = append(parts, "slot-id "+strconv.Itoa(*u.SlotID))
	}
	return strings.Join(parts, " ")
}

// String names the token and module; it never contains the PIN.
func (t *Token) String() string {
	return fmt.Sprintf("hsm token %s (module %s)", t.name(), t.uri.ModulePath)
}

// URI returns the URI the Token was opened with, without its PIN value.
func (t *Token) URI() *URI { return t.uri.Redacted() }

// configure creates a crypto11 context for the token, re-initialising the
// module if it was finalised under us, finds the slot and, on the first
// open, checks the PIN. Errors are classified with the sentinels.
func (t *Token) configure(first bool) (*crypto11.Context, uint, error) {
	c, err := t.configure11()
	if err != nil {
		if code, ok := p11Code(err); ok && code == pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED {
			// Another holder of the shared module instance keeps it open,
			// but it was finalised: initialise it again and retry.
			if ierr := t.reinitialize(); ierr == nil {
				c, err = t.configure11()
			}
		}
	}
	if err != nil {
		return nil, 0, t.classify(err)
	}
	slot, err := t.findSlot()
	if err != nil {
		t.closeContexts([]*crypto11.Context{c})
		return nil, 0, err
	}
	if first {
		if err := t.verifyPIN(slot); err != nil {
			t.closeContexts([]*crypto11.Context{c})
			return nil, 0, err
		}
	}
	return c, slot, nil
}

func (t *Token) configure11() (*crypto11.Context, error) {
	cfg := t.cfg // crypto11 keeps and fills in its Config: give it a copy
	if cfg.SlotNumber != nil {
		n := *cfg.SlotNumber
		cfg.SlotNumber = &n
	}
	cfg.Pin = t.pin
	return crypto11.Configure(&cfg)
}

// reinitialize calls C_Initialize on the shared module instance.
func (t *Token) reinitialize() error {
	t.rawMu.Lock()
	defer t.rawMu.Unlock()
	if t.rawGone {
		return ErrClosed
	}
	err := t.raw.Initialize()
	if code, ok := p11Code(err); ok && code == pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		err = nil
	}
	if err != nil {
		t.log.Warn("hsm: re-initialising module failed", "err", err)
		return err
	}
	t.log.Info("hsm: module was finalised; initialised it again")
	return nil
}

// classify wraps an error from crypto11.Configure with a sentinel.
func (t *Token) classify(err error) error {
	msg := err.Error()
	switch {
	case isPINError(err):
		return fmt.Errorf("%w: log in to token %s: %w", ErrPIN, t.name(), err)
	case isTokenNotFound(err):
		return fmt.Errorf("%w: no token %s in module %s", ErrTokenNotFound, t.name(), t.uri.ModulePath)
	case strings.Contains(msg, "failed to create module context"),
		strings.Contains(msg, "failed to open module"),
		strings.Contains(msg, "failed to initialize module"):
		return fmt.Errorf("%w: module %s: %w", ErrModule, t.uri.ModulePath, err)
	case isDeviceError(err):
		return fmt.Errorf("%w: token %s: %w", ErrUnavailable, t.name(), err)
	}
	return fmt.Errorf("hsm: open token %s: %w", t.name(), err)
}

// findSlot finds the slot holding the token the URI selects, checking
// every token attribute the URI gives.
func (t *Token) findSlot() (uint, error) {
	t.rawMu.RLock()
	defer t.rawMu.RUnlock()
	if t.rawGone {
		return 0, ErrClosed
	}
	slots, err := t.raw.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("%w: list slots of module %s: %w", ErrUnavailable, t.uri.ModulePath, err)
	}
	u := t.uri
	for _, s := range slots {
		if u.SlotID != nil && uint(*u.SlotID) != s {
			continue
		}
		ti, err := t.raw.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if (u.Token != "" && ti.Label != u.Token) ||
			(u.Serial != "" && ti.SerialNumber != u.Serial) ||
			(u.Manufacturer != "" && ti.ManufacturerID != u.Manufacturer) ||
			(u.Model != "" && ti.Model != u.Model) {
			continue
		}
		return s, nil
	}
	return 0, fmt.Errorf("%w: no token %s matching %s in module %s", ErrTokenNotFound, t.name(), u, u.ModulePath)
}

// verifyPIN checks the PIN even when the process is already logged in to
// the token: a context-specific login for a throw-away session key marked
// CKA_ALWAYS_AUTHENTICATE is always checked against the user PIN.
func (t *Token) verifyPIN(slot uint) error {
	t.rawMu.RLock()
	defer t.rawMu.RUnlock()
	if t.rawGone {
		return ErrClosed
	}
	p := t.raw
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return fmt.Errorf("%w: token %s: open session to check the PIN: %w", ErrUnavailable, t.name(), err)
	}
	defer p.CloseSession(s)
	unverified := func(step string, err error) error {
		t.log.Warn("hsm: cannot check the PIN with a context-specific login; relying on C_Login, which a token already logged in by this process does not check",
			"step", step, "err", err)
		return nil
	}
	pub := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256),
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_AUTHENTICATE, true),
	}
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}
	_, key, err := p.GenerateKeyPair(s, mech, pub, priv)
	if err != nil {
		return unverified("generate session key", err)
	}
	if err := p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, key); err != nil {
		return unverified("sign init", err)
	}
	err = p.Login(s, pkcs11.CKU_CONTEXT_SPECIFIC, t.pin)
	if err == nil {
		digest := sha256.Sum256([]byte("rootgate PIN check"))
		_, _ = p.Sign(s, digest[:]) // ends the operation
		return nil
	}
	if isPINError(err) {
		t.log.Error("hsm: PIN refused", "err", err)
		return fmt.Errorf("%w: token %s refused the PIN: %w", ErrPIN, t.name(), err)
	}
	return unverified("context-specific login", err)
}

// oidP256 is the DER OID of prime256v1, the CKA_EC_PARAMS of a P-256 key.
var oidP256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// acquire returns the live connection, reconnecting if the token was
// invalidated and no backoff is pending. It waits for a reconnect attempt
// that is running until ctx is done.
func (t *Token) acquire(ctx context.Context) (conn, error) {
	for {
		t.mu.Lock()
		switch {
		case t.closed:
			t.mu.Unlock()
			return conn{}, fmt.Errorf("%w: %s", ErrClosed, t.name())
		case t.fatal != nil:
			err := t.fatal
			t.mu.Unlock()
			return conn{}, err
		case t.ctx != nil:
			c := conn{t.ctx, t.slot, t.gen}
			t.mu.Unlock()
			return c, nil
		}
		ch := t.attempt
		if ch == nil {
			if wait := time.Until(t.next); wait > 0 {
				err := fmt.Errorf("%w: token %s: %w (next reconnect attempt in %s)",
					ErrUnavailable, t.name(), t.lastErr, wait.Round(time.Millisecond))
				t.mu.Unlock()
				return conn{}, err
			}
			ch = make(chan struct{})
			t.attempt = ch
			t.lastAttempt = time.Now()
			go t.reconnect(ch)
		}
		t.mu.Unlock()
		select {
		case <-ch:
		case <-t.done:
		case <-ctx.Done():
			return conn{}, fmt.Errorf("%w: token %s: waiting for reconnect: %w", ErrUnavailable, t.name(), ctx.Err())
		}
	}
}

// invalidate drops the connection of generation gen after cause showed it
// broken, so that the next acquire reconnects.
func (t *Token) invalidate(gen uint64, cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.ctx == nil || t.gen != gen {
		return // already handled
	}
	t.stale = append(t.stale, t.ctx)
	t.ctx = nil
	t.lastErr = cause
	// Rate limit: never two attempts closer than minBackoff.
	if n := t.lastAttempt.Add(minBackoff); n.After(t.next) {
		t.next = n
	}
	t.log.Warn("hsm: token connection broken; reconnecting", "err", cause)
}

// reconnect closes invalidated contexts and configures a new one. It runs
// in its own goroutine and closes ch when done.
func (t *Token) reconnect(ch chan struct{}) {
	t.mu.Lock()
	stale := t.stale
	t.stale = nil
	t.mu.Unlock()
	// Close first: when the last context on the module closes, crypto11
	// finalises it, and the new context initialises it afresh.
	t.closeContexts(stale)
	c, slot, err := t.configure(false)

	t.mu.Lock()
	t.attempt = nil
	if t.closed {
		t.mu.Unlock()
		if c != nil {
			t.closeContexts([]*crypto11.Context{c})
		}
		close(ch)
		return
	}
	switch {
	case err == nil:
		t.ctx, t.slot = c, slot
		t.gen++
		t.backoff, t.lastErr = 0, nil
		t.log.Info("hsm: reconnected to token")
	case errors.Is(err, ErrPIN):
		t.fatal = err
		t.log.Error("hsm: PIN refused on reconnect; giving up on this token", "err", err)
	default:
		t.backoff = min(max(2*t.backoff, minBackoff), t.maxBackoff)
		t.next = time.Now().Add(t.backoff)
		t.lastErr = err
		t.log.Warn("hsm: reconnect failed", "err", err, "retry_in", t.backoff)
	}
	t.mu.Unlock()
	close(ch)
}

// closeContexts closes crypto11 contexts. Closing may finalise the module,
// so raw calls are held off meanwhile.
func (t *Token) closeContexts(cs []*crypto11.Context) {
	if len(cs) == 0 {
		return
	}
	t.rawMu.Lock()
	defer t.rawMu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

func (t *Token) destroyRaw() {
	t.rawMu.Lock()
	defer t.rawMu.Unlock()
	if !t.rawGone {
		t.rawGone = true
		t.raw.Destroy()
	}
}

// do runs fn on the live connection. If fn fails with a session or device
// error it reconnects and runs fn once more.
func (t *Token) do(ctx context.Context, fn func(c conn) error) error {
	var last error
	for try := 0; try < 2; try++ {
		c, err := t.acquire(ctx)
		if err != nil {
			return err
		}
		err = fn(c)
		if err == nil || !isDeviceError(err) {
			return err
		}
		t.invalidate(c.gen, err)
		last = err
	}
	return fmt.Errorf("%w: token %s: %w", ErrUnavailable, t.name(), last)
}

// Health reports whether the token answers: nil if it does, an error
// wrapping ErrUnavailable (or ErrPIN, ErrClosed) if not. A broken
// connection found here is reopened, within the limits of the backoff and
// of ctx.
func (t *Token) Health(ctx context.Context) error {
	return t.do(ctx, t.probe)
}

// probe asks the token for its info and checks that a new session is
// logged in.
func (t *Token) probe(c conn) error {
	t.rawMu.RLock()
	defer t.rawMu.RUnlock()
	if t.rawGone {
		return ErrClosed
	}
	if _, err := t.raw.GetTokenInfo(c.slot); err != nil {
		return err
	}
	s, err := t.raw.OpenSession(c.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return err
	}
	defer t.raw.CloseSession(s)
	info, err := t.raw.GetSessionInfo(s)
	if err != nil {
		return err
	}
	if info.State != pkcs11.CKS_RO_USER_FUNCTIONS && info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
		return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
	}
	return nil
}

// Close releases the token. Signers from it fail with ErrClosed
// afterwards. Close waits for operations in progress.
func (t *Token) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.done)
	cs := t.stale
	if t.ctx != nil {
		cs = append(cs, t.ctx)
	}
	t.ctx, t.stale = nil, nil
	ch := t.attempt
	t.mu.Unlock()
	if ch != nil {
		<-ch
	}
	t.closeContexts(cs)
	t.destroyRaw()
	return nil
}
