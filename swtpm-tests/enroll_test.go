package swtpmtests

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

// TestTokenModeConcurrentAgents: four TPMs enroll at once with the agent
// binary, each with its own one-time token; every certificate passes
// openssl verify, names the device, and certifies the TPM-resident key;
// the inventory shows all four active; a spent token is refused.
func TestTokenModeConcurrentAgents(t *testing.T) {
	t.Parallel()
	const n = 4
	f := newFleet(t, n+1, testenv.ServerOptions{Mode: "token"})
	sws := make([]*testenv.Swtpm, n+1)
	states := make([]string, n+1)
	tokens := make([]string, n)
	for i := range sws {
		sws[i] = testenv.StartSwtpm(t, f.tpms[i])
		states[i] = filepath.Join(t.TempDir(), "agent")
	}
	for i := range tokens {
		args := []string{"--ttl", "10m"}
		if i == 0 { // one token bound to its device's EK
			args = append(args, "--ek-fingerprint", fingerprint(t, f.tpms[0]))
		}
		tokens[i], _ = token(t, f.srv, args...)
	}

	results := make([]agentResult, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = enroll(t, f.srv, sws[i], states[i], "--token-file", tokenFile(t, tokens[i]))
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	seen := map[string]bool{}
	for i, r := range results {
		if want := deviceIDOf(t, f.tpms[i]); r.DeviceID != want {
			t.Errorf("device %d: ID %s, want %s (derived from the EK)", i, r.DeviceID, want)
		}
		seen[r.DeviceID] = true
		if r.SPIFFEID != "spiffe://e2e.rootgate.test/device/"+r.DeviceID {
			t.Errorf("device %d: SPIFFE ID %s", i, r.SPIFFEID)
		}
		certPath := filepath.Join(states[i], "cert.pem")
		out, err := exec.Command("openssl", "verify", "-purpose", "sslclient", "-CAfile", f.srv.CABundle, certPath).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("device %d: openssl verify: %v\n%s", i, err, out)
		}
		text, err := exec.Command("openssl", "x509", "-in", certPath, "-noout", "-text").CombinedOutput()
		if err != nil || !strings.Contains(string(text), "URI:"+r.SPIFFEID) || !strings.Contains(string(text), "TLS Web Client Authentication") {
			t.Errorf("device %d: certificate lacks the SPIFFE URI SAN or clientAuth:\n%s", i, text)
		}
		// The certified key is the one in the TPM: load the agent's
		// TPM-wrapped blob into the TPM and compare public keys.
		cert := readCert(t, certPath)
		blob, err := os.ReadFile(filepath.Join(states[i], "key.blob"))
		if err != nil {
			t.Fatal(err)
		}
		tpm := sws[i].OpenTPM(t)
		key, err := tpm.LoadKey(blob)
		if err != nil {
			t.Fatalf("device %d: load key blob into the TPM: %v", i, err)
		}
		if !samePublicKey(cert.PublicKey, key.Public()) {
			t.Errorf("device %d: certificate key is not the TPM-resident key", i)
		}
		key.Close()
		tpm.Close()
		for _, name := range []string{"key.blob", "ak.blob", "cert.pem", "state.json"} {
			fi, err := os.Stat(filepath.Join(states[i], name))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("device %d: %s: %v mode %v, want 0600", i, name, err, fi.Mode().Perm())
			}
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct device IDs, want %d", len(seen), n)
	}

	ds := listDevices(t, f.srv, "--state", "active")
	if len(ds) != n {
		t.Fatalf("devices list --state active: %d devices, want %d", len(ds), n)
	}
	for _, d := range ds {
		if !seen[d.ID] || d.CurrentSerial == "" {
			t.Errorf("device %s: unexpected or without a certificate: %+v", d.ID, d)
		}
	}

	// A spent token is refused, and the fifth TPM is not created.
	d := db(t, f.srv)
	before := snap(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := f.srv.Enroll(ctx, sws[n], states[n], "--token-file", tokenFile(t, tokens[1]))
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "token") {
		t.Fatalf("enroll with a spent token: %v", err)
	}
	assertRefusedCleanly(t, d, before, 7 /* PermissionDenied */, "spent token")
	if _, err := os.Stat(filepath.Join(states[n], "cert.pem")); !os.IsNotExist(err) {
		t.Errorf("refused agent wrote a certificate: %v", err)
	}

	// Run again: nothing to do, no network.
	again := enroll(t, f.srv, sws[0], states[0])
	if !again.AlreadyEnrolled || again.Serial != results[0].Serial {
		t.Errorf("second run: %+v, want already enrolled with serial %s", again, results[0].Serial)
	}
}

// TestReenrollKeepsIdentity: --force re-enrolls the same TPM without a
// token; the device keeps its ID, gets a new certificate, and the old one
// is superseded in the inventory.
func TestReenrollKeepsIdentity(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 1, testenv.ServerOptions{Mode: "token"})
	sw := testenv.StartSwtpm(t, f.tpms[0])
	state := filepath.Join(t.TempDir(), "agent")
	secret, _ := token(t, f.srv)
	first := enroll(t, f.srv, sw, state, "--token", secret)
	second := enroll(t, f.srv, sw, state, "--force")
	if second.DeviceID != first.DeviceID {
		t.Fatalf("device ID changed on re-enrollment: %s -> %s", first.DeviceID, second.DeviceID)
	}
	if second.Serial == first.Serial || second.AlreadyEnrolled {
		t.Fatalf("re-enrollment did not issue a new certificate: %+v", second)
	}
	show := showDevice(t, f.srv, first.DeviceID)
	if show.Device.CurrentSerial != second.Serial || show.Device.State != inventory.StateActive {
		t.Fatalf("device after re-enrollment: %+v", show.Device)
	}
	status := map[string]inventory.CertStatus{}
	for _, c := range show.Certificates {
		status[c.Serial] = c.Status
	}
	if status[first.Serial] != inventory.CertSuperseded || status[second.Serial] != inventory.CertActive {
		t.Fatalf("certificate statuses %v", status)
	}
}

// TestPreregisteredMode: a device an admin registered by EK fingerprint
// enrolls without a token; an unregistered one is refused, and nothing
// about it is stored but the refusal event.
func TestPreregisteredMode(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2, testenv.ServerOptions{Mode: "preregistered"})
	known, unknown := f.tpms[0], f.tpms[1]
	var reg inventory.Device
	f.srv.AdminJSON(t, &reg, "devices", "register", "--ek-fingerprint", fingerprint(t, known), "--label", "site=lab")
	if reg.State != inventory.StateRegistered || reg.ID != deviceIDOf(t, known) {
		t.Fatalf("registered device: %+v", reg)
	}

	r := enroll(t, f.srv, testenv.StartSwtpm(t, known), filepath.Join(t.TempDir(), "a"))
	if r.DeviceID != reg.ID {
		t.Fatalf("enrolled %s, registered %s", r.DeviceID, reg.ID)
	}
	show := showDevice(t, f.srv, reg.ID)
	if show.Device.State != inventory.StateActive || show.Device.Labels["site"] != "lab" {
		t.Fatalf("device after enrollment: %+v", show.Device)
	}

	d := db(t, f.srv)
	before := snap(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := f.srv.Enroll(ctx, testenv.StartSwtpm(t, unknown), filepath.Join(t.TempDir(), "b"))
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("unregistered device: %v", err)
	}
	assertRefusedCleanly(t, d, before, 7, "unregistered device")
	var fp string
	if err := d.QueryRow(`SELECT ek_fingerprint FROM events WHERE type='enrollment.refused' ORDER BY seq DESC LIMIT 1`).Scan(&fp); err != nil || fp != fingerprint(t, unknown) {
		t.Errorf("refusal event names EK %q (%v), want %s", fp, err, fingerprint(t, unknown))
	}

	// The audit trail as an admin reads it: the refusal with its code, the
	// chain intact; an edit made behind the server's back breaks it.
	var refused []inventory.Event
	f.srv.AdminJSON(t, &refused, "audit", "list", "--type", "enrollment.refused")
	if len(refused) != 1 || refused[0].Code != "PermissionDenied" || refused[0].EKFingerprint != fingerprint(t, unknown) {
		t.Fatalf("audit list --type enrollment.refused: %+v", refused)
	}
	var verdict struct {
		OK     bool  `json:"ok"`
		Events int64 `json:"events"`
	}
	f.srv.AdminJSON(t, &verdict, "audit", "verify")
	if !verdict.OK || verdict.Events < 4 {
		t.Fatalf("audit verify: %+v", verdict)
	}
	rw, err := sql.Open("sqlite", "file:"+filepath.Join(f.srv.DataDir, "rootgate.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if _, err := rw.Exec(`UPDATE events SET reason = 'nothing to see' WHERE type = 'enrollment.refused'`); err != nil {
		t.Fatal(err)
	}
	if out, err := f.srv.Admin("audit", "verify"); err == nil || !strings.Contains(err.Error(), "audit trail broken") {
		t.Fatalf("audit verify after tampering: %v %s", err, out)
	}
}

// TestApprovalMode: an unknown device waits in the queue while the agent
// polls; an admin approves it and the agent finishes. Another device is
// rejected and its agent stops with PermissionDenied.
func TestApprovalMode(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2, testenv.ServerOptions{Mode: "approval"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type outcome struct {
		out []byte
		err error
	}
	start := func(st *testenv.TPMState) <-chan outcome {
		ch := make(chan outcome, 1)
		sw := testenv.StartSwtpm(t, st)
		state := filepath.Join(t.TempDir(), "agent")
		go func() {
			out, err := f.srv.Enroll(ctx, sw, state)
			ch <- outcome{out, err}
		}()
		return ch
	}
	waitPending := func(id string) {
		t.Helper()
		for ctx.Err() == nil {
			for _, d := range listDevices(t, f.srv, "--state", "pending") {
				if d.ID == id {
					return
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("device %s never reached the approval queue", id)
	}

	okID, noID := deviceIDOf(t, f.tpms[0]), deviceIDOf(t, f.tpms[1])
	okDone, noDone := start(f.tpms[0]), start(f.tpms[1])
	waitPending(okID)
	waitPending(noID)
	select {
	case o := <-okDone:
		t.Fatalf("agent finished before approval: %s %v", o.out, o.err)
	default:
	}
	if _, err := f.srv.Admin("devices", "approve", okID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.Admin("devices", "reject", noID, "--reason", "unknown asset"); err != nil {
		t.Fatal(err)
	}

	o := <-okDone
	if o.err != nil {
		t.Fatalf("approved agent: %v", o.err)
	}
	var r agentResult
	if err := json.Unmarshal(o.out, &r); err != nil || r.DeviceID != okID {
		t.Fatalf("approved agent result %s: %v", o.out, err)
	}
	o = <-noDone
	if o.err == nil || !strings.Contains(o.err.Error(), "PermissionDenied") || !strings.Contains(o.err.Error(), "reject") {
		t.Fatalf("rejected agent: %v", o.err)
	}
	if got := showDevice(t, f.srv, noID).Device; got.State != inventory.StateRejected || got.CurrentSerial != "" {
		t.Fatalf("rejected device: %+v", got)
	}
	if got := showDevice(t, f.srv, okID).Device; got.State != inventory.StateActive {
		t.Fatalf("approved device: %+v", got)
	}
}
