package inventory

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
)

const crashChildEnv = "ROOTGATE_INVENTORY_CRASH_CHILD"

// TestCrashKeepsAcknowledgedRecords runs a writer in a child process,
// kills it with SIGKILL mid-stream, and checks that every record the child
// saw acknowledged is in the reopened database, which is consistent
// (integrity check, audit chain, no half-written activation).
func TestCrashKeepsAcknowledgedRecords(t *testing.T) {
	if p := os.Getenv(crashChildEnv); p != "" {
		crashChild(p)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dbPath := filepath.Join(t.TempDir(), "rootgate.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKeepsAcknowledgedRecords$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dbPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(20 * time.Second)
	for sc.Scan() {
		acked[sc.Text()] = true
		if len(acked) >= 300 || time.Now().After(deadline) {
			break
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(acked) < 10 {
		t.Fatalf("child acknowledged only %d records", len(acked))
	}

	ctx := context.Background()
	s, err := Open(ctx, dbPath)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s.Close()
	var integrity string
	if err := s.r.QueryRow(`PRAGMA integrity_check`).Scan(&integrity); err != nil || integrity != "ok" {
		t.Fatalf("integrity_check: %q %v", integrity, err)
	}
	for line := range acked {
		var kind, serial string
		fmt.Sscanf(line, "%s %s", &kind, &serial)
		switch kind {
		case "cert":
			if _, err := s.GetCertificate(ctx, serial); err != nil {
				t.Errorf("acknowledged certificate %s lost: %v", serial, err)
			}
		case "active":
			d, err := s.GetDevice(ctx, serial)
			if err != nil || d.State != StateActive {
				t.Errorf("acknowledged activation of %s lost: %v", serial, err)
			}
		}
	}
	// No half-written activation: every active device's current certificate
	// is active, and it has its enrollment.finish event.
	devs, err := s.ListDevices(ctx, DeviceFilter{State: StateActive})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		c, err := s.GetCertificate(ctx, d.CurrentSerial)
		if err != nil || c.Status != CertActive {
			t.Errorf("device %s current certificate %s: %v %+v", d.ID, d.CurrentSerial, err, c)
		}
		evs, _ := s.ListEvents(ctx, EventFilter{DeviceID: d.ID, Type: EventEnrollmentFinish})
		if len(evs) != 1 {
			t.Errorf("device %s has %d enrollment.finish events", d.ID, len(evs))
		}
	}
	if err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

// crashChild writes until killed, printing each acknowledged write.
func crashChild(dbPath string) {
	ctx := context.Background()
	s, err := Open(ctx, dbPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	say := func(f string, a ...any) {
		mu.Lock()
		fmt.Printf(f+"\n", a...)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				fp := randomFP(nil)
				id, _, _ := DeviceIDFromFingerprint(fp)
				serial := randomSerial(nil)
				now := time.Now()
				if err := s.RecordIssuance(ctx, ca.IssuanceRecord{Serial: serial, Kind: ca.KindDevice, DeviceID: id,
					Subject: "s", NotBefore: now, NotAfter: now.Add(time.Hour), DER: []byte{1, 2, 3}}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				say("cert %s", serial)
				if g%2 == 0 {
					continue
				}
				if _, err := s.RegisterDevice(ctx, fp, nil, "crash"); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				if _, err := s.ActivateDevice(ctx, Activation{Device: &Device{EKFingerprint: fp}, Serial: serial}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				say("active %s", id)
			}
		}()
	}
	wg.Wait()
}
