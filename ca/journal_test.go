package ca

import (
	"context"
	"crypto/elliptic"
	"errors"
	"sync"
	"testing"
	"time"
)

// batchJournal is a BatchJournal whose commits take a while, so that
// concurrent issuances pile up behind them.
type batchJournal struct {
	memJournal
	delay   time.Duration
	batches []int
	// refuse makes any commit (single or batch) holding this device fail.
	refuse string
}

func (j *batchJournal) RecordIssuance(ctx context.Context, rec IssuanceRecord) error {
	time.Sleep(j.delay)
	if rec.DeviceID == j.refuse {
		return errJournalDown
	}
	j.mu.Lock()
	j.batches = append(j.batches, 1)
	j.mu.Unlock()
	return j.memJournal.RecordIssuance(ctx, rec)
}

func (j *batchJournal) RecordIssuances(ctx context.Context, recs []IssuanceRecord) error {
	time.Sleep(j.delay)
	for _, r := range recs {
		if r.DeviceID == j.refuse {
			return errJournalDown
		}
	}
	j.mu.Lock()
	j.batches = append(j.batches, len(recs))
	j.recs = append(j.recs, recs...)
	j.mu.Unlock()
	return nil
}

func TestGroupCommit(t *testing.T) {
	root := newTestCA(t, Config{}, InitOptions{})
	j := &batchJournal{delay: 20 * time.Millisecond, refuse: "bad"}
	is, err := New(root.key, root.issuer.Chain(), j, Config{TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	pub := newECKey(t, elliptic.P256()).Public()
	const n = 24
	run := func(bad int) ([]*Issued, []error) {
		var wg sync.WaitGroup
		errs := make([]error, n)
		issued := make([]*Issued, n)
		for k := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := "good"
				if k == bad {
					id = "bad"
				}
				issued[k], errs[k] = is.IssueDevice(context.Background(), DeviceRequest{PublicKey: pub, DeviceID: id})
			}()
		}
		wg.Wait()
		return issued, errs
	}

	// All good: fewer commits than records, every certificate journaled.
	issued, errs := run(-1)
	for k := range n {
		if errs[k] != nil {
			t.Fatalf("issuance %d: %v", k, errs[k])
		}
	}
	j.mu.Lock()
	commits := len(j.batches)
	j.mu.Unlock()
	t.Logf("%d records in %d commits: %v", n, commits, j.batches)
	if commits >= n {
		t.Errorf("%d commits for %d records: no batching", commits, n)
	}
	checkJournaled(t, j, issued)

	// One bad record fails alone; its batch mates are committed.
	issued, errs = run(7)
	for k := range n {
		switch {
		case k == 7 && (issued[k] != nil || !errors.Is(errs[k], ErrJournal)):
			t.Errorf("refused record: %v, %v; want no certificate and ErrJournal", issued[k], errs[k])
		case k != 7 && errs[k] != nil:
			t.Errorf("issuance %d: %v", k, errs[k])
		}
	}
	if got := len(j.records()); got != 2*n-1 {
		t.Errorf("%d records journaled, want %d", got, 2*n-1)
	}
	checkJournaled(t, j, issued)
}

// checkJournaled fails if a returned certificate is missing from j.
func checkJournaled(t *testing.T, j *batchJournal, issued []*Issued) {
	t.Helper()
	serials := map[string]bool{}
	for _, r := range j.records() {
		serials[r.Serial] = true
	}
	for k, got := range issued {
		if got != nil && !serials[got.Certificate.SerialNumber.Text(16)] {
			t.Errorf("certificate %d returned but not journaled", k)
		}
	}
}
