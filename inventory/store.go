// Package inventory is Rootgate's store: the CA issuance journal, devices,
// their certificates, enrollment tokens and a hash-chained audit trail, kept
// in an embedded SQLite database.
//
// The database runs in WAL mode with synchronous=FULL, so a method that
// returns nil has committed durably. All writes of a process go through a
// single connection and every write transaction starts with BEGIN IMMEDIATE,
// so concurrent writers (goroutines, or the server and the admin CLI in
// separate processes) queue on SQLite's write lock instead of failing with
// SQLITE_BUSY halfway through a transaction. Reads use a separate pool and
// see the last committed state.
package inventory

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Sentinel errors. Errors returned by Store wrap at most one of these (the
// token reasons also wrap ErrTokenInvalid) and name the operation and its
// subject.
var (
	// ErrNotFound: the device, certificate, token or event does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the write contradicts what is stored (duplicate serial,
	// device already registered, state that does not allow the change).
	ErrConflict = errors.New("conflict")
	// ErrInvalidState: the device's state does not allow the requested
	// transition. It wraps ErrConflict.
	ErrInvalidState = fmt.Errorf("%w: invalid state transition", ErrConflict)
	// ErrInvalidArgument: malformed input (fingerprint, serial, TTL...).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrTokenInvalid: an enrollment token cannot be used. The specific
	// reasons below wrap it.
	ErrTokenInvalid = errors.New("enrollment token invalid")
	// ErrTokenNotFound: no token has this secret or ID.
	ErrTokenNotFound = fmt.Errorf("%w: not found", ErrTokenInvalid)
	// ErrTokenUsed: the token was already consumed by an enrollment.
	ErrTokenUsed = fmt.Errorf("%w: already used", ErrTokenInvalid)
	// ErrTokenExpired: the token is past its expiry.
	ErrTokenExpired = fmt.Errorf("%w: expired", ErrTokenInvalid)
	// ErrTokenRevoked: an admin revoked the token.
	ErrTokenRevoked = fmt.Errorf("%w: revoked", ErrTokenInvalid)
	// ErrTokenWrongEK: the token is bound to a different EK fingerprint.
	ErrTokenWrongEK = fmt.Errorf("%w: bound to a different EK", ErrTokenInvalid)
	// ErrAuditChain: the event trail's hash chain does not verify.
	ErrAuditChain = errors.New("audit chain broken")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("store closed")
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// DefaultBusyTimeout is how long a write waits for another process (or
// connection) holding SQLite's write lock before it fails.
const DefaultBusyTimeout = 30 * time.Second

// Option adjusts how Open configures a Store.
type Option func(*options)

type options struct {
	now         func() time.Time
	busyTimeout time.Duration
	readConns   int
}

// WithClock makes the Store take timestamps (and token expiry decisions)
// from now instead of time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithBusyTimeout sets how long a statement waits for a lock held by another
// connection or process (default DefaultBusyTimeout).
func WithBusyTimeout(d time.Duration) Option { return func(o *options) { o.busyTimeout = d } }

// WithReadConns caps the read pool (default 4).
func WithReadConns(n int) Option { return func(o *options) { o.readConns = n } }

// Store is the inventory database. It is safe for concurrent use by many
// goroutines, and several processes may open the same file.
type Store struct {
	w    *sql.DB // one connection, BEGIN IMMEDIATE, synchronous=FULL
	r    *sql.DB // read-only pool
	now  func() time.Time
	path string

	issueCh   chan *issueReq // unbuffered: a send succeeds only when the committer takes it
	closing   chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once

	// hook, when set by tests in this package, runs at named points inside
	// write transactions; an error aborts the transaction.
	hook func(stage string) error
}

// Open opens (creating if needed) the SQLite database at path and applies
// any migrations it has not seen, each in its own transaction, recording
// them in schema_migrations.
func Open(ctx context.Context, dbPath string, opts ...Option) (*Store, error) {
	o := options{now: time.Now, busyTimeout: DefaultBusyTimeout, readConns: 4}
	for _, fn := range opts {
		fn(&o)
	}
	if o.readConns < 1 {
		o.readConns = 1
	}
	if dbPath == "" {
		return nil, fmt.Errorf("inventory: open: %w: empty database path", ErrInvalidArgument)
	}
	// Create the file owner-only before SQLite does (it would use 0644);
	// the -wal and -shm files inherit its mode.
	f, err := os.OpenFile(dbPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w", dbPath, err)
	}
	f.Close()
	busy := strconv.FormatInt(o.busyTimeout.Milliseconds(), 10)

	wq := url.Values{}
	wq.Set("_busy_timeout", busy)
	wq.Set("_txlock", "immediate")
	wq.Set("_foreign_keys", "1")
	wq.Set("_journal_mode", "WAL")
	wq.Set("_synchronous", "FULL")
	w, err := sql.Open("sqlite", dsn(dbPath, wq))
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w", dbPath, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	s := &Store{w: w, now: o.now, path: dbPath}
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("inventory: open %s: %w", dbPath, err)
	}
	var mode string
	if err := w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		w.Close()
		return nil, fmt.Errorf("inventory: open %s: journal mode: %w", dbPath, err)
	}
	if !strings.EqualFold(mode, "wal") {
		w.Close()
		return nil, fmt.Errorf("inventory: open %s: journal mode is %q, want wal", dbPath, mode)
	}
	if err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, err
	}

	rq := url.Values{}
	rq.Set("_busy_timeout", busy)
	rq.Set("_foreign_keys", "1")
	rq.Set("_query_only", "1")
	r, err := sql.Open("sqlite", dsn(dbPath, rq))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("inventory: open %s: %w", dbPath, err)
	}
	r.SetMaxOpenConns(o.readConns)
	r.SetMaxIdleConns(o.readConns)
	s.r = r
	s.issueCh = make(chan *issueReq)
	s.closing = make(chan struct{})
	s.loopDone = make(chan struct{})
	go s.journalLoop()
	return s, nil
}

func dsn(p string, q url.Values) string {
	return "file:" + p + "?" + q.Encode()
}

// Close stops the journal committer and closes the database. Committed data
// is already durable. Calls after the first return nil.
func (s *Store) Close() error {
	first := false
	s.closeOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	if s.closing != nil {
		close(s.closing)
		<-s.loopDone
	}
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("inventory: close %s: %w", s.path, err)
	}
	return nil
}

// Migration is one applied schema migration.
type Migration struct {
	Version   int       `json:"version"`
	Name      string    `json:"name"`
	AppliedAt time.Time `json:"applied_at"`
}

// Migrations lists the schema migrations applied to the database, oldest
// first.
func (s *Store) Migrations(ctx context.Context) ([]Migration, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT version, name, applied_at FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("inventory: list migrations: %w", err)
	}
	defer rows.Close()
	var out []Migration
	for rows.Next() {
		var m Migration
		var at int64
		if err := rows.Scan(&m.Version, &m.Name, &at); err != nil {
			return nil, fmt.Errorf("inventory: list migrations: %w", err)
		}
		m.AppliedAt = fromMicro(at)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inventory: list migrations: %w", err)
	}
	return out, nil
}

type migrationFile struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migrationFile, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migrationFile
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and '_'", name)
		}
		body, err := migrationFS.ReadFile(path.Join("migrations", name))
		if err != nil {
			return nil, err
		}
		out = append(out, migrationFile{version: v, name: strings.TrimSuffix(name, ".sql"), sql: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", out[i-1].name, out[i].name, out[i].version)
		}
	}
	return out, nil
}

// migrate applies every embedded migration not yet recorded, each in its own
// IMMEDIATE transaction so that processes opening the same file at once
// apply each migration exactly once.
func (s *Store) migrate(ctx context.Context) error {
	files, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("inventory: migrate %s: %w", s.path, err)
	}
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("inventory: migrate %s: create schema_migrations: %w", s.path, err)
	}
	for _, m := range files {
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, toMicro(s.now()))
			return err
		})
		if err != nil {
			return fmt.Errorf("inventory: migrate %s: apply %s: %w", s.path, m.name, err)
		}
	}
	var newest int
	if err := s.w.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&newest); err != nil {
		return fmt.Errorf("inventory: migrate %s: %w", s.path, err)
	}
	if len(files) > 0 && newest > files[len(files)-1].version {
		return fmt.Errorf("inventory: migrate %s: database schema version %d is newer than this binary knows (%d)",
			s.path, newest, files[len(files)-1].version)
	}
	return nil
}

// writeTx runs fn in an IMMEDIATE transaction on the write connection and
// commits it; any error from fn rolls everything back.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// stage runs the test hook, if any.
func (s *Store) stage(name string) error {
	if s.hook == nil {
		return nil
	}
	return s.hook(name)
}

// toMicro stores a time as unix microseconds; the zero time is NULL.
func toMicro(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func fromMicro(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromNullMicro(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMicro(v.Int64)
}
