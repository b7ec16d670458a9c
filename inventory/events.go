package inventory

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Event types written by the store and its callers.
const (
	EventEnrollmentBegin   = "enrollment.begin"
	EventEnrollmentFinish  = "enrollment.finish"
	EventEnrollmentRefused = "enrollment.refused"
	EventDeviceRegistered  = "device.registered"
	EventDeviceQueued      = "device.queued"
	EventDeviceApproved    = "device.approved"
	EventDeviceRejected    = "device.rejected"
	EventDeviceRevoked     = "device.revoked"
	EventTokenCreated      = "token.created"
	EventTokenRevoked      = "token.revoked"
	EventCertIssued        = "certificate.issued"
	EventCertVoided        = "certificate.voided"
	// EventCertificateIssued is EventCertIssued under its long name.
	EventCertificateIssued = EventCertIssued
)

// Event outcomes.
const (
	OutcomeAccepted = "accepted"
	OutcomeRefused  = "refused"
	OutcomeInfo     = "info"
)

// Event is one entry of the audit trail. Seq, At, PrevHash and Hash are set
// by the store.
type Event struct {
	Seq           int64             `json:"seq"`
	At            time.Time         `json:"at"`
	Type          string            `json:"type"`
	DeviceID      string            `json:"device_id,omitempty"`
	EKFingerprint string            `json:"ek_fingerprint,omitempty"`
	Outcome       string            `json:"outcome"`
	Code          string            `json:"code,omitempty"`
	Reason        string            `json:"reason,omitempty"`
	Peer          string            `json:"peer,omitempty"`
	Actor         string            `json:"actor,omitempty"`
	Details       map[string]string `json:"details,omitempty"`
	PrevHash      []byte            `json:"prev_hash"`
	Hash          []byte            `json:"hash"`
}

// EventFilter selects events; zero fields match everything.
type EventFilter struct {
	DeviceID string
	Type     string
	// Limit caps the result (newest first); 0 means 100, negative means all.
	Limit int
}

// RecordEvent appends e to the audit trail, chained to the previous event,
// and returns once it is committed.
func (s *Store) RecordEvent(ctx context.Context, e Event) error {
	if e.Type == "" {
		return fmt.Errorf("inventory: record event: %w: type is required", ErrInvalidArgument)
	}
	switch e.Outcome {
	case OutcomeAccepted, OutcomeRefused, OutcomeInfo:
	case "":
		e.Outcome = OutcomeInfo
	default:
		return fmt.Errorf("inventory: record event %s: %w: outcome %q", e.Type, ErrInvalidArgument, e.Outcome)
	}
	now := s.now()
	if err := s.writeTx(ctx, func(tx *sql.Tx) error { return s.appendEvent(ctx, tx, now, e) }); err != nil {
		return fmt.Errorf("inventory: record event %s: %w", e.Type, err)
	}
	return nil
}

// appendEvent inserts e inside tx, chained to the newest event. Callers run
// it in the transaction of the change it records.
func (s *Store) appendEvent(ctx context.Context, tx *sql.Tx, at time.Time, e Event) error {
	c := chainWriter{tx: tx}
	return c.append(ctx, at, e)
}

// chainWriter appends events inside one transaction. It reads the chain head
// once and, when prepared, reuses one insert statement: a batch of events
// costs one query and n executions.
type chainWriter struct {
	tx     *sql.Tx
	insert *sql.Stmt // optional
	seq    int64
	prev   []byte
}

const insertEventSQL = `INSERT INTO events
	(seq, at, type, device_id, ek_fingerprint, outcome, code, reason, peer, actor, details, prev_hash, hash)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func (c *chainWriter) append(ctx context.Context, at time.Time, e Event) error {
	if e.Outcome == "" {
		e.Outcome = OutcomeInfo
	}
	if c.prev == nil {
		err := c.tx.QueryRowContext(ctx, `SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`).Scan(&c.seq, &c.prev)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			c.seq, c.prev = 0, make([]byte, sha256.Size)
		case err != nil:
			return fmt.Errorf("audit chain head: %w", err)
		}
	}
	details, err := encodeMap(e.Details)
	if err != nil {
		return err
	}
	e.Seq = c.seq + 1
	e.At = fromMicro(at.UnixMicro())
	h := eventHash(c.prev, e.Seq, e.At.UnixMicro(), &e, details)
	args := []any{e.Seq, e.At.UnixMicro(), e.Type, e.DeviceID, e.EKFingerprint, e.Outcome, e.Code, e.Reason, e.Peer, e.Actor, details, c.prev, h}
	if c.insert != nil {
		_, err = c.insert.ExecContext(ctx, args...)
	} else {
		_, err = c.tx.ExecContext(ctx, insertEventSQL, args...)
	}
	if err != nil {
		return fmt.Errorf("append %s event: %w", e.Type, err)
	}
	c.seq, c.prev = e.Seq, h
	return nil
}

// eventHash is SHA-256(prev || canonical row): a domain label, then seq and
// time as big-endian 64-bit integers, then every text column (the details as
// stored, JSON with sorted keys) as a 32-bit big-endian length and its bytes.
func eventHash(prev []byte, seq, atMicro int64, e *Event, details string) []byte {
	var b bytes.Buffer
	b.Write(prev)
	b.WriteString("rootgate.event.v1")
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	b.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(atMicro))
	b.Write(n[:])
	for _, f := range []string{e.Type, e.DeviceID, e.EKFingerprint, e.Outcome, e.Code, e.Reason, e.Peer, e.Actor, details} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(f)))
		b.Write(l[:])
		b.WriteString(f)
	}
	sum := sha256.Sum256(b.Bytes())
	return sum[:]
}

const eventColumns = `seq, at, type, device_id, ek_fingerprint, outcome, code, reason, peer, actor, details, prev_hash, hash`

func scanEvent(sc interface{ Scan(...any) error }) (*Event, string, error) {
	var e Event
	var at int64
	var details string
	if err := sc.Scan(&e.Seq, &at, &e.Type, &e.DeviceID, &e.EKFingerprint, &e.Outcome, &e.Code, &e.Reason,
		&e.Peer, &e.Actor, &details, &e.PrevHash, &e.Hash); err != nil {
		return nil, "", err
	}
	e.At = fromMicro(at)
	return &e, details, nil
}

// ListEvents returns matching events, newest first.
func (s *Store) ListEvents(ctx context.Context, f EventFilter) ([]*Event, error) {
	var where []string
	var args []any
	if f.DeviceID != "" {
		where = append(where, "device_id = ?")
		args = append(args, f.DeviceID)
	}
	if f.Type != "" {
		where = append(where, "type = ?")
		args = append(args, f.Type)
	}
	q := `SELECT ` + eventColumns + ` FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY seq DESC"
	limit := f.Limit
	if limit == 0 {
		limit = 100
	}
	if limit > 0 {
		q += " LIMIT ?"
		args = append(args, limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("inventory: list events: %w", err)
	}
	defer rows.Close()
	var out []*Event
	for rows.Next() {
		e, details, err := scanEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("inventory: list events: %w", err)
		}
		if e.Details, err = decodeMap(details); err != nil {
			return nil, fmt.Errorf("inventory: list events: event %d: %w", e.Seq, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inventory: list events: %w", err)
	}
	return out, nil
}

// AuditHead returns the sequence number and hash of the newest event (0 and
// 32 zero bytes for an empty trail). Publishing it elsewhere lets a later
// VerifyAuditChain detect truncation of the trail's tail, which the chain
// alone cannot.
func (s *Store) AuditHead(ctx context.Context) (seq int64, hash []byte, err error) {
	err = s.r.QueryRowContext(ctx, `SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, make([]byte, sha256.Size), nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("inventory: audit head: %w", err)
	}
	return seq, hash, nil
}

// VerifyAuditChain recomputes the hash of every event from the first and
// returns an error wrapping ErrAuditChain, naming the first bad event, if any
// row was altered, removed from the middle, inserted or reordered.
func (s *Store) VerifyAuditChain(ctx context.Context) error {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("inventory: verify audit chain: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT `+eventColumns+` FROM events ORDER BY seq`)
	if err != nil {
		return fmt.Errorf("inventory: verify audit chain: %w", err)
	}
	defer rows.Close()
	prev := make([]byte, sha256.Size)
	var want int64 = 1
	for rows.Next() {
		e, details, err := scanEvent(rows)
		if err != nil {
			return fmt.Errorf("inventory: verify audit chain: %w", err)
		}
		if e.Seq != want {
			return fmt.Errorf("inventory: verify audit chain: %w: event %d follows %d", ErrAuditChain, e.Seq, want-1)
		}
		if !bytes.Equal(e.PrevHash, prev) {
			return fmt.Errorf("inventory: verify audit chain: %w: event %d does not link to event %d", ErrAuditChain, e.Seq, e.Seq-1)
		}
		if h := eventHash(prev, e.Seq, e.At.UnixMicro(), e, details); !bytes.Equal(h, e.Hash) {
			return fmt.Errorf("inventory: verify audit chain: %w: event %d was altered", ErrAuditChain, e.Seq)
		}
		prev = e.Hash
		want++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("inventory: verify audit chain: %w", err)
	}
	return nil
}

// encodeMap stores a string map as JSON with sorted keys ("{}" when empty).
func encodeMap(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func decodeMap(s string) (map[string]string, error) {
	if s == "" || s == "{}" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, err
	}
	return m, nil
}
