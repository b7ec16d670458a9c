package inventory

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rootgate/rootgate/ca"
)

// CertStatus is where a journaled certificate stands.
type CertStatus string

// Certificate statuses.
const (
	// CertIssued: journaled by the CA, not (yet) linked to an enrollment.
	CertIssued CertStatus = "issued"
	// CertActive: the device's current certificate.
	CertActive CertStatus = "active"
	// CertSuperseded: replaced by a later enrollment or renewal.
	CertSuperseded CertStatus = "superseded"
	// CertRevoked: revoked with its device or by an admin.
	CertRevoked CertStatus = "revoked"
)

// Certificate is one journaled certificate.
type Certificate struct {
	Serial       string     `json:"serial"`
	Kind         string     `json:"kind"`
	DeviceID     string     `json:"device_id,omitempty"`
	Subject      string     `json:"subject"`
	Status       CertStatus `json:"status"`
	StatusReason string     `json:"status_reason,omitempty"`
	NotBefore    time.Time  `json:"not_before"`
	NotAfter     time.Time  `json:"not_after"`
	IssuedAt     time.Time  `json:"issued_at"`
	DER          []byte     `json:"der,omitempty"`
}

// RecordIssuance writes rec to the issuance journal and returns once it is
// durably committed, together with a certificate.issued event. A serial
// already in the journal is refused with an error wrapping ErrConflict.
// It makes *Store a ca.Journal.
//
// Concurrent calls are group-committed: records that arrive while a commit
// is in flight share the next transaction (each under its own savepoint, so
// one refused record does not affect the others) and its single fsync. Once
// queued, a record is waited for even if ctx is cancelled, so that a nil
// error always means committed and an error never hides a commit.
func (s *Store) RecordIssuance(ctx context.Context, rec ca.IssuanceRecord) error {
	if err := validSerial(rec.Serial); err != nil {
		return fmt.Errorf("inventory: record issuance: %w", err)
	}
	switch rec.Kind {
	case ca.KindDevice, ca.KindServer, ca.KindAdmin:
	default:
		return fmt.Errorf("inventory: record issuance %s: %w: kind %q", rec.Serial, ErrInvalidArgument, rec.Kind)
	}
	if len(rec.DER) == 0 || rec.NotBefore.IsZero() || rec.NotAfter.IsZero() {
		return fmt.Errorf("inventory: record issuance %s: %w: DER and validity are required", rec.Serial, ErrInvalidArgument)
	}
	req := &issueReq{rec: rec, done: make(chan error, 1)}
	select {
	case s.issueCh <- req:
	case <-ctx.Done():
		return fmt.Errorf("inventory: record issuance %s: %w", rec.Serial, ctx.Err())
	case <-s.closing:
		return fmt.Errorf("inventory: record issuance %s: %w", rec.Serial, ErrClosed)
	}
	if err := <-req.done; err != nil {
		return fmt.Errorf("inventory: record issuance %s: %w", rec.Serial, err)
	}
	return nil
}

// maxIssueBatch caps how many journal records share one transaction.
const maxIssueBatch = 256

type issueReq struct {
	rec  ca.IssuanceRecord
	done chan error
}

// journalLoop is the group committer behind RecordIssuance. It runs from
// Open until Close.
func (s *Store) journalLoop() {
	defer close(s.loopDone)
	for {
		select {
		case <-s.closing:
			return
		case first := <-s.issueCh:
			batch := []*issueReq{first}
		more:
			for len(batch) < maxIssueBatch {
				select {
				case r := <-s.issueCh:
					batch = append(batch, r)
				default:
					break more
				}
			}
			s.commitIssuances(batch)
		}
	}
}

// commitIssuances writes a batch in one transaction and answers every
// request in it.
func (s *Store) commitIssuances(batch []*issueReq) {
	ctx := context.Background() // one caller's cancellation must not fail the others
	now := s.now()
	errs := make([]error, len(batch))
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		stmts := make([]*sql.Stmt, 0, 5)
		defer func() {
			for _, st := range stmts {
				st.Close()
			}
		}()
		prep := func(q string) (*sql.Stmt, error) {
			st, err := tx.PrepareContext(ctx, q)
			if err == nil {
				stmts = append(stmts, st)
			}
			return st, err
		}
		var b issueBatch
		var err error
		for q, dst := range map[string]**sql.Stmt{
			insertCertSQL:          &b.insertCert,
			insertEventSQL:         &b.chain.insert,
			`SAVEPOINT issuance`:   &b.savepoint,
			`ROLLBACK TO issuance`: &b.rollback,
			`RELEASE issuance`:     &b.release,
		} {
			if *dst, err = prep(q); err != nil {
				return err
			}
		}
		b.chain.tx = tx
		for i, r := range batch {
			if _, err := b.savepoint.ExecContext(ctx); err != nil {
				return err
			}
			mark := b.chain
			if errs[i] = b.insert(ctx, now, r.rec); errs[i] != nil {
				b.chain = mark
				if _, err := b.rollback.ExecContext(ctx); err != nil {
					return err
				}
			}
			if _, err := b.release.ExecContext(ctx); err != nil {
				return err
			}
		}
		return s.stage("journal:before-commit")
	})
	for i, r := range batch {
		if err != nil {
			r.done <- err
		} else {
			r.done <- errs[i]
		}
	}
}

const insertCertSQL = `INSERT INTO certificates
	(serial, kind, device_id, subject, not_before, not_after, der, status, issued_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, 'issued', ?) ON CONFLICT (serial) DO NOTHING`

// issueBatch holds the statements prepared for one group commit.
type issueBatch struct {
	insertCert, savepoint, rollback, release *sql.Stmt
	chain                                    chainWriter
}

func (b *issueBatch) insert(ctx context.Context, now time.Time, rec ca.IssuanceRecord) error {
	res, err := b.insertCert.ExecContext(ctx,
		rec.Serial, rec.Kind, rec.DeviceID, rec.Subject, toMicro(rec.NotBefore), toMicro(rec.NotAfter), rec.DER, toMicro(now))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("%w: serial already journaled", ErrConflict)
	}
	return b.chain.append(ctx, now, Event{
		Type:     EventCertificateIssued,
		DeviceID: rec.DeviceID,
		Outcome:  OutcomeInfo,
		Details: map[string]string{
			"serial":    rec.Serial,
			"kind":      rec.Kind,
			"subject":   rec.Subject,
			"not_after": rec.NotAfter.UTC().Format(time.RFC3339),
		},
	})
}

const certColumns = `serial, kind, device_id, subject, status, status_reason, not_before, not_after, issued_at, der`

func scanCertificate(sc interface{ Scan(...any) error }) (*Certificate, error) {
	var c Certificate
	var nb, na, ia int64
	var status string
	if err := sc.Scan(&c.Serial, &c.Kind, &c.DeviceID, &c.Subject, &status, &c.StatusReason, &nb, &na, &ia, &c.DER); err != nil {
		return nil, err
	}
	c.Status = CertStatus(status)
	c.NotBefore, c.NotAfter, c.IssuedAt = fromMicro(nb), fromMicro(na), fromMicro(ia)
	return &c, nil
}

// GetCertificate returns the journaled certificate with this serial
// (lowercase hex), or an error wrapping ErrNotFound.
func (s *Store) GetCertificate(ctx context.Context, serial string) (*Certificate, error) {
	c, err := scanCertificate(s.r.QueryRowContext(ctx, `SELECT `+certColumns+` FROM certificates WHERE serial = ?`, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("inventory: get certificate %s: %w", serial, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("inventory: get certificate %s: %w", serial, err)
	}
	return c, nil
}

// ListCertificates returns the certificates journaled for a device, oldest
// first. A device with none yields an empty list, not an error.
func (s *Store) ListCertificates(ctx context.Context, deviceID string) ([]*Certificate, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+certColumns+` FROM certificates WHERE device_id = ? ORDER BY issued_at, serial`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("inventory: list certificates of %s: %w", deviceID, err)
	}
	defer rows.Close()
	var out []*Certificate
	for rows.Next() {
		c, err := scanCertificate(rows)
		if err != nil {
			return nil, fmt.Errorf("inventory: list certificates of %s: %w", deviceID, err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inventory: list certificates of %s: %w", deviceID, err)
	}
	return out, nil
}

// validSerial accepts ca's serial form: lowercase hex without leading zeros.
func validSerial(s string) error {
	if s == "" || len(s) > 64 || (len(s) > 1 && s[0] == '0') {
		return fmt.Errorf("%w: serial %q is not lowercase hex without leading zeros", ErrInvalidArgument, s)
	}
	if strings.Trim(s, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: serial %q is not lowercase hex without leading zeros", ErrInvalidArgument, s)
	}
	return nil
}
