//go:build unix

package inventory

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
)

// TestIssuedDetailsJSON checks the hand-written details of a
// certificate.issued event against encodeMap, which the audit chain used
// before and which VerifyAuditChain's hashes cover as stored.
func TestIssuedDetailsJSON(t *testing.T) {
	na := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	for _, rec := range []ca.IssuanceRecord{
		{Serial: "1f", Kind: ca.KindDevice, DeviceID: "abc", Subject: "spiffe://rootgate.local/device/abc", NotAfter: na},
		{Serial: "ab", Kind: ca.KindServer, Subject: "enroll.example.org", NotAfter: na.In(time.FixedZone("x", 3600))},
		{Serial: "ab", Kind: ca.KindServer, Subject: "", NotAfter: na},
		{Serial: "ab", Kind: ca.KindServer, Subject: `a "quoted" \ name`, NotAfter: na},
		{Serial: "ab", Kind: ca.KindServer, Subject: "<script>&amp;", NotAfter: na},
		{Serial: "ab", Kind: ca.KindServer, Subject: "tab\there\nnl\x00\x7f", NotAfter: na},
		{Serial: "ab", Kind: ca.KindServer, Subject: "ünïcödé \u2028 \xff bad utf-8", NotAfter: na},
	} {
		e, got, err := issuedEvent(&rec)
		if err != nil {
			t.Fatal(err)
		}
		want, err := encodeMap(map[string]string{
			"serial": rec.Serial, "kind": rec.Kind, "subject": rec.Subject,
			"not_after": rec.NotAfter.UTC().Format(time.RFC3339),
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("subject %q: details\n got %s\nwant %s", rec.Subject, got, want)
		}
		if e.Type != EventCertificateIssued || e.Outcome != OutcomeInfo || e.DeviceID != rec.DeviceID {
			t.Errorf("event %+v", e)
		}
	}
}

// TestIssuedEventRowMatchesRecordEvent checks that a journal event, written
// with literals for its empty columns, reads back like any other event and
// chains with events written by RecordEvent.
func TestIssuedEventRowMatchesRecordEvent(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if err := s.RecordEvent(ctx, Event{Type: EventTokenCreated, Actor: "admin"}); err != nil {
		t.Fatal(err)
	}
	serial := journal(t, s, ca.KindDevice, "dev1")
	if err := s.RecordEvent(ctx, Event{Type: EventTokenRevoked, Actor: "admin"}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListEvents(ctx, EventFilter{Type: EventCertificateIssued})
	if err != nil || len(evs) != 1 {
		t.Fatalf("%v %d events", err, len(evs))
	}
	e := evs[0]
	if e.Seq != 2 || e.DeviceID != "dev1" || e.Outcome != OutcomeInfo || e.Details["serial"] != serial ||
		e.Details["kind"] != ca.KindDevice || e.EKFingerprint != "" || e.Actor != "" {
		t.Fatalf("journal event %+v", e)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

// holdJournal makes the next group commit wait in its transaction until
// the returned release is called, so that the records sent meanwhile queue
// up and share the following batch. hook, if not nil, sees every stage.
func holdJournal(t *testing.T, s *Store, hook func(string)) (release func()) {
	t.Helper()
	held := make(chan struct{})
	var once sync.Once
	s.hook = func(stage string) error {
		if hook != nil {
			hook(stage)
		}
		if stage == "journal:before-commit" {
			once.Do(func() { <-held })
		}
		return nil
	}
	go func() {
		if err := s.RecordIssuance(context.Background(), testRecord(randomSerial(t), "hold")); err != nil {
			t.Error(err)
		}
	}()
	return func() { close(held) }
}

func testRecord(serial, subject string) ca.IssuanceRecord {
	now := time.Now()
	return ca.IssuanceRecord{Serial: serial, Kind: ca.KindServer, Subject: subject,
		NotBefore: now, NotAfter: now.Add(time.Hour), DER: []byte("der:" + serial)}
}

// TestRecordIssuanceIsolatesBadRecord makes SQLite refuse some records
// (a trigger aborts on their subject, and some serials are duplicates)
// among good ones committed in the same group: the good ones are committed
// with their events, only the bad ones fail, and the chain verifies.
func TestRecordIssuanceIsolatesBadRecord(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if _, err := s.w.ExecContext(ctx, `CREATE TEMP TRIGGER poison BEFORE INSERT ON main.certificates
		WHEN NEW.subject = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned record'); END`); err != nil {
		t.Fatal(err)
	}
	existing := journal(t, s, ca.KindServer, "")
	var isolated atomic.Int32
	release := holdJournal(t, s, func(stage string) {
		if stage == "journal:isolate" {
			isolated.Add(1)
		}
	})

	const good = 40
	type outcome struct {
		subject string
		err     error
	}
	out := make(chan outcome, 2*good)
	var wg sync.WaitGroup
	send := func(rec ca.IssuanceRecord) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out <- outcome{rec.Subject, s.RecordIssuance(ctx, rec)}
		}()
	}
	dup := randomSerial(t)
	for i := range good {
		send(testRecord(randomSerial(t), fmt.Sprint("good-", i)))
		if i%10 == 0 {
			send(testRecord(randomSerial(t), "poison"))
			send(testRecord(existing, "dup-existing"))
		}
	}
	send(testRecord(dup, "dup-in-batch"))
	send(testRecord(dup, "dup-in-batch"))
	time.Sleep(100 * time.Millisecond) // let them queue behind the held commit
	release()
	wg.Wait()
	close(out)
	var dupOK int
	for o := range out {
		switch {
		case strings.HasPrefix(o.subject, "good-"):
			if o.err != nil {
				t.Errorf("%s: %v", o.subject, o.err)
			}
		case o.subject == "poison":
			if o.err == nil || !strings.Contains(o.err.Error(), "poisoned record") {
				t.Errorf("poisoned record: %v", o.err)
			}
		case o.subject == "dup-existing":
			if !errors.Is(o.err, ErrConflict) {
				t.Errorf("duplicate of a journaled serial: %v", o.err)
			}
		case o.subject == "dup-in-batch":
			if o.err == nil {
				dupOK++
			} else if !errors.Is(o.err, ErrConflict) {
				t.Errorf("duplicate serial in a batch: %v", o.err)
			}
		}
	}
	s.hook = nil
	if dupOK != 1 {
		t.Errorf("%d of two records with one serial committed, want 1", dupOK)
	}
	if isolated.Load() == 0 {
		t.Error("the record-by-record path never ran")
	}
	// existing, hold, the good ones and one of the in-batch duplicates.
	want := 1 + 1 + good + 1
	if n := countRows(t, s, "certificates"); n != want {
		t.Errorf("%d certificates, want %d", n, want)
	}
	if n := countRows(t, s, "events"); n != want {
		t.Errorf("%d events, want %d", n, want)
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
	// The happy path still works afterwards.
	journal(t, s, ca.KindServer, "")
}

// TestRecordIssuanceLoneRecordDoesNotLinger checks the group commit
// pacing: one issuer at a time never waits for others (no linger), and
// records that queue up together do share a commit after lingering.
func TestRecordIssuanceLoneRecordDoesNotLinger(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	var lingered atomic.Int32
	s.hook = func(stage string) error {
		if stage == "journal:linger" {
			lingered.Add(1)
		}
		return nil
	}
	for range 5 {
		if err := s.RecordIssuance(ctx, testRecord(randomSerial(t), "lone")); err != nil {
			t.Fatal(err)
		}
	}
	if n := lingered.Load(); n != 0 {
		t.Fatalf("sequential records lingered %d times", n)
	}
	s.hook = nil

	release := holdJournal(t, s, func(stage string) {
		if stage == "journal:linger" {
			lingered.Add(1)
		}
	})
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.RecordIssuance(ctx, testRecord(randomSerial(t), "queued")); err != nil {
				t.Error(err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let them queue behind the held commit
	start := time.Now()
	release()
	wg.Wait()
	s.hook = nil
	if lingered.Load() == 0 {
		t.Error("records that queued together did not linger")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("queued records took %v", d)
	}
	if n := countRows(t, s, "certificates"); n != 5+1+10 {
		t.Errorf("%d certificates, want 16", n)
	}
}

// BenchmarkCommitIssuances measures the CPU one group commit of size
// records costs per record (process CPU time: the transpiled SQLite, the
// database/sql layer, the event hashing, and the kernel's share of the WAL
// writes and fsync), with batches of a fixed size.
func BenchmarkCommitIssuances(b *testing.B) {
	for _, size := range []int{1, 12, 64} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s, _ := openTest(b)
			js := &journalStmts{}
			defer js.close(s.w)
			der := make([]byte, 700) // about the size of a P-256 device certificate
			rand.Read(der)
			now := time.Now()
			batch := make([]*issueReq, size)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0, sys0 := processCPU(), processSys()
			for done := 0; done < b.N; done += size {
				for i := range batch {
					id := randomSerial(b)[:26]
					batch[i] = &issueReq{done: make(chan error, 1), rec: ca.IssuanceRecord{
						Serial: randomSerial(b), Kind: ca.KindDevice, DeviceID: id,
						Subject: "spiffe://rootgate.local/device/" + id, NotBefore: now, NotAfter: now.Add(24 * time.Hour), DER: der}}
				}
				s.commitIssuances(js, batch)
				for _, r := range batch {
					if err := <-r.done; err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/record")
			b.ReportMetric(float64((processSys()-sys0).Microseconds())/float64(b.N), "sys-µs/record")
		})
	}
}

// processCPU returns the user plus system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func processSys() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Stime.Nano())
}
