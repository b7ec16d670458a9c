package inventory

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
)

// testClock is a settable clock for the store.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openTest(t testing.TB, opts ...Option) (*Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rootgate.db")
	s, err := Open(context.Background(), p, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

func randomFP(testing.TB) string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randomSerial(testing.TB) string {
	b := make([]byte, 16)
	rand.Read(b)
	b[0] |= 0x40
	return new(big.Int).SetBytes(b).Text(16)
}

func deviceID(t testing.TB, fp string) string {
	t.Helper()
	id, _, err := DeviceIDFromFingerprint(fp)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func journal(t testing.TB, s *Store, kind, id string) string {
	t.Helper()
	serial := randomSerial(t)
	now := time.Now()
	if err := s.RecordIssuance(context.Background(), ca.IssuanceRecord{
		Serial: serial, Kind: kind, DeviceID: id, Subject: "spiffe://rootgate.local/device/" + id,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour), DER: []byte("der:" + serial),
	}); err != nil {
		t.Fatalf("RecordIssuance: %v", err)
	}
	return serial
}

func countRows(t testing.TB, s *Store, table string) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestOpenPragmasAndMigrationsIdempotent(t *testing.T) {
	ctx := context.Background()
	s, p := openTest(t)
	var mode, fk, syncMode string
	if err := s.w.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	if err := s.w.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != "1" {
		t.Fatalf("foreign_keys = %q, %v; want 1", fk, err)
	}
	if err := s.w.QueryRow(`PRAGMA synchronous`).Scan(&syncMode); err != nil || syncMode != "2" {
		t.Fatalf("synchronous = %q, %v; want 2 (FULL)", syncMode, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file mode: %v %v, want 0600", fi.Mode(), err)
	}
	first, err := s.Migrations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := loadMigrations()
	if len(first) != len(files) || len(first) < 2 {
		t.Fatalf("applied %d migrations, embedded %d", len(first), len(files))
	}
	fp := randomFP(t)
	if _, err := s.RegisterDevice(ctx, fp, nil, "test"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Reopen twice, concurrently: nothing re-applied, data kept.
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s2, err := Open(ctx, p)
			if err != nil {
				errs <- err
				return
			}
			errs <- s2.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
	}
	s3, err := Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	again, err := s3.Migrations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(first) {
		t.Fatalf("after reopen %d migrations, want %d", len(again), len(first))
	}
	for i := range again {
		if again[i] != first[i] {
			t.Fatalf("migration %d changed on reopen: %+v vs %+v", i, again[i], first[i])
		}
	}
	if _, err := s3.GetDeviceByEK(ctx, fp); err != nil {
		t.Fatalf("device lost across reopen: %v", err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	s, p := openTest(t)
	if _, err := s.w.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, '9999_future', 0)`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s2, err := Open(ctx, p); err == nil {
		s2.Close()
		t.Fatal("Open accepted a database from a newer binary")
	}
}

func TestRecordIssuance(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	var _ ca.Journal = s

	id := deviceID(t, randomFP(t))
	serial := journal(t, s, ca.KindDevice, id)
	c, err := s.GetCertificate(ctx, serial)
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != CertIssued || c.DeviceID != id || string(c.DER) != "der:"+serial {
		t.Fatalf("journaled %+v", c)
	}

	dup := ca.IssuanceRecord{Serial: serial, Kind: ca.KindDevice, DeviceID: id, Subject: "x",
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DER: []byte{1}}
	if err := s.RecordIssuance(ctx, dup); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate serial: got %v, want ErrConflict", err)
	}
	for name, rec := range map[string]ca.IssuanceRecord{
		"empty serial": {Kind: ca.KindDevice, NotBefore: time.Now(), NotAfter: time.Now(), DER: []byte{1}},
		"upper serial": {Serial: "ABC", Kind: ca.KindDevice, NotBefore: time.Now(), NotAfter: time.Now(), DER: []byte{1}},
		"leading zero": {Serial: "0abc", Kind: ca.KindDevice, NotBefore: time.Now(), NotAfter: time.Now(), DER: []byte{1}},
		"unknown kind": {Serial: "abc", Kind: "root", NotBefore: time.Now(), NotAfter: time.Now(), DER: []byte{1}},
		"no DER":       {Serial: "abc", Kind: ca.KindServer, NotBefore: time.Now(), NotAfter: time.Now()},
		"no validity":  {Serial: "abc", Kind: ca.KindServer, DER: []byte{1}},
	} {
		if err := s.RecordIssuance(ctx, rec); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		}
	}
	if n := countRows(t, s, "certificates"); n != 1 {
		t.Fatalf("%d certificates journaled, want 1", n)
	}
	evs, err := s.ListEvents(ctx, EventFilter{Type: EventCertificateIssued})
	if err != nil || len(evs) != 1 || evs[0].Details["serial"] != serial {
		t.Fatalf("certificate.issued events: %v %+v", err, evs)
	}
	if _, err := s.GetCertificate(ctx, "abc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown serial: %v", err)
	}
}

// TestRecordIssuanceVisibleToOtherConnection checks the journal is committed
// when RecordIssuance returns: a second, independent handle sees it.
func TestRecordIssuanceVisibleToOtherConnection(t *testing.T) {
	ctx := context.Background()
	s, p := openTest(t)
	other, err := Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	serial := journal(t, s, ca.KindServer, "")
	if _, err := other.GetCertificate(ctx, serial); err != nil {
		t.Fatalf("second handle does not see the journaled certificate: %v", err)
	}
}

func TestDeviceTransitions(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)

	if _, err := s.RegisterDevice(ctx, "not-hex", nil, "cli:test"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad fingerprint: %v", err)
	}
	if _, err := s.RegisterDevice(ctx, randomFP(t)[:62], nil, "cli:test"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("short fingerprint: %v", err)
	}

	fp := randomFP(t)
	upper := []byte(fp)
	for i := range upper {
		if upper[i] >= 'a' && upper[i] <= 'f' {
			upper[i] -= 'a' - 'A'
		}
	}
	d, err := s.RegisterDevice(ctx, string(upper), map[string]string{"site": "lab"}, "cli:test")
	if err != nil {
		t.Fatal(err)
	}
	wantID, _ := attestor.DeviceIDFromFingerprint(fp)
	if d.ID != wantID || d.EKFingerprint != fp || d.State != StateRegistered || d.Labels["site"] != "lab" {
		t.Fatalf("registered %+v, want id %s fp %s", d, wantID, fp)
	}
	if _, err := s.RegisterDevice(ctx, fp, nil, "cli:test"); !errors.Is(err, ErrConflict) {
		t.Fatalf("second register: %v", err)
	}
	if got, err := s.GetDeviceByEK(ctx, string(upper)); err != nil || got.ID != d.ID {
		t.Fatalf("GetDeviceByEK: %v %+v", err, got)
	}

	// registered -> approve is not a valid move.
	if err := s.ApproveDevice(ctx, d.ID, "cli:test"); !errors.Is(err, ErrInvalidState) || !errors.Is(err, ErrConflict) {
		t.Fatalf("approve registered: %v", err)
	}
	if err := s.RejectDevice(ctx, d.ID, "cli:test", "wrong site"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetDevice(ctx, d.ID); got.State != StateRejected || got.StateReason != "wrong site" {
		t.Fatalf("after reject: %+v", got)
	}
	if err := s.RejectDevice(ctx, d.ID, "cli:test", "again"); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("reject rejected: %v", err)
	}
	if err := s.ApproveDevice(ctx, d.ID, "cli:test"); err != nil {
		t.Fatalf("approve rejected: %v", err)
	}

	// Approval queue.
	qfp := randomFP(t)
	q, err := s.QueueForApproval(ctx, &Device{EKFingerprint: qfp, Facts: map[string]string{"hostname": "h1"}})
	if err != nil || q.State != StatePending || q.Facts["hostname"] != "h1" {
		t.Fatalf("queue: %v %+v", err, q)
	}
	q2, err := s.QueueForApproval(ctx, &Device{EKFingerprint: qfp, Facts: map[string]string{"hostname": "other"}})
	if err != nil || q2.State != StatePending || q2.Facts["hostname"] != "h1" {
		t.Fatalf("queue again must return the stored row: %v %+v", err, q2)
	}
	if err := s.ApproveDevice(ctx, q.ID, "cli:admin"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetDevice(ctx, q.ID); got.State != StateRegistered {
		t.Fatalf("approved device in state %s", got.State)
	}
	if q3, _ := s.QueueForApproval(ctx, &Device{EKFingerprint: qfp}); q3.State != StateRegistered {
		t.Fatalf("queue after approval returned %s", q3.State)
	}

	// Revoke: final, certificates revoked.
	serial := journal(t, s, ca.KindDevice, d.ID)
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: serial, Actor: "enroll"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeDevice(ctx, d.ID, "cli:test", "lost"); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.GetCertificate(ctx, serial); c.Status != CertRevoked {
		t.Fatalf("certificate of revoked device is %s", c.Status)
	}
	for name, err := range map[string]error{
		"revoke":  s.RevokeDevice(ctx, d.ID, "cli:test", "again"),
		"approve": s.ApproveDevice(ctx, d.ID, "cli:test"),
		"reject":  s.RejectDevice(ctx, d.ID, "cli:test", ""),
	} {
		if !errors.Is(err, ErrInvalidState) {
			t.Errorf("%s revoked device: %v", name, err)
		}
	}
	if err := s.ApproveDevice(ctx, "nosuchdevice", "cli:test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("approve unknown: %v", err)
	}

	all, err := s.ListDevices(ctx, DeviceFilter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("ListDevices: %v, %d devices", err, len(all))
	}
	rev, err := s.ListDevices(ctx, DeviceFilter{State: StateRevoked})
	if err != nil || len(rev) != 1 || rev[0].ID != d.ID {
		t.Fatalf("ListDevices revoked: %v %+v", err, rev)
	}
	if _, err := s.ListDevices(ctx, DeviceFilter{State: "bogus"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bogus state filter: %v", err)
	}

	// Every admin action left its event.
	var types []string
	evs, _ := s.ListEvents(ctx, EventFilter{DeviceID: d.ID, Limit: -1})
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type != EventCertificateIssued {
			types = append(types, evs[i].Type)
		}
	}
	want := []string{EventDeviceRegistered, EventDeviceRejected, EventDeviceApproved, EventEnrollmentFinish, EventDeviceRevoked}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", types, want)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestActivateDeviceSupersedes(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fp := randomFP(t)
	d, err := s.RegisterDevice(ctx, fp, map[string]string{"site": "lab"}, "cli:test")
	if err != nil {
		t.Fatal(err)
	}
	first := journal(t, s, ca.KindDevice, d.ID)
	act := Activation{
		Device: &Device{
			EKFingerprint: fp, EKPublic: []byte("ek"), AKPublic: []byte("ak1"),
			Facts:  map[string]string{"hostname": "h1"},
			PCRs:   []PCRValue{{Index: 7, Alg: "sha256", Digest: make([]byte, 32)}},
			Labels: map[string]string{"os": "debian"},
		},
		Serial: first, Actor: "enroll", Peer: "127.0.0.1:5000",
	}
	got, err := s.ActivateDevice(ctx, act)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != d.ID || got.State != StateActive || got.CurrentSerial != first || got.EnrolledAt.IsZero() ||
		got.Labels["site"] != "lab" || got.Labels["os"] != "debian" || len(got.PCRs) != 1 || got.PCRsAt.IsZero() ||
		string(got.AKPublic) != "ak1" {
		t.Fatalf("activated %+v", got)
	}

	// The same serial cannot be activated twice.
	if _, err := s.ActivateDevice(ctx, act); !errors.Is(err, ErrConflict) {
		t.Fatalf("re-activating the same serial: %v", err)
	}

	// Re-enrollment: same EK, new AK and certificate; same ID, old cert superseded.
	second := journal(t, s, ca.KindDevice, d.ID)
	act.Serial = second
	act.Device.AKPublic = []byte("ak2")
	got, err = s.ActivateDevice(ctx, act)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != d.ID || got.CurrentSerial != second || string(got.AKPublic) != "ak2" {
		t.Fatalf("re-enrolled %+v", got)
	}
	certs, err := s.ListCertificates(ctx, d.ID)
	if err != nil || len(certs) != 2 {
		t.Fatalf("ListCertificates: %v %d", err, len(certs))
	}
	status := map[string]CertStatus{}
	for _, c := range certs {
		status[c.Serial] = c.Status
	}
	if status[first] != CertSuperseded || status[second] != CertActive {
		t.Fatalf("statuses %v", status)
	}

	// Wrong certificate: another device's, a server certificate, unknown.
	other := journal(t, s, ca.KindDevice, deviceID(t, randomFP(t)))
	server := journal(t, s, ca.KindServer, "")
	for name, serial := range map[string]string{"other device": other, "server": server} {
		act.Serial = serial
		if _, err := s.ActivateDevice(ctx, act); !errors.Is(err, ErrConflict) {
			t.Errorf("%s certificate: %v", name, err)
		}
	}
	act.Serial = "abcdef"
	if _, err := s.ActivateDevice(ctx, act); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown certificate: %v", err)
	}
	// ID that does not match the fingerprint.
	act.Serial = journal(t, s, ca.KindDevice, d.ID)
	act.Device.ID = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	if _, err := s.ActivateDevice(ctx, act); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("mismatched ID: %v", err)
	}
}

func TestActivateDeviceRefusedStates(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)

	// Unknown device without a token.
	fp := randomFP(t)
	serial := journal(t, s, ca.KindDevice, deviceID(t, fp))
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: serial}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("unknown device without token: %v", err)
	}

	// Pending, rejected, revoked, quarantined.
	pending, _ := s.QueueForApproval(ctx, &Device{EKFingerprint: randomFP(t)})
	rejected, _ := s.QueueForApproval(ctx, &Device{EKFingerprint: randomFP(t)})
	if err := s.RejectDevice(ctx, rejected.ID, "t", "no"); err != nil {
		t.Fatal(err)
	}
	revoked, _ := s.RegisterDevice(ctx, randomFP(t), nil, "t")
	if err := s.RevokeDevice(ctx, revoked.ID, "t", "gone"); err != nil {
		t.Fatal(err)
	}
	quarantined, _ := s.RegisterDevice(ctx, randomFP(t), nil, "t")
	if _, err := s.w.Exec(`UPDATE devices SET state = 'quarantined' WHERE id = ?`, quarantined.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Device{pending, rejected, revoked, quarantined} {
		// Even with a valid token.
		_, tok, err := s.CreateToken(ctx, TokenParams{TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		serial := journal(t, s, ca.KindDevice, d.ID)
		before, _ := s.GetDevice(ctx, d.ID)
		_, err = s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: d.EKFingerprint}, Serial: serial, TokenID: tok.ID})
		if !errors.Is(err, ErrInvalidState) {
			t.Errorf("activate %s device: %v", before.State, err)
		}
		after, _ := s.GetDevice(ctx, d.ID)
		if after.State != before.State {
			t.Errorf("state changed %s -> %s", before.State, after.State)
		}
		if got, _ := s.GetToken(ctx, tok.ID); got.Status != TokenValid {
			t.Errorf("token consumed by a refused activation: %s", got.Status)
		}
	}
}

func TestTokenLifecycle(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s, _ := openTest(t, WithClock(clock.Now))

	secret, tok, err := s.CreateToken(ctx, TokenParams{TTL: time.Hour, Labels: map[string]string{"team": "ops"}, Actor: "cli:alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) < len(TokenPrefix)+26 || secret[:4] != TokenPrefix {
		t.Fatalf("secret %q", secret)
	}
	sum := sha256.Sum256([]byte(secret))
	var stored []byte
	if err := s.r.QueryRow(`SELECT secret_hash FROM enrollment_tokens WHERE id = ?`, tok.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !bytesEqual(stored, sum[:]) {
		t.Fatal("stored hash is not SHA-256 of the secret")
	}
	var leaked int
	s.r.QueryRow(`SELECT count(*) FROM enrollment_tokens WHERE instr(CAST(secret_hash AS TEXT), ?) > 0 OR labels LIKE ?`, secret, "%"+secret+"%").Scan(&leaked)
	if leaked != 0 {
		t.Fatal("secret stored in clear")
	}

	fp := randomFP(t)
	got, err := s.CheckToken(ctx, secret, fp, clock.Now())
	if err != nil || got.ID != tok.ID || got.Labels["team"] != "ops" {
		t.Fatalf("CheckToken: %v %+v", err, got)
	}
	wrong := []byte(secret)
	wrong[len(wrong)-1] ^= 1 // still lowercase base32, another secret
	if _, err := s.CheckToken(ctx, string(wrong), fp, clock.Now()); !errors.Is(err, ErrTokenNotFound) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := s.CheckToken(ctx, "hello", fp, clock.Now()); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("malformed secret: %v", err)
	}
	if _, err := s.CheckToken(ctx, secret, fp, clock.Now().Add(time.Hour)); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}

	// Consume it through an enrollment of an unknown device.
	id := deviceID(t, fp)
	serial := journal(t, s, ca.KindDevice, id)
	d, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: serial, TokenID: tok.ID, Actor: "enroll"})
	if err != nil {
		t.Fatal(err)
	}
	if d.State != StateActive || d.Labels["team"] != "ops" {
		t.Fatalf("token-admitted device %+v", d)
	}
	if _, err := s.CheckToken(ctx, secret, fp, clock.Now()); !errors.Is(err, ErrTokenUsed) || !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("used: %v", err)
	}
	used, _ := s.GetToken(ctx, tok.ID)
	if used.Status != TokenUsed || used.UsedBy != id {
		t.Fatalf("used token %+v", used)
	}
	if err := s.RevokeToken(ctx, tok.ID, "cli:alice"); !errors.Is(err, ErrConflict) {
		t.Fatalf("revoke used token: %v", err)
	}

	// Bound token.
	boundFP := randomFP(t)
	bsecret, btok, err := s.CreateToken(ctx, TokenParams{EKFingerprint: boundFP, Actor: "cli:alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !btok.ExpiresAt.Equal(clock.Now().Add(DefaultTokenTTL)) {
		t.Fatalf("default TTL: expires %v", btok.ExpiresAt)
	}
	if _, err := s.CheckToken(ctx, bsecret, randomFP(t), clock.Now()); !errors.Is(err, ErrTokenWrongEK) {
		t.Fatalf("wrong EK: %v", err)
	}
	if _, err := s.CheckToken(ctx, bsecret, boundFP, clock.Now()); err != nil {
		t.Fatalf("bound EK: %v", err)
	}
	otherFP := randomFP(t)
	_, err = s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: otherFP},
		Serial: journal(t, s, ca.KindDevice, deviceID(t, otherFP)), TokenID: btok.ID})
	if !errors.Is(err, ErrTokenWrongEK) {
		t.Fatalf("activate with token bound elsewhere: %v", err)
	}

	// Revoked token.
	rsecret, rtok, _ := s.CreateToken(ctx, TokenParams{TTL: time.Hour})
	if err := s.RevokeToken(ctx, rtok.ID, "cli:alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken(ctx, rtok.ID, "cli:alice"); !errors.Is(err, ErrConflict) {
		t.Fatalf("revoke twice: %v", err)
	}
	if err := s.RevokeToken(ctx, "000000000000", "cli:alice"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	if _, err := s.CheckToken(ctx, rsecret, fp, clock.Now()); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("revoked: %v", err)
	}

	// Expired token cannot be consumed.
	_, etok, _ := s.CreateToken(ctx, TokenParams{TTL: time.Minute})
	clock.Advance(2 * time.Minute)
	efp := randomFP(t)
	_, err = s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: efp},
		Serial: journal(t, s, ca.KindDevice, deviceID(t, efp)), TokenID: etok.ID})
	if !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("activate with expired token: %v", err)
	}
	if _, err := s.GetDeviceByEK(ctx, efp); !errors.Is(err, ErrNotFound) {
		t.Fatalf("device created despite expired token: %v", err)
	}

	if _, _, err := s.CreateToken(ctx, TokenParams{TTL: -time.Hour}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative TTL: %v", err)
	}
	if _, _, err := s.CreateToken(ctx, TokenParams{EKFingerprint: "zz"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad bound fingerprint: %v", err)
	}

	list, err := s.ListTokens(ctx)
	if err != nil || len(list) != 4 {
		t.Fatalf("ListTokens: %v %d", err, len(list))
	}
	statuses := map[TokenStatus]int{}
	for _, tk := range list {
		statuses[tk.Status]++
	}
	if statuses[TokenUsed] != 1 || statuses[TokenRevoked] != 1 || statuses[TokenExpired] != 1 || statuses[TokenValid] != 1 {
		t.Fatalf("token statuses %v", statuses)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

func bytesEqual(a, b []byte) bool { return hex.EncodeToString(a) == hex.EncodeToString(b) }

// TestTokenConcurrentConsumption races N enrollments of distinct devices,
// through distinct Store handles (as separate processes would), for one
// token: exactly one wins, the others get ErrTokenUsed and leave no device.
func TestTokenConcurrentConsumption(t *testing.T) {
	ctx := context.Background()
	s, p := openTest(t)
	_, tok, err := s.CreateToken(ctx, TokenParams{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	handles := []*Store{s}
	for range 3 {
		h, err := Open(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		handles = append(handles, h)
	}
	type attempt struct {
		fp, serial string
	}
	attempts := make([]attempt, n)
	for i := range attempts {
		fp := randomFP(t)
		attempts[i] = attempt{fp, journal(t, s, ca.KindDevice, deviceID(t, fp))}
	}
	var wins, used atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, a := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := handles[i%len(handles)].ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: a.fp}, Serial: a.serial, TokenID: tok.ID})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, ErrTokenUsed):
				used.Add(1)
			default:
				t.Errorf("attempt %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || used.Load() != n-1 {
		t.Fatalf("%d won, %d saw used; want 1 and %d", wins.Load(), used.Load(), n-1)
	}
	if got := countRows(t, s, "devices"); got != 1 {
		t.Fatalf("%d devices, want 1", got)
	}
	evs, _ := s.ListEvents(ctx, EventFilter{Type: EventEnrollmentFinish})
	if len(evs) != 1 {
		t.Fatalf("%d enrollment.finish events, want 1", len(evs))
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentWriters mixes many writers on several handles: no
// SQLITE_BUSY, and the audit chain stays linear.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s, p := openTest(t)
	other, err := Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var wg sync.WaitGroup
	const per = 20
	for g := range 8 {
		h := s
		if g%2 == 1 {
			h = other
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				fp := randomFP(t)
				id := deviceID(t, fp)
				var err error
				switch g % 4 {
				case 0:
					_, err = h.RegisterDevice(ctx, fp, nil, "t")
				case 1:
					_, _, err = h.CreateToken(ctx, TokenParams{})
				case 2:
					err = h.RecordEvent(ctx, Event{Type: EventEnrollmentBegin, DeviceID: id, Outcome: OutcomeInfo})
				case 3:
					err = h.RecordIssuance(ctx, ca.IssuanceRecord{Serial: randomSerial(t), Kind: ca.KindDevice, DeviceID: id,
						Subject: "s", NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DER: []byte{1}})
				}
				if err != nil {
					t.Errorf("writer %d: %v", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := countRows(t, s, "events"); n != 8*per {
		t.Fatalf("%d events, want %d", n, 8*per)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAuditChainTamperDetection(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fp := randomFP(t)
	d, _ := s.RegisterDevice(ctx, fp, nil, "cli:test")
	for i := range 5 {
		if err := s.RecordEvent(ctx, Event{Type: EventEnrollmentRefused, DeviceID: d.ID, Outcome: OutcomeRefused,
			Code: "PermissionDenied", Reason: fmt.Sprintf("attempt %d", i), Details: map[string]string{"n": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordEvent(ctx, Event{Type: "x", Outcome: "maybe"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad outcome: %v", err)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatalf("untampered chain: %v", err)
	}
	headSeq, head, err := s.AuditHead(ctx)
	if err != nil || headSeq != 6 || len(head) != 32 {
		t.Fatalf("AuditHead: %d %x %v", headSeq, head, err)
	}

	tampers := []struct {
		name, sql string
	}{
		{"reason edited", `UPDATE events SET reason = 'nothing happened' WHERE seq = 3`},
		{"details edited", `UPDATE events SET details = '{"n":"9"}' WHERE seq = 4`},
		{"time edited", `UPDATE events SET at = at + 1 WHERE seq = 2`},
		{"row deleted", `DELETE FROM events WHERE seq = 3`},
		{"first row deleted", `DELETE FROM events WHERE seq = 1`},
		{"outcome edited", `UPDATE events SET outcome = 'accepted' WHERE seq = 6`},
		{"row inserted", `INSERT INTO events (seq, at, type, outcome, prev_hash, hash) VALUES (7, 0, 'x', 'info', zeroblob(32), zeroblob(32))`},
	}
	for _, tc := range tampers {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := s.w.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.Exec(tc.sql); err != nil {
				t.Fatal(err)
			}
			// Verify inside the tampering transaction's view by reading
			// through the same connection.
			if err := verifyWith(ctx, tx); !errors.Is(err, ErrAuditChain) {
				t.Fatalf("tampering not detected: %v", err)
			}
		})
	}
	// Committed tampering is detected by the public method too.
	if _, err := s.w.Exec(`UPDATE events SET actor = 'someone else' WHERE seq = 1`); err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyAuditChain(ctx); !errors.Is(err, ErrAuditChain) {
		t.Fatalf("committed tampering not detected: %v", err)
	}
}

// verifyWith runs the chain check over q (a transaction that holds
// uncommitted tampering).
func verifyWith(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT `+eventColumns+` FROM events ORDER BY seq`)
	if err != nil {
		return err
	}
	defer rows.Close()
	prev := make([]byte, 32)
	var want int64 = 1
	for rows.Next() {
		e, details, err := scanEvent(rows)
		if err != nil {
			return err
		}
		if e.Seq != want || !bytesEqual(e.PrevHash, prev) || !bytesEqual(eventHash(prev, e.Seq, e.At.UnixMicro(), e, details), e.Hash) {
			return fmt.Errorf("%w at %d", ErrAuditChain, e.Seq)
		}
		prev = e.Hash
		want++
	}
	return rows.Err()
}

// TestFailedTransactionLeavesNothing aborts ActivateDevice and RevokeDevice
// at late points of their transactions: token, device, certificates and
// events are exactly as before.
func TestFailedTransactionLeavesNothing(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fp := randomFP(t)
	d, _ := s.RegisterDevice(ctx, fp, nil, "t")
	first := journal(t, s, ca.KindDevice, d.ID)
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: first}); err != nil {
		t.Fatal(err)
	}
	_, tok, _ := s.CreateToken(ctx, TokenParams{TTL: time.Hour})
	second := journal(t, s, ca.KindDevice, d.ID)

	snapshot := func() string {
		var b []byte
		for _, q := range []string{
			`SELECT group_concat(id || state || coalesce(current_serial,'') || updated_at || coalesce(ak_public,''), ',') FROM devices`,
			`SELECT group_concat(serial || status, ',') FROM certificates`,
			`SELECT group_concat(id || coalesce(used_at,'-') || coalesce(revoked_at,'-'), ',') FROM enrollment_tokens`,
			`SELECT count(*) || max(seq) FROM events`,
		} {
			var v sql.NullString
			if err := s.r.QueryRow(q).Scan(&v); err != nil {
				t.Fatal(err)
			}
			b = append(b, v.String...)
			b = append(b, '|')
		}
		return string(b)
	}
	before := snapshot()
	boom := errors.New("injected failure")
	for _, stage := range []string{"activate:token-consumed", "activate:before-event"} {
		s.hook = func(got string) error {
			if got == stage {
				return boom
			}
			return nil
		}
		_, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp, AKPublic: []byte("new")}, Serial: second, TokenID: tok.ID})
		if !errors.Is(err, boom) {
			t.Fatalf("%s: %v", stage, err)
		}
		if after := snapshot(); after != before {
			t.Fatalf("failure at %s left changes:\nbefore %s\nafter  %s", stage, before, after)
		}
	}
	s.hook = func(got string) error {
		if got == "revoke:before-event" {
			return boom
		}
		return nil
	}
	if err := s.RevokeDevice(ctx, d.ID, "t", "x"); !errors.Is(err, boom) {
		t.Fatalf("revoke: %v", err)
	}
	if after := snapshot(); after != before {
		t.Fatalf("failed revoke left changes:\nbefore %s\nafter  %s", before, after)
	}
	s.hook = nil

	// A cancelled context aborts too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.ActivateDevice(cctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: second, TokenID: tok.ID}); err == nil {
		t.Fatal("activation with a cancelled context succeeded")
	}
	if after := snapshot(); after != before {
		t.Fatalf("cancelled activation left changes")
	}
	// And the store still works afterwards.
	if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: second, TokenID: tok.ID}); err != nil {
		t.Fatalf("activation after failures: %v", err)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRecordIssuance measures committed journal writes per second
// (synchronous=FULL) from parallel issuers; concurrent records share a
// commit, so throughput grows with the number of issuers in flight.
func BenchmarkRecordIssuance(b *testing.B) {
	for _, par := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("parallelism=%d", par), func(b *testing.B) {
			s, _ := openTest(b)
			ctx := context.Background()
			der := make([]byte, 700) // about the size of a P-256 device certificate
			rand.Read(der)
			now := time.Now()
			b.SetParallelism(par)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					rec := ca.IssuanceRecord{Serial: randomSerial(b), Kind: ca.KindDevice, DeviceID: "abc",
						Subject: "spiffe://rootgate.local/device/abc", NotBefore: now, NotAfter: now.Add(24 * time.Hour), DER: der}
					if err := s.RecordIssuance(ctx, rec); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// TestRecordIssuanceGroupCommit races many issuers, some with the same
// serial: every distinct serial is journaled once, exactly one caller per
// serial succeeds, and a failed commit fails every record of its batch.
func TestRecordIssuanceGroupCommit(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	const serials, dup = 50, 3
	var ok, conflict atomic.Int32
	var wg sync.WaitGroup
	for i := range serials {
		serial := randomSerial(t)
		for range dup {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := s.RecordIssuance(ctx, ca.IssuanceRecord{Serial: serial, Kind: ca.KindServer, Subject: fmt.Sprint(i),
					NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DER: []byte{1}})
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrConflict):
					conflict.Add(1)
				default:
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	if ok.Load() != serials || conflict.Load() != serials*(dup-1) {
		t.Fatalf("%d ok, %d conflicts; want %d and %d", ok.Load(), conflict.Load(), serials, serials*(dup-1))
	}
	if n := countRows(t, s, "certificates"); n != serials {
		t.Fatalf("%d certificates, want %d", n, serials)
	}
	if n := countRows(t, s, "events"); n != serials {
		t.Fatalf("%d events, want %d", n, serials)
	}

	boom := errors.New("disk on fire")
	s.hook = func(stage string) error {
		if stage == "journal:before-commit" {
			return boom
		}
		return nil
	}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.RecordIssuance(ctx, ca.IssuanceRecord{Serial: randomSerial(t), Kind: ca.KindServer, Subject: "x",
				NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DER: []byte{1}})
			if !errors.Is(err, boom) {
				t.Errorf("record in a failed commit returned %v", err)
			}
		}()
	}
	wg.Wait()
	s.hook = nil
	if n := countRows(t, s, "certificates"); n != serials {
		t.Fatalf("failed commit left %d certificates, want %d", n, serials)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.RecordIssuance(ctx, ca.IssuanceRecord{Serial: "abc", Kind: ca.KindServer, Subject: "x",
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DER: []byte{1}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
