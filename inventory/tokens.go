package inventory

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// TokenPrefix starts every enrollment token secret.
const TokenPrefix = "rgt_"

// DefaultTokenTTL is the lifetime of a token created with a zero TTL.
const DefaultTokenTTL = 24 * time.Hour

// tokenEncoding is lowercase RFC 4648 base32 without padding.
var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// tokenSecretBytes is the entropy of a secret: 160 bits, 32 base32 chars.
const tokenSecretBytes = 20

// TokenStatus summarises whether a token can still be used.
type TokenStatus string

// Token statuses, in the order CheckToken tests them.
const (
	TokenValid   TokenStatus = "valid"
	TokenRevoked TokenStatus = "revoked"
	TokenUsed    TokenStatus = "used"
	TokenExpired TokenStatus = "expired"
)

// Token is an enrollment token as stored: never its secret.
type Token struct {
	// ID is the public handle admins list and revoke by.
	ID string `json:"id"`
	// EKFingerprint, when set, is the only EK the token admits.
	EKFingerprint string            `json:"ek_fingerprint,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	CreatedBy     string            `json:"created_by,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	ExpiresAt     time.Time         `json:"expires_at"`
	UsedAt        time.Time         `json:"used_at,omitzero"`
	// UsedBy is the device ID that consumed the token.
	UsedBy    string    `json:"used_by,omitempty"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// Status is computed when the token is read, against the store's clock
	// (or the time passed to CheckToken).
	Status TokenStatus `json:"status"`
}

func (t *Token) status(now time.Time) TokenStatus {
	switch {
	case !t.RevokedAt.IsZero():
		return TokenRevoked
	case !t.UsedAt.IsZero():
		return TokenUsed
	case !now.Before(t.ExpiresAt):
		return TokenExpired
	}
	return TokenValid
}

// TokenParams describes a token to create.
type TokenParams struct {
	// TTL is the token's lifetime; zero means DefaultTokenTTL.
	TTL time.Duration
	// EKFingerprint optionally binds the token to one EK.
	EKFingerprint string
	// Labels are copied onto the device that consumes the token.
	Labels map[string]string
	// Actor is recorded in the token.created event.
	Actor string
}

// hashSecret returns the stored form of a secret and the token ID derived
// from it (hex of the hash's first 6 bytes).
func hashSecret(secret string) (hash []byte, id string) {
	sum := sha256.Sum256([]byte(secret))
	return sum[:], hex.EncodeToString(sum[:6])
}

// CreateToken creates a one-time enrollment token and returns its secret,
// which is shown only now: the store keeps its SHA-256. A token.created
// event is recorded in the same transaction.
func (s *Store) CreateToken(ctx context.Context, p TokenParams) (string, *Token, error) {
	ttl := p.TTL
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < 0 {
		return "", nil, fmt.Errorf("inventory: create token: %w: negative TTL %s", ErrInvalidArgument, p.TTL)
	}
	var fp string
	if p.EKFingerprint != "" {
		var err error
		if _, fp, err = DeviceIDFromFingerprint(p.EKFingerprint); err != nil {
			return "", nil, fmt.Errorf("inventory: create token: %w", err)
		}
	}
	if err := validLabels(p.Labels); err != nil {
		return "", nil, fmt.Errorf("inventory: create token: %w", err)
	}
	labels, err := encodeMap(p.Labels)
	if err != nil {
		return "", nil, fmt.Errorf("inventory: create token: %w", err)
	}
	raw := make([]byte, tokenSecretBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", nil, fmt.Errorf("inventory: create token: random: %w", err)
	}
	secret := TokenPrefix + tokenEncoding.EncodeToString(raw)
	hash, id := hashSecret(secret)
	now := s.now()
	tok := &Token{
		ID: id, EKFingerprint: fp, Labels: p.Labels, CreatedBy: p.Actor,
		CreatedAt: fromMicro(now.UnixMicro()), ExpiresAt: fromMicro(now.Add(ttl).UnixMicro()), Status: TokenValid,
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO enrollment_tokens
			(id, secret_hash, ek_fingerprint, labels, created_by, created_at, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			id, hash, fp, labels, p.Actor, toMicro(tok.CreatedAt), toMicro(tok.ExpiresAt))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: token ID collision, try again", ErrConflict)
		}
		details := labelDetails(p.Labels)
		if details == nil {
			details = map[string]string{}
		}
		details["token_id"] = id
		details["expires_at"] = tok.ExpiresAt.Format(time.RFC3339)
		return s.appendEvent(ctx, tx, now, Event{
			Type: EventTokenCreated, EKFingerprint: fp, Outcome: OutcomeAccepted, Actor: p.Actor, Details: details,
		})
	})
	if err != nil {
		return "", nil, fmt.Errorf("inventory: create token: %w", err)
	}
	return secret, tok, nil
}

const tokenColumns = `id, ek_fingerprint, labels, created_by, created_at, expires_at, used_at, used_by, revoked_at`

func scanToken(sc interface{ Scan(...any) error }, now time.Time) (*Token, error) {
	var t Token
	var labels string
	var created, expires int64
	var used, revoked sql.NullInt64
	if err := sc.Scan(&t.ID, &t.EKFingerprint, &labels, &t.CreatedBy, &created, &expires, &used, &t.UsedBy, &revoked); err != nil {
		return nil, err
	}
	var err error
	if t.Labels, err = decodeMap(labels); err != nil {
		return nil, fmt.Errorf("token %s labels: %w", t.ID, err)
	}
	t.CreatedAt, t.ExpiresAt = fromMicro(created), fromMicro(expires)
	t.UsedAt, t.RevokedAt = fromNullMicro(used), fromNullMicro(revoked)
	t.Status = t.status(now)
	return &t, nil
}

// usable returns nil if t may admit the EK fp at now, else the specific
// ErrToken* reason.
func (t *Token) usable(fp string, now time.Time) error {
	switch t.status(now) {
	case TokenRevoked:
		return ErrTokenRevoked
	case TokenUsed:
		return ErrTokenUsed
	case TokenExpired:
		return ErrTokenExpired
	}
	if t.EKFingerprint != "" && !strings.EqualFold(t.EKFingerprint, fp) {
		return ErrTokenWrongEK
	}
	return nil
}

// CheckToken returns the token whose secret this is if it is usable at now
// by the EK with this fingerprint, without consuming it (ActivateDevice
// does). Otherwise the error wraps ErrTokenInvalid and one of
// ErrTokenNotFound, ErrTokenUsed, ErrTokenExpired, ErrTokenRevoked or
// ErrTokenWrongEK.
func (s *Store) CheckToken(ctx context.Context, secret, ekFingerprint string, now time.Time) (*Token, error) {
	if !strings.HasPrefix(secret, TokenPrefix) || len(secret) < len(TokenPrefix)+26 || len(secret) > 256 {
		return nil, fmt.Errorf("inventory: check token: %w (malformed secret)", ErrTokenNotFound)
	}
	hash, id := hashSecret(secret)
	t, err := scanToken(s.r.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens WHERE secret_hash = ?`, hash), now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("inventory: check token %s: %w", id, ErrTokenNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("inventory: check token %s: %w", id, err)
	}
	if err := t.usable(ekFingerprint, now); err != nil {
		return nil, fmt.Errorf("inventory: check token %s: %w", t.ID, err)
	}
	return t, nil
}

// consumeToken marks token id used by device deviceID inside tx with a
// conditional update, so that of two concurrent enrollments only one can
// consume it; the loser gets the specific ErrToken* reason. It returns the
// token's labels.
func (s *Store) consumeToken(ctx context.Context, tx *sql.Tx, id, deviceID, fp string, now time.Time) (map[string]string, error) {
	res, err := tx.ExecContext(ctx, `UPDATE enrollment_tokens SET used_at = ?, used_by = ?
		WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?
		AND (ek_fingerprint = '' OR ek_fingerprint = ?)`,
		toMicro(now), deviceID, id, toMicro(now), fp)
	if err != nil {
		return nil, fmt.Errorf("consume token %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, fmt.Errorf("consume token %s: %w", id, err)
	}
	t, err := scanToken(tx.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens WHERE id = ?`, id), now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("consume token %s: %w", id, ErrTokenNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("consume token %s: %w", id, err)
	}
	if n == 1 {
		return t.Labels, nil
	}
	// Not consumed: find out why, judging the state before this attempt.
	if err := t.usable(fp, now); err != nil {
		return nil, fmt.Errorf("consume token %s: %w", id, err)
	}
	return nil, fmt.Errorf("consume token %s: %w", id, ErrTokenInvalid)
}

// GetToken returns the token with this ID, or an error wrapping ErrNotFound.
func (s *Store) GetToken(ctx context.Context, id string) (*Token, error) {
	t, err := scanToken(s.r.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens WHERE id = ?`, id), s.now())
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("inventory: get token %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("inventory: get token %s: %w", id, err)
	}
	return t, nil
}

// ListTokens returns every token, newest first, with its status at the
// store's current time.
func (s *Store) ListTokens(ctx context.Context) ([]*Token, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("inventory: list tokens: %w", err)
	}
	defer rows.Close()
	now := s.now()
	var out []*Token
	for rows.Next() {
		t, err := scanToken(rows, now)
		if err != nil {
			return nil, fmt.Errorf("inventory: list tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inventory: list tokens: %w", err)
	}
	return out, nil
}

// RevokeToken revokes an unused token and records token.revoked in the same
// transaction. An unknown ID wraps ErrNotFound; a token already used or
// revoked wraps ErrConflict.
func (s *Store) RevokeToken(ctx context.Context, id, actor string) error {
	now := s.now()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		t, err := scanToken(tx.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens WHERE id = ?`, id), now)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		switch {
		case !t.RevokedAt.IsZero():
			return fmt.Errorf("%w: already revoked", ErrConflict)
		case !t.UsedAt.IsZero():
			return fmt.Errorf("%w: already used by device %s", ErrConflict, t.UsedBy)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE enrollment_tokens SET revoked_at = ? WHERE id = ?`, toMicro(now), id); err != nil {
			return err
		}
		return s.appendEvent(ctx, tx, now, Event{
			Type: EventTokenRevoked, EKFingerprint: t.EKFingerprint, Outcome: OutcomeAccepted, Actor: actor,
			Details: map[string]string{"token_id": id},
		})
	})
	if err != nil {
		return fmt.Errorf("inventory: revoke token %s: %w", id, err)
	}
	return nil
}
