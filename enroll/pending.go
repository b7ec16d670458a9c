package enroll

import (
	"crypto"
	"errors"
	"sync"
	"time"

	"github.com/rootgate/rootgate/inventory"
)

// Errors of the pending-challenge table; statusFor maps them.
var (
	errPendingFull      = errors.New("too many enrollments in progress; retry later")
	errChallengeUnknown = errors.New("enrollment_id unknown or already used; call BeginEnrollment again")
	errChallengeExpired = errors.New("challenge expired; call BeginEnrollment again")
)

// pending is an issued challenge waiting for FinishEnrollment.
type pending struct {
	expires       time.Time
	deviceID      string
	ekFingerprint string
	ekPublic      crypto.PublicKey
	ekPublicDER   []byte
	ekCertificate []byte
	akPublic      []byte
	secret        []byte
	nonce         []byte
	tokenID       string
	token         string // the secret of tokenID, checked again at Finish
	facts         map[string]string
	reenroll      bool
	peer          string
}

// pendingTable holds outstanding challenges, at most max of them. Entries
// are taken (removed) by Finish, so each is usable once; expired entries are
// swept on every add in insertion order, which is expiry order because the
// TTL is fixed.
type pendingTable struct {
	max int

	mu    sync.Mutex
	m     map[string]*pending
	queue []queued // insertion order; may name entries already taken
}

type queued struct {
	id      string
	expires time.Time
}

func newPendingTable(max int) *pendingTable {
	return &pendingTable{max: max, m: make(map[string]*pending)}
}

// add stores p under id unless the table is full after sweeping expired
// entries, in which case it returns errPendingFull.
func (t *pendingTable) add(id string, p *pending, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(now)
	if len(t.m) >= t.max {
		return errPendingFull
	}
	t.m[id] = p
	t.queue = append(t.queue, queued{id: id, expires: p.expires})
	return nil
}

// full reports whether add would refuse now; a cheap early check.
func (t *pendingTable) full(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(now)
	return len(t.m) >= t.max
}

// take removes and returns the entry for id. It returns errChallengeUnknown
// if there is none (never issued, already taken or swept) and
// errChallengeExpired if it has expired; either way the entry is gone.
func (t *pendingTable) take(id string, now time.Time) (*pending, error) {
	t.mu.Lock()
	p, ok := t.m[id]
	delete(t.m, id)
	t.mu.Unlock()
	if !ok {
		return nil, errChallengeUnknown
	}
	if !now.Before(p.expires) {
		return nil, errChallengeExpired
	}
	return p, nil
}

// len returns the number of entries held, expired ones included until swept.
func (t *pendingTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *pendingTable) sweepLocked(now time.Time) {
	n := 0
	for n < len(t.queue) && !now.Before(t.queue[n].expires) {
		q := t.queue[n]
		if p, ok := t.m[q.id]; ok && !now.Before(p.expires) {
			delete(t.m, q.id)
		}
		t.queue[n] = queued{}
		n++
	}
	t.queue = t.queue[n:]
	if len(t.queue) == 0 {
		t.queue = nil
	}
}

// deviceFromPending builds the device row that ActivateDevice stores.
func deviceFromPending(p *pending, pcrs []inventory.PCRValue, now time.Time) *inventory.Device {
	return &inventory.Device{
		ID:            p.deviceID,
		EKFingerprint: p.ekFingerprint,
		EKPublic:      p.ekPublicDER,
		EKCertificate: p.ekCertificate,
		AKPublic:      p.akPublic,
		State:         inventory.StateActive,
		Facts:         p.facts,
		PCRs:          pcrs,
		PCRsAt:        now,
	}
}
