package inventory

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

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
	// CertRevoked: revoked with its device or by an admin, or voided by
	// VoidCertificate: signed and journaled but never handed out (its
	// reason then starts with VoidReasonPrefix).
	CertRevoked CertStatus = "revoked"
)

// VoidReasonPrefix starts the status reason of a certificate voided by
// VoidCertificate.
const VoidReasonPrefix = "not handed out: "

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
// is in flight share the next transaction and its single fsync, and when
// several are waiting the committer collects for a little longer (see
// issueLinger). A duplicate serial fails only its own caller; if a batch
// fails for any other reason that may concern one record, it is written
// again record by record, each under its own savepoint, so that one bad
// record does not fail the others. Once queued, a record is waited for even
// if ctx is cancelled, so that a nil error always means committed and an
// error never hides a commit.
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

// maxIssueBatch caps how many journal records share one transaction. It is
// a power of two: events are written with multi-row statements of
// power-of-two sizes (see chunk).
const maxIssueBatch = 256

// Group commit pacing. Once more than one record is waiting when the
// committer turns to the queue (so several issuers are in flight), it keeps
// collecting while records keep coming, at most issueGap apart, for at most
// issueLinger after it took the first one. Each commit costs one fsync and
// rewrites the pages every commit touches (table tails, index pages), in
// CPU time as well as I/O; without pacing, a faster commit only meant
// smaller batches and more commits per second. A lone record (one issuer at
// a time) is committed at once: it never waits. A record waits at most
// issueLinger more than it would without pacing, and issuers that are all
// already in the batch cost it at most issueGap.
const (
	issueLinger = 8 * time.Millisecond
	issueGap    = time.Millisecond
)

type issueReq struct {
	rec  ca.IssuanceRecord
	done chan error
}

// journalLoop is the group committer behind RecordIssuance. It runs from
// Open until Close, and alone uses the journal's prepared statements.
func (s *Store) journalLoop() {
	defer close(s.loopDone)
	js := &journalStmts{}
	defer js.close(s.w)
	batch := make([]*issueReq, 0, maxIssueBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-s.closing:
			return
		case first := <-s.issueCh:
			start := time.Now()
			batch = append(batch[:0], first)
		queued:
			for len(batch) < maxIssueBatch {
				select {
				case r := <-s.issueCh:
					batch = append(batch, r)
				default:
					break queued
				}
			}
			if len(batch) > 1 {
				_ = s.stage("journal:linger")
				deadline := start.Add(issueLinger)
			linger:
				for len(batch) < maxIssueBatch {
					wait := min(time.Until(deadline), issueGap)
					if wait <= 0 {
						break
					}
					timer.Reset(wait)
					select {
					case r := <-s.issueCh:
						batch = append(batch, r)
						timer.Stop()
					case <-timer.C:
						break linger
					case <-s.closing: // commit what was accepted, then stop
						timer.Stop()
						break linger
					}
				}
			}
			s.commitIssuances(js, batch)
			clear(batch) // drop references to answered requests
		}
	}
}

// errIsolate marks a failure of a multi-row insert that may have been
// caused by one record: the batch is then written again record by record.
type errIsolate struct{ err error }

func (e *errIsolate) Error() string { return e.err.Error() }
func (e *errIsolate) Unwrap() error { return e.err }

// commitIssuances writes a batch in one transaction and answers every
// request in it.
//
// The happy path (insertBatch) has no savepoint and no statement journal:
// one execution of a prepared one-row insert per certificate, one
// multi-row insert of their certificate.issued events per power-of-two
// chunk, one audit chain head lookup and one commit for the whole batch. A
// duplicate serial fails only its record there. If a statement fails
// otherwise (anything one record may cause), the transaction is rolled back
// and the batch is written again in a new one, each record under its own
// savepoint (insertEach), so that only the records that fail there fail and
// the others are committed.
func (s *Store) commitIssuances(js *journalStmts, batch []*issueReq) {
	errs := make([]error, len(batch)) // each record's own failure
	now := s.now()
	err := js.run(s.w, func(c *journalConn) error {
		err := c.tx(func() error { return c.insertBatch(now, batch, errs, s.stage) })
		if ie := (*errIsolate)(nil); errors.As(err, &ie) {
			clear(errs)
			err = c.tx(func() error {
				if err := s.stage("journal:isolate"); err != nil {
					return err
				}
				return c.insertEach(now, batch, errs, s.stage)
			})
		}
		return err
	})
	for i, r := range batch {
		if err != nil {
			r.done <- err
		} else {
			r.done <- errs[i]
		}
	}
}

// journalStmts are the journal's statements, prepared once on the write
// connection and reused by every batch: the certificate insert, event
// inserts for 1, 2, 4, ... maxIssueBatch rows, the chain head query and the
// statements of the record-by-record path. Only the journal loop uses them.
//
// The journal drives the write connection through database/sql/driver
// (sql.Conn.Raw) rather than sql.Tx and sql.Stmt: with a cancellable context
// (every sql.Tx has one) the driver starts a goroutine per statement to
// interrupt it, and sql.Tx starts one per transaction; the journal's
// context is never cancelled (one caller's cancellation must not fail the
// others), so it passes context.Background and these hand-offs, with the
// thread wake-ups they cost, do not happen. The transaction is the same:
// BEGIN IMMEDIATE (the connection's _txlock) and COMMIT.
type journalStmts struct {
	conn   any // the driver connection the statements belong to
	events map[int]driver.Stmt
	named  map[string]driver.Stmt
	args   []driver.NamedValue // reused between statements
}

// journalConn is the write connection during one batch.
type journalConn struct {
	*journalStmts
	dc any
}

// run calls fn with the write connection, held for the duration.
func (js *journalStmts) run(db *sql.DB, fn func(*journalConn) error) error {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		if dc != js.conn {
			// A new connection (database/sql replaced a broken one): the old
			// statements went with the old connection.
			js.conn, js.events, js.named = dc, nil, nil
		}
		return fn(&journalConn{js, dc})
	})
}

// close finalizes the statements, if their connection is still the write
// connection.
func (js *journalStmts) close(db *sql.DB) {
	if js.conn == nil {
		return
	}
	_ = js.run(db, func(c *journalConn) error {
		for _, st := range c.events {
			st.Close()
		}
		for _, st := range c.named {
			st.Close()
		}
		return nil
	})
}

// tx runs fn in a transaction (BEGIN IMMEDIATE, from the connection's
// _txlock) and commits it; an error from fn rolls it back.
func (c *journalConn) tx(fn func() error) error {
	ctx := context.Background()
	tx, err := c.dc.(driver.ConnBeginTx).BeginTx(ctx, driver.TxOptions{})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(); err != nil {
		_ = tx.Rollback() // an error if SQLite already rolled back (OR ROLLBACK)
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// stmt returns the statement cached in *m under key, preparing q() the
// first time.
func stmt[K comparable](c *journalConn, m *map[K]driver.Stmt, key K, q func() string) (driver.Stmt, error) {
	if st := (*m)[key]; st != nil {
		return st, nil
	}
	st, err := c.dc.(driver.ConnPrepareContext).PrepareContext(context.Background(), q())
	if err != nil {
		return nil, fmt.Errorf("prepare journal statement: %w", err)
	}
	if *m == nil {
		*m = make(map[K]driver.Stmt)
	}
	(*m)[key] = st
	return st, nil
}

func (c *journalConn) namedStmt(q string) (driver.Stmt, error) {
	return stmt(c, &c.named, q, func() string { return q })
}

// exec runs st with values as its parameters, in order.
func (c *journalConn) exec(st driver.Stmt, values []any) (driver.Result, error) {
	c.args = c.args[:0]
	for i, v := range values {
		c.args = append(c.args, driver.NamedValue{Ordinal: i + 1, Value: v})
	}
	res, err := st.(driver.StmtExecContext).ExecContext(context.Background(), c.args)
	clear(c.args) // keep no reference to the batch's values
	return res, err
}

// chainHeadSQL reads the newest event, as chainWriter does.
const chainHeadSQL = `SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`

// chainHead reads the newest event (seq 0 and 32 zero bytes for an empty
// trail).
func (c *journalConn) chainHead() (chainLink, error) {
	st, err := c.namedStmt(chainHeadSQL)
	if err != nil {
		return chainLink{}, err
	}
	rows, err := st.(driver.StmtQueryContext).QueryContext(context.Background(), nil)
	if err != nil {
		return chainLink{}, fmt.Errorf("audit chain head: %w", err)
	}
	defer rows.Close()
	row := make([]driver.Value, 2)
	switch err := rows.Next(row); {
	case errors.Is(err, io.EOF):
		return chainLink{0, make([]byte, sha256.Size)}, nil
	case err != nil:
		return chainLink{}, fmt.Errorf("audit chain head: %w", err)
	}
	seq, ok1 := row[0].(int64)
	hash, ok2 := row[1].([]byte)
	if !ok1 || !ok2 {
		return chainLink{}, fmt.Errorf("audit chain head: %w: seq %T, hash %T", ErrAuditChain, row[0], row[1])
	}
	return chainLink{seq, bytes.Clone(hash)}, nil
}

// chainLink is the newest event of the audit chain.
type chainLink struct {
	seq  int64
	hash []byte
}

// issuedEventRow is one row of a certificate.issued event. The columns
// such an event always leaves empty are literals, so that each row binds 6
// values instead of 13; the hash covers them all the same (see
// issuedEvent).
const issuedEventRow = `(?, ?, '` + EventCertificateIssued + `', ?, '', '` + OutcomeInfo + `', '', '', '', '', ?, ?, ?)`

const insertEventsHead = `INTO events
	(seq, at, type, device_id, ek_fingerprint, outcome, code, reason, peer, actor, details, prev_hash, hash) VALUES `

// insertIssuedEventsSQL inserts n certificate.issued events. OR ROLLBACK:
// a failing row rolls the whole transaction back at once, so SQLite keeps
// no statement journal to undo this one statement alone (a 4 KiB copy of
// every page it changes, spilled to a temporary file past 64 KiB);
// commitIssuances then writes the batch again record by record.
func insertIssuedEventsSQL(n int) string {
	return multiRowSQL(`INSERT OR ROLLBACK `+insertEventsHead, issuedEventRow, n, ``)
}

// insertCertSQL inserts one certificate; a serial already journaled is
// skipped (no row affected). insertIssuedEventSQL is the record-by-record
// path's event insert: a failure undoes only the statement, then the
// record's savepoint is rolled back.
const (
	insertCertSQL = `INSERT INTO certificates
	(serial, kind, device_id, subject, not_before, not_after, der, status, issued_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, 'issued', ?) ON CONFLICT (serial) DO NOTHING`
	insertIssuedEventSQL = `INSERT ` + insertEventsHead + issuedEventRow
)

const (
	certArgs  = 8 // bound values of insertCertSQL
	eventArgs = 6 // bound values per row of insertIssuedEventsSQL
)

func multiRowSQL(head, row string, n int, tail string) string {
	var b strings.Builder
	b.Grow(len(head) + n*(len(row)+2) + len(tail))
	b.WriteString(head)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	b.WriteString(tail)
	return b.String()
}

// chunk returns the size of the next multi-row statement for n remaining
// rows: the largest power of two not above n. At most
// log2(maxIssueBatch)+1 multi-row statements are ever prepared.
func chunk(n int) int {
	c := 1
	for c*2 <= n {
		c *= 2
	}
	return c
}

// insertBatch is the happy path of commitIssuances. Each certificate is
// inserted by one execution of a one-row statement with ON CONFLICT DO
// NOTHING, so that a duplicate serial (journaled before, or earlier in the
// batch) is told apart by its zero rows affected and fails alone, with no
// savepoint. (A multi-row INSERT into certificates would cost more, not
// less: certificates is the parent of a foreign key, devices.current_serial,
// and SQLite then adds a foreign key check to every row and keeps a
// statement journal, a 4 KiB copy of every page the statement changes.)
// The certificate.issued events of the certificates that went in are
// inserted by multi-row statements, OR ROLLBACK so that SQLite needs no
// statement journal there either. Any other failure is returned as
// *errIsolate; errs receives the conflicts.
func (c *journalConn) insertBatch(now time.Time, batch []*issueReq, errs []error, stage func(string) error) error {
	head, err := c.chainHead()
	if err != nil {
		return err
	}
	insertCert, err := c.namedStmt(insertCertSQL)
	if err != nil {
		return err
	}
	issuedAt := now.UnixMicro()
	args := make([]any, 0, max(certArgs, chunk(len(batch))*eventArgs))
	issued := make([]*ca.IssuanceRecord, 0, len(batch))
	for i, r := range batch {
		res, err := c.exec(insertCert, appendCertArgs(args[:0], &r.rec, issuedAt))
		if err != nil {
			return &errIsolate{err}
		}
		if n, err := res.RowsAffected(); err != nil {
			return &errIsolate{err}
		} else if n == 0 {
			errs[i] = errDuplicateSerial
			continue
		}
		issued = append(issued, &r.rec)
	}
	for done, n := 0, 0; done < len(issued); done += n {
		n = chunk(len(issued) - done)
		insertEvents, err := stmt(c, &c.events, n, func() string { return insertIssuedEventsSQL(n) })
		if err != nil {
			return err
		}
		args = args[:0]
		for _, rec := range issued[done : done+n] {
			if args, err = appendEventArgs(args, &head, issuedAt, rec); err != nil {
				return err
			}
		}
		if _, err := c.exec(insertEvents, args); err != nil {
			return &errIsolate{fmt.Errorf("append %s events: %w", EventCertificateIssued, err)}
		}
	}
	return stage("journal:before-commit")
}

var errDuplicateSerial = fmt.Errorf("%w: serial already journaled", ErrConflict)

// insertEach is the fallback of commitIssuances: each record under its own
// savepoint, so that a record that fails (errs[i]) is rolled back alone.
func (c *journalConn) insertEach(now time.Time, batch []*issueReq, errs []error, stage func(string) error) error {
	var st [5]driver.Stmt
	for i, q := range [...]string{`SAVEPOINT issuance`, `ROLLBACK TO issuance`, `RELEASE issuance`, insertCertSQL, insertIssuedEventSQL} {
		var err error
		if st[i], err = c.namedStmt(q); err != nil {
			return err
		}
	}
	savepoint, rollback, release, insertCert, insertEvent := st[0], st[1], st[2], st[3], st[4]
	head, err := c.chainHead()
	if err != nil {
		return err
	}
	issuedAt := now.UnixMicro()
	insert := func(rec *ca.IssuanceRecord) error {
		if err := stage("journal:record " + rec.Serial); err != nil {
			return err
		}
		res, err := c.exec(insertCert, appendCertArgs(nil, rec, issuedAt))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return errDuplicateSerial
		}
		h := head
		args, err := appendEventArgs(nil, &h, issuedAt, rec)
		if err != nil {
			return err
		}
		if _, err := c.exec(insertEvent, args); err != nil {
			return fmt.Errorf("append %s event: %w", EventCertificateIssued, err)
		}
		head = h
		return nil
	}
	for i, r := range batch {
		if _, err := c.exec(savepoint, nil); err != nil {
			return err
		}
		if errs[i] = insert(&r.rec); errs[i] != nil {
			if _, err := c.exec(rollback, nil); err != nil {
				return err
			}
		}
		if _, err := c.exec(release, nil); err != nil {
			return err
		}
	}
	return stage("journal:before-commit")
}

// appendCertArgs appends the values of rec's row of insertCertSQL.
func appendCertArgs(args []any, rec *ca.IssuanceRecord, issuedAt int64) []any {
	return append(args, rec.Serial, rec.Kind, rec.DeviceID, rec.Subject,
		rec.NotBefore.UnixMicro(), rec.NotAfter.UnixMicro(), rec.DER, issuedAt)
}

// appendEventArgs appends the values of the row of rec's certificate.issued
// event (issuedEventRow) at atMicro, chained to head, and advances head.
func appendEventArgs(args []any, head *chainLink, atMicro int64, rec *ca.IssuanceRecord) ([]any, error) {
	e, details, err := issuedEvent(rec)
	if err != nil {
		return args, err
	}
	seq := head.seq + 1
	h := eventHash(head.hash, seq, atMicro, &e, details)
	args = append(args, seq, atMicro, e.DeviceID, details, head.hash, h)
	head.seq, head.hash = seq, h
	return args, nil
}

// issuedEvent is the certificate.issued event of rec and its details as
// stored. Only Type, DeviceID, Outcome and Details are set: the columns
// insertIssuedEventsSQL writes as literals.
func issuedEvent(rec *ca.IssuanceRecord) (Event, string, error) {
	e := Event{Type: EventCertificateIssued, DeviceID: rec.DeviceID, Outcome: OutcomeInfo}
	notAfter := rec.NotAfter.UTC().Format(time.RFC3339)
	if details, ok := issuedDetailsJSON(rec.Kind, notAfter, rec.Serial, rec.Subject); ok {
		return e, details, nil
	}
	e.Details = map[string]string{"serial": rec.Serial, "kind": rec.Kind, "subject": rec.Subject, "not_after": notAfter}
	details, err := encodeMap(e.Details)
	return e, details, err
}

// issuedDetailsJSON writes the details of a certificate.issued event
// exactly as encodeMap (encoding/json, keys sorted) would, without
// reflection, map or sort; ok is false if a value needs escaping, and the
// caller then uses encodeMap.
func issuedDetailsJSON(kind, notAfter, serial, subject string) (string, bool) {
	var b strings.Builder
	b.Grow(len(`{"kind":"","not_after":"","serial":"","subject":""}`) + len(kind) + len(notAfter) + len(serial) + len(subject))
	for i, kv := range [4][2]string{{"kind", kind}, {"not_after", notAfter}, {"serial", serial}, {"subject", subject}} {
		if !jsonPlain(kv[1]) {
			return "", false
		}
		if i == 0 {
			b.WriteString(`{"`)
		} else {
			b.WriteString(`,"`)
		}
		b.WriteString(kv[0])
		b.WriteString(`":"`)
		b.WriteString(kv[1])
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String(), true
}

// jsonPlain reports whether encoding/json writes s between quotes as is:
// printable ASCII other than '"', '\\' and the HTML characters it escapes.
func jsonPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
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

// VoidCertificate marks a journaled certificate that was signed but never
// handed out (its enrollment was refused after issuance) as revoked, with
// the status reason VoidReasonPrefix+reason, and records a
// certificate.voided event by actor, in one transaction: the journal then
// never shows an undelivered certificate as valid. Only a certificate still
// in status issued may be voided: one that is active, superseded or
// revoked was linked to an enrollment or already withdrawn, and is refused
// with an error wrapping ErrConflict, unchanged (an active certificate is
// withdrawn by revoking its device). An unknown serial is refused with an
// error wrapping ErrNotFound.
func (s *Store) VoidCertificate(ctx context.Context, serial, actor, reason string) error {
	if err := validSerial(serial); err != nil {
		return fmt.Errorf("inventory: void certificate: %w", err)
	}
	now := s.now()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		cert, err := scanCertificate(tx.QueryRowContext(ctx, `SELECT `+certColumns+` FROM certificates WHERE serial = ?`, serial))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: not in the journal", ErrNotFound)
		}
		if err != nil {
			return err
		}
		if cert.Status != CertIssued {
			return fmt.Errorf("%w: certificate is %s, only an issued certificate never handed out may be voided", ErrConflict, cert.Status)
		}
		full := VoidReasonPrefix + reason
		if _, err := tx.ExecContext(ctx, `UPDATE certificates SET status = 'revoked', status_changed_at = ?, status_reason = ?
			WHERE serial = ? AND status = 'issued'`, toMicro(now), full, serial); err != nil {
			return err
		}
		return s.appendEvent(ctx, tx, now, Event{
			Type: EventCertVoided, DeviceID: cert.DeviceID, Outcome: OutcomeInfo, Reason: full, Actor: actor,
			Details: map[string]string{"serial": serial, "kind": cert.Kind, "from": string(cert.Status), "status": string(CertRevoked)},
		})
	})
	if err != nil {
		return fmt.Errorf("inventory: void certificate %s: %w", serial, err)
	}
	return nil
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
