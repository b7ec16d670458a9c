package inventory

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/rootgate/rootgate/attestor"
)

// DeviceState is where a device stands in its lifecycle.
//
//	(unknown) --RegisterDevice--> registered --ActivateDevice--> active
//	(unknown) --QueueForApproval--> pending --ApproveDevice--> registered
//	pending|registered --RejectDevice--> rejected --ApproveDevice--> registered
//	any but revoked --RevokeDevice--> revoked (final)
//
// ActivateDevice accepts a registered or active device (re-enrollment), or an
// unknown one that presents an enrollment token; it refuses pending,
// rejected, quarantined and revoked devices.
type DeviceState string

// Device states.
const (
	StateRegistered  DeviceState = "registered"
	StatePending     DeviceState = "pending"
	StateActive      DeviceState = "active"
	StateRejected    DeviceState = "rejected"
	StateQuarantined DeviceState = "quarantined"
	StateRevoked     DeviceState = "revoked"
)

// Valid reports whether s is one of the defined states.
func (s DeviceState) Valid() bool {
	switch s {
	case StateRegistered, StatePending, StateActive, StateRejected, StateQuarantined, StateRevoked:
		return true
	}
	return false
}

// PCRValue is one PCR from the device's last quote.
type PCRValue struct {
	Index  int    `json:"index"`
	Alg    string `json:"alg"`
	Digest []byte `json:"digest"`
}

// Device is one device of the inventory.
type Device struct {
	ID            string            `json:"id"`
	EKFingerprint string            `json:"ek_fingerprint"`
	EKPublic      []byte            `json:"ek_public,omitempty"`
	EKCertificate []byte            `json:"ek_certificate,omitempty"`
	AKPublic      []byte            `json:"ak_public,omitempty"`
	State         DeviceState       `json:"state"`
	StateReason   string            `json:"state_reason,omitempty"`
	Facts         map[string]string `json:"facts,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	PCRs          []PCRValue        `json:"pcrs,omitempty"`
	PCRsAt        time.Time         `json:"pcrs_at,omitzero"`
	CurrentSerial string            `json:"current_serial,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	UpdatedAt     time.Time         `json:"updated_at"`
	EnrolledAt    time.Time         `json:"enrolled_at,omitzero"`
}

// DeviceFilter selects devices; zero fields match everything.
type DeviceFilter struct {
	State DeviceState
	// Limit caps the result; 0 or negative means no limit.
	Limit int
}

// Activation is what ActivateDevice commits for an accepted enrollment.
type Activation struct {
	// Device carries the EK fingerprint (required; the ID is derived from it
	// and must match if set), the EK and AK material, facts, labels and PCRs.
	Device *Device
	// Serial is the certificate just issued (already journaled, kind device,
	// for this device).
	Serial string
	// TokenID, when set, is consumed in the same transaction.
	TokenID string
	// Actor and Peer go into the enrollment.finish event.
	Actor string
	Peer  string
}

// DeviceIDFromFingerprint returns the device ID for an EK fingerprint and
// the fingerprint in canonical lowercase form, or an error wrapping
// ErrInvalidArgument if fp is not 64 hex digits.
func DeviceIDFromFingerprint(fp string) (id, normalized string, err error) {
	normalized, err = attestor.NormalizeFingerprint(fp)
	if err != nil {
		return "", "", fmt.Errorf("%w: EK fingerprint %q is not 64 hex digits", ErrInvalidArgument, fp)
	}
	id, err = attestor.DeviceIDFromFingerprint(normalized)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return id, normalized, nil
}

const deviceColumns = `id, ek_fingerprint, ek_public, ek_certificate, ak_public, state, state_reason, facts, labels,
	pcrs, pcrs_at, coalesce(current_serial, ''), created_at, updated_at, enrolled_at`

func scanDevice(sc interface{ Scan(...any) error }) (*Device, error) {
	var d Device
	var state, facts, labels, pcrs string
	var pcrsAt, enrolledAt sql.NullInt64
	var created, updated int64
	if err := sc.Scan(&d.ID, &d.EKFingerprint, &d.EKPublic, &d.EKCertificate, &d.AKPublic, &state, &d.StateReason,
		&facts, &labels, &pcrs, &pcrsAt, &d.CurrentSerial, &created, &updated, &enrolledAt); err != nil {
		return nil, err
	}
	d.State = DeviceState(state)
	var err error
	if d.Facts, err = decodeMap(facts); err != nil {
		return nil, fmt.Errorf("device %s facts: %w", d.ID, err)
	}
	if d.Labels, err = decodeMap(labels); err != nil {
		return nil, fmt.Errorf("device %s labels: %w", d.ID, err)
	}
	if pcrs != "" && pcrs != "[]" {
		if err := json.Unmarshal([]byte(pcrs), &d.PCRs); err != nil {
			return nil, fmt.Errorf("device %s PCRs: %w", d.ID, err)
		}
	}
	d.PCRsAt = fromNullMicro(pcrsAt)
	d.CreatedAt, d.UpdatedAt = fromMicro(created), fromMicro(updated)
	d.EnrolledAt = fromNullMicro(enrolledAt)
	return &d, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func getDevice(ctx context.Context, q querier, id string) (*Device, error) {
	d, err := scanDevice(q.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return d, err
}

// GetDevice returns the device with this ID, or an error wrapping
// ErrNotFound.
func (s *Store) GetDevice(ctx context.Context, id string) (*Device, error) {
	d, err := getDevice(ctx, s.r, id)
	if err != nil {
		return nil, fmt.Errorf("inventory: get device %s: %w", id, err)
	}
	return d, nil
}

// GetDeviceByEK returns the device with this EK fingerprint (any case), or
// an error wrapping ErrNotFound (ErrInvalidArgument if fp is malformed).
func (s *Store) GetDeviceByEK(ctx context.Context, ekFingerprint string) (*Device, error) {
	id, _, err := DeviceIDFromFingerprint(ekFingerprint)
	if err != nil {
		return nil, fmt.Errorf("inventory: get device by EK: %w", err)
	}
	d, err := getDevice(ctx, s.r, id)
	if err != nil {
		return nil, fmt.Errorf("inventory: get device by EK %s: %w", ekFingerprint, err)
	}
	return d, nil
}

// ListDevices returns the devices matching f, oldest first.
func (s *Store) ListDevices(ctx context.Context, f DeviceFilter) ([]*Device, error) {
	q := `SELECT ` + deviceColumns + ` FROM devices`
	var args []any
	if f.State != "" {
		if !f.State.Valid() {
			return nil, fmt.Errorf("inventory: list devices: %w: state %q", ErrInvalidArgument, f.State)
		}
		q += ` WHERE state = ?`
		args = append(args, string(f.State))
	}
	q += ` ORDER BY created_at, id`
	if f.Limit > 0 {
		q += ` LIMIT ` + strconv.Itoa(f.Limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("inventory: list devices: %w", err)
	}
	defer rows.Close()
	var out []*Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("inventory: list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inventory: list devices: %w", err)
	}
	return out, nil
}

func validLabels(m map[string]string) error {
	for k := range m {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("%w: label key %q", ErrInvalidArgument, k)
		}
	}
	return nil
}

// insertDevice inserts d (ID and fingerprint already normalized) in the
// given state; it reports false if a device with that ID already exists.
func insertDevice(ctx context.Context, tx *sql.Tx, d *Device, state DeviceState, now time.Time) (bool, error) {
	facts, err := encodeMap(d.Facts)
	if err != nil {
		return false, err
	}
	labels, err := encodeMap(d.Labels)
	if err != nil {
		return false, err
	}
	pcrs, err := encodePCRs(d.PCRs)
	if err != nil {
		return false, err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO devices
		(id, ek_fingerprint, ek_public, ek_certificate, ak_public, state, facts, labels, pcrs, pcrs_at, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		d.ID, d.EKFingerprint, nilIfEmpty(d.EKPublic), nilIfEmpty(d.EKCertificate), nilIfEmpty(d.AKPublic), string(state),
		facts, labels, pcrs, toMicro(d.PCRsAt), toMicro(now), toMicro(now))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

func encodePCRs(p []PCRValue) (string, error) {
	if len(p) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(p)
	return string(b), err
}

func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// RegisterDevice pre-registers the EK fingerprint as a device in state
// registered, allowed to enroll in preregistered mode, and records a
// device.registered event in the same transaction. A device already known
// under that EK is refused with an error wrapping ErrConflict.
func (s *Store) RegisterDevice(ctx context.Context, ekFingerprint string, labels map[string]string, actor string) (*Device, error) {
	id, fp, err := DeviceIDFromFingerprint(ekFingerprint)
	if err != nil {
		return nil, fmt.Errorf("inventory: register device: %w", err)
	}
	if err := validLabels(labels); err != nil {
		return nil, fmt.Errorf("inventory: register device %s: %w", id, err)
	}
	now := s.now()
	var out *Device
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		ok, err := insertDevice(ctx, tx, &Device{ID: id, EKFingerprint: fp, Labels: labels}, StateRegistered, now)
		if err != nil {
			return err
		}
		if !ok {
			existing, err := getDevice(ctx, tx, id)
			if err != nil {
				return err
			}
			return fmt.Errorf("%w: already known in state %s", ErrConflict, existing.State)
		}
		if err := s.appendEvent(ctx, tx, now, Event{
			Type: EventDeviceRegistered, DeviceID: id, EKFingerprint: fp, Outcome: OutcomeAccepted, Actor: actor,
			Details: labelDetails(labels),
		}); err != nil {
			return err
		}
		out, err = getDevice(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inventory: register device %s: %w", id, err)
	}
	return out, nil
}

func labelDetails(labels map[string]string) map[string]string {
	if len(labels) == 0 {
		return nil
	}
	m := make(map[string]string, len(labels))
	for k, v := range labels {
		m["label."+k] = v
	}
	return m
}

// QueueForApproval inserts d as pending if its EK is unknown (recording a
// device.queued event) and returns the stored device, whatever its state:
// callers decide from that state whether the device may proceed.
func (s *Store) QueueForApproval(ctx context.Context, d *Device) (*Device, error) {
	if d == nil {
		return nil, fmt.Errorf("inventory: queue device: %w: no device", ErrInvalidArgument)
	}
	id, fp, err := DeviceIDFromFingerprint(d.EKFingerprint)
	if err != nil {
		return nil, fmt.Errorf("inventory: queue device: %w", err)
	}
	if d.ID != "" && d.ID != id {
		return nil, fmt.Errorf("inventory: queue device %s: %w: ID does not match EK fingerprint (want %s)", d.ID, ErrInvalidArgument, id)
	}
	if err := validLabels(d.Labels); err != nil {
		return nil, fmt.Errorf("inventory: queue device %s: %w", id, err)
	}
	nd := *d
	nd.ID, nd.EKFingerprint = id, fp
	now := s.now()
	var out *Device
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		inserted, err := insertDevice(ctx, tx, &nd, StatePending, now)
		if err != nil {
			return err
		}
		if inserted {
			if err := s.appendEvent(ctx, tx, now, Event{
				Type: EventDeviceQueued, DeviceID: id, EKFingerprint: fp, Outcome: OutcomeInfo,
				Details: nd.Facts,
			}); err != nil {
				return err
			}
		}
		out, err = getDevice(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inventory: queue device %s: %w", id, err)
	}
	return out, nil
}

// transition moves device id from one of the states in from to to, with
// reason, runs extra in the same transaction and records an event of type
// evType.
func (s *Store) transition(ctx context.Context, op, id, actor, reason string, to DeviceState, from []DeviceState,
	evType string, extra func(tx *sql.Tx, now time.Time) (map[string]string, error)) error {
	now := s.now()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		d, err := getDevice(ctx, tx, id)
		if err != nil {
			return err
		}
		allowed := false
		for _, f := range from {
			allowed = allowed || d.State == f
		}
		if !allowed {
			return fmt.Errorf("%w: cannot %s a device in state %s", ErrInvalidState, op, d.State)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?`,
			string(to), reason, toMicro(now), id); err != nil {
			return err
		}
		var details map[string]string
		if extra != nil {
			if details, err = extra(tx, now); err != nil {
				return err
			}
		}
		if details == nil {
			details = map[string]string{}
		}
		details["from"] = string(d.State)
		if err := s.stage(op + ":before-event"); err != nil {
			return err
		}
		return s.appendEvent(ctx, tx, now, Event{
			Type: evType, DeviceID: id, EKFingerprint: d.EKFingerprint, Outcome: OutcomeAccepted,
			Reason: reason, Actor: actor, Details: details,
		})
	})
	if err != nil {
		return fmt.Errorf("inventory: %s device %s: %w", op, id, err)
	}
	return nil
}

// ApproveDevice moves a pending (or previously rejected) device to
// registered, so that it may enroll, and records device.approved. Other
// states are refused with an error wrapping ErrInvalidState.
func (s *Store) ApproveDevice(ctx context.Context, id, actor string) error {
	return s.transition(ctx, "approve", id, actor, "", StateRegistered,
		[]DeviceState{StatePending, StateRejected}, EventDeviceApproved, nil)
}

// RejectDevice moves a pending or registered device to rejected and records
// device.rejected. A rejected device cannot enroll until approved. Active
// devices are revoked, not rejected (ErrInvalidState).
func (s *Store) RejectDevice(ctx context.Context, id, actor, reason string) error {
	return s.transition(ctx, "reject", id, actor, reason, StateRejected,
		[]DeviceState{StatePending, StateRegistered}, EventDeviceRejected, nil)
}

// RevokeDevice moves a device in any state but revoked to revoked, marks its
// issued and active certificates revoked, and records device.revoked, all in
// one transaction. Revocation is final: a revoked device never enrolls
// again under the same EK.
func (s *Store) RevokeDevice(ctx context.Context, id, actor, reason string) error {
	return s.transition(ctx, "revoke", id, actor, reason, StateRevoked,
		[]DeviceState{StateRegistered, StatePending, StateActive, StateRejected, StateQuarantined}, EventDeviceRevoked,
		func(tx *sql.Tx, now time.Time) (map[string]string, error) {
			res, err := tx.ExecContext(ctx, `UPDATE certificates SET status = 'revoked', status_changed_at = ?, status_reason = ?
				WHERE device_id = ? AND status IN ('issued', 'active')`, toMicro(now), reason, id)
			if err != nil {
				return nil, err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return nil, err
			}
			return map[string]string{"revoked_certificates": strconv.FormatInt(n, 10)}, nil
		})
}

// ActivateDevice commits an accepted enrollment in one transaction: it
// inserts or updates the device as active (the ID, derived from the EK,
// stays the same on re-enrollment), links the already-journaled certificate
// a.Serial as current and marks the device's earlier certificates
// superseded, consumes a.TokenID if set (an error wrapping ErrTokenInvalid
// if it is no longer usable), and records an accepted enrollment.finish
// event. On any error nothing is changed.
//
// Only registered and active devices, or unknown ones presenting a token,
// may be activated; pending, rejected, quarantined and revoked devices are
// refused with an error wrapping ErrInvalidState.
func (s *Store) ActivateDevice(ctx context.Context, a Activation) (*Device, error) {
	if a.Device == nil {
		return nil, fmt.Errorf("inventory: activate device: %w: no device", ErrInvalidArgument)
	}
	id, fp, err := DeviceIDFromFingerprint(a.Device.EKFingerprint)
	if err != nil {
		return nil, fmt.Errorf("inventory: activate device: %w", err)
	}
	if a.Device.ID != "" && a.Device.ID != id {
		return nil, fmt.Errorf("inventory: activate device %s: %w: ID does not match EK fingerprint (want %s)", a.Device.ID, ErrInvalidArgument, id)
	}
	if err := validSerial(a.Serial); err != nil {
		return nil, fmt.Errorf("inventory: activate device %s: %w", id, err)
	}
	if err := validLabels(a.Device.Labels); err != nil {
		return nil, fmt.Errorf("inventory: activate device %s: %w", id, err)
	}
	now := s.now()
	var out *Device
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		cert, err := scanCertificate(tx.QueryRowContext(ctx, `SELECT `+certColumns+` FROM certificates WHERE serial = ?`, a.Serial))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("certificate %s: %w: not in the journal", a.Serial, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if cert.Kind != "device" || cert.DeviceID != id || cert.Status != CertIssued {
			return fmt.Errorf("certificate %s: %w: kind %s, device %q, status %s (want an issued device certificate for %s)",
				a.Serial, ErrConflict, cert.Kind, cert.DeviceID, cert.Status, id)
		}

		existing, err := getDevice(ctx, tx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if existing == nil && a.TokenID == "" {
			return fmt.Errorf("%w: device is not registered and presents no token", ErrInvalidState)
		}
		if existing != nil && existing.State != StateRegistered && existing.State != StateActive {
			return fmt.Errorf("%w: cannot activate a device in state %s", ErrInvalidState, existing.State)
		}

		labels := map[string]string{}
		if a.TokenID != "" {
			tokLabels, err := s.consumeToken(ctx, tx, a.TokenID, id, fp, now)
			if err != nil {
				return err
			}
			maps.Copy(labels, tokLabels)
		}
		if err := s.stage("activate:token-consumed"); err != nil {
			return err
		}
		if existing != nil {
			maps.Copy(labels, existing.Labels)
		}
		maps.Copy(labels, a.Device.Labels)

		nd := *a.Device
		nd.ID, nd.EKFingerprint, nd.Labels = id, fp, labels
		pcrsAt := nd.PCRsAt
		if pcrsAt.IsZero() && len(nd.PCRs) > 0 {
			pcrsAt = now
		}
		nd.PCRsAt = pcrsAt
		if existing == nil {
			if _, err := insertDevice(ctx, tx, &nd, StateActive, now); err != nil {
				return err
			}
		}
		facts, err := encodeMap(nd.Facts)
		if err != nil {
			return err
		}
		lbl, err := encodeMap(nd.Labels)
		if err != nil {
			return err
		}
		pcrs, err := encodePCRs(nd.PCRs)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET
				state = 'active', state_reason = '',
				ek_public = coalesce(?, ek_public), ek_certificate = coalesce(?, ek_certificate), ak_public = coalesce(?, ak_public),
				facts = ?, labels = ?, pcrs = ?, pcrs_at = ?, current_serial = ?, updated_at = ?, enrolled_at = ?
			WHERE id = ?`,
			nilIfEmpty(nd.EKPublic), nilIfEmpty(nd.EKCertificate), nilIfEmpty(nd.AKPublic),
			facts, lbl, pcrs, toMicro(nd.PCRsAt), a.Serial, toMicro(now), toMicro(now), id); err != nil {
			return err
		}

		res, err := tx.ExecContext(ctx, `UPDATE certificates SET status = 'superseded', status_changed_at = ?, status_reason = ?
			WHERE device_id = ? AND serial != ? AND status IN ('issued', 'active')`, toMicro(now), "superseded by "+a.Serial, id, a.Serial)
		if err != nil {
			return err
		}
		superseded, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE certificates SET status = 'active', status_changed_at = ? WHERE serial = ?`,
			toMicro(now), a.Serial); err != nil {
			return err
		}
		if err := s.stage("activate:before-event"); err != nil {
			return err
		}
		details := map[string]string{"serial": a.Serial, "superseded": strconv.FormatInt(superseded, 10)}
		if a.TokenID != "" {
			details["token_id"] = a.TokenID
		}
		if existing != nil {
			details["from"] = string(existing.State)
		} else {
			details["from"] = "unknown"
		}
		if err := s.appendEvent(ctx, tx, now, Event{
			Type: EventEnrollmentFinish, DeviceID: id, EKFingerprint: fp, Outcome: OutcomeAccepted,
			Actor: a.Actor, Peer: a.Peer, Details: details,
		}); err != nil {
			return err
		}
		out, err = getDevice(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inventory: activate device %s: %w", id, err)
	}
	return out, nil
}
