package ca

import (
	"context"
	"sync"
	"time"
)

// Journal records every certificate the CA issues. An Issuer calls
// RecordIssuance before it hands a certificate out and treats an error as a
// failed issuance: the certificate is discarded and never returned.
// RecordIssuance must return only once the record is durably committed.
//
// *inventory.Store implements Journal; ca never imports inventory.
type Journal interface {
	RecordIssuance(ctx context.Context, rec IssuanceRecord) error
}

// Kinds of issued certificates, as written in IssuanceRecord.Kind.
const (
	KindDevice = "device"
	KindServer = "server"
	KindAdmin  = "admin"
)

// IssuanceRecord describes one issued certificate.
type IssuanceRecord struct {
	// Serial is the certificate serial number in lowercase hexadecimal,
	// without leading zeros or separators (big.Int.Text(16)).
	Serial string
	// Kind is KindDevice, KindServer or KindAdmin.
	Kind string
	// DeviceID is the device the certificate identifies; empty unless Kind
	// is KindDevice.
	DeviceID string
	// Subject is the certificate's subject DN in RFC 2253 form, or for a
	// device its SPIFFE ID.
	Subject string
	// NotBefore and NotAfter are the certificate's validity window.
	NotBefore, NotAfter time.Time
	// DER is the whole certificate.
	DER []byte
}

// BatchJournal is a Journal that can also commit several records in one
// transaction: all of them or none. When an Issuer's journal implements it,
// concurrent issuances share commits (group commit): one durable commit
// then serves every issuance that arrived while the previous commit was in
// flight, instead of one commit each.
type BatchJournal interface {
	Journal
	RecordIssuances(ctx context.Context, recs []IssuanceRecord) error
}

// groupCommitter funnels concurrent RecordIssuance calls into batches. The
// first caller to arrive while no batch is open leads it: it waits for the
// commit in flight to end, closes its batch and commits every record
// gathered meanwhile; the others wait for that commit. No goroutine runs
// in the background.
type groupCommitter struct {
	j BatchJournal

	commitMu sync.Mutex // held while a batch commits

	mu   sync.Mutex
	open *journalBatch // batch accepting records, nil if none
}

type journalBatch struct {
	recs []IssuanceRecord
	errs []error
	done chan struct{}
}

// record returns once rec is durably committed, or with the error that
// prevented it. If ctx ends first it returns ctx's error; the record may
// still be committed with its batch (a journaled certificate that is never
// handed out is harmless; the reverse is what the journal prevents).
func (g *groupCommitter) record(ctx context.Context, rec IssuanceRecord) error {
	g.mu.Lock()
	b, leader := g.open, false
	if b == nil {
		b, leader = &journalBatch{done: make(chan struct{})}, true
		g.open = b
	}
	idx := len(b.recs)
	b.recs = append(b.recs, rec)
	g.mu.Unlock()

	if !leader {
		select {
		case <-b.done:
			return b.errs[idx]
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	g.commitMu.Lock()
	g.mu.Lock()
	g.open = nil // later arrivals start the next batch
	g.mu.Unlock()
	// The batch carries other callers' records: the leader's cancellation
	// must not abort them.
	cctx := context.WithoutCancel(ctx)
	b.errs = make([]error, len(b.recs))
	if len(b.recs) == 1 {
		b.errs[0] = g.j.RecordIssuance(cctx, b.recs[0])
	} else if err := g.j.RecordIssuances(cctx, b.recs); err != nil {
		// All or nothing failed: commit one by one so that one bad record
		// (say, a duplicate serial) fails alone.
		for k := range b.recs {
			b.errs[k] = g.j.RecordIssuance(cctx, b.recs[k])
		}
	}
	g.commitMu.Unlock()
	close(b.done)
	return b.errs[idx]
}
