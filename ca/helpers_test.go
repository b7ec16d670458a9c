package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"
)

// memJournal is an in-memory Journal; fail makes RecordIssuance fail.
type memJournal struct {
	mu   sync.Mutex
	recs []IssuanceRecord
	fail error
}

func (j *memJournal) RecordIssuance(ctx context.Context, rec IssuanceRecord) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fail != nil {
		return j.fail
	}
	j.recs = append(j.recs, rec)
	return nil
}

func (j *memJournal) records() []IssuanceRecord {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]IssuanceRecord(nil), j.recs...)
}

var errJournalDown = errors.New("journal down")

func newECKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testCA is a self-signed root made by Init with an in-memory key.
type testCA struct {
	key     crypto.Signer
	cert    *x509.Certificate
	journal *memJournal
	issuer  *Issuer
}

func newTestCA(t testing.TB, cfg Config, opts InitOptions) *testCA {
	t.Helper()
	key := newECKey(t, elliptic.P256())
	res, err := Init(context.Background(), key, opts)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "example.org"
	}
	j := &memJournal{}
	is, err := New(key, []*x509.Certificate{res.Certificate}, j, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &testCA{key: key, cert: res.Certificate, journal: j, issuer: is}
}

func fixedNow(t time.Time) func() time.Time { return func() time.Time { return t } }
