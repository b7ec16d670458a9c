package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rootgate/rootgate/agent"
	"github.com/rootgate/rootgate/internal/testenv"
)

// agentStatusJSON is `agent status -o json`, decoded strictly.
type agentStatusJSON struct {
	Enrolled  bool             `json:"enrolled"`
	DeviceID  string           `json:"device_id"`
	SPIFFEID  string           `json:"spiffe_id"`
	Serial    string           `json:"serial"`
	Server    string           `json:"server"`
	NotAfter  time.Time        `json:"not_after"`
	Remaining string           `json:"remaining"`
	Expired   bool             `json:"expired"`
	CertPath  string           `json:"cert_path"`
	Reason    string           `json:"reason"`
	Key       *agent.KeyReport `json:"key"`
	KeyError  string           `json:"key_error"`
}

// decodeAny decodes r's standard output as JSON into v, strictly, whatever
// the exit status.
func decodeAny(t *testing.T, r result, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode the JSON of %s: %v", r, err)
	}
}

// exits fails the test unless r exited with code.
func exits(t *testing.T, r result, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit status %d, got %s", code, r)
	}
	return r
}

// TestAgentCLI runs the agent as an operator would, against a real
// `rootgate server` and swtpm devices: enroll while the server is not yet
// reachable (retries, then success), status as a health check (exit 0, 2,
// 3, 4), status --verify-key with the right and the wrong TPM, and a wrong
// --ca-bundle failing fast with a hint.
func TestAgentCLI(t *testing.T) {
	ekca := testenv.NewEKCA(t)
	tpms := ekca.ManufactureN(t, 2)
	srv := testenv.StartServer(t, rootgateBin, testenv.SoftHSM(t), testenv.ServerOptions{EKRoots: ekca.RootsDir(t)})
	sw, sw2 := testenv.StartSwtpm(t, tpms[0]), testenv.StartSwtpm(t, tpms[1])
	var tok struct {
		Secret string `json:"secret"`
	}
	srv.AdminJSON(t, &tok, "tokens", "create", "--ttl", "15m")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")

	// Not enrolled: the status is printed, exit status 2.
	r := exits(t, run(t, nil, nil, "agent", "status", "--state-dir", state), 2)
	if !strings.Contains(r.stdout, "not enrolled ("+state+")") || !strings.Contains(r.stderr, "rootgate: agent: not enrolled") {
		t.Errorf("status before enrolling: %s", r)
	}
	var st agentStatusJSON
	decodeAny(t, exits(t, run(t, nil, nil, "agent", "status", "--state-dir", state, "-o", "json"), 2), &st)
	if st.Enrolled || st.Reason == "" {
		t.Errorf("status -o json before enrolling: %+v", st)
	}

	// The server is not reachable yet: a loopback port with nothing on it,
	// which starts forwarding to the server three seconds later.
	addr := reservePort(t)
	enroll := exec.Command(rootgateBin, "agent", "enroll", "--server", addr, "--server-name", "localhost",
		"--tpm", sw.Device(), "--state-dir", state, "--token-file", tokenFile, "--ca-bundle", srv.CABundle, "--timeout", "1m")
	var stdout, stderr bytes.Buffer
	enroll.Stdout, enroll.Stderr = &stdout, &stderr
	start := time.Now()
	if err := enroll.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- enroll.Wait() }()
	timer := time.AfterFunc(3*time.Second, func() { proxy(t, addr, srv.Addr) })
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent enroll: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
		}
	case <-time.After(45 * time.Second):
		enroll.Process.Kill()
		<-done
		t.Fatalf("agent enroll still running after 45s\nstderr:\n%s", &stderr)
	}
	took := time.Since(start)
	retries := strings.Count(stderr.String(), "unreachable (connection refused), retrying in ")
	if retries < 2 || took < 3*time.Second || !strings.Contains(stdout.String(), "enrolled: device ") {
		t.Fatalf("agent enroll after %s, %d retries:\nstdout:\n%s\nstderr:\n%s", took, retries, &stdout, &stderr)
	}
	t.Logf("enrolled after %s:\n%s%s", took.Round(time.Millisecond), &stderr, &stdout)

	// Enrolled: exit 0.
	r = ok(t, run(t, nil, nil, "agent", "status", "--state-dir", state))
	if !strings.Contains(r.stdout, "device ID") || strings.Contains(r.stdout, "device key") {
		t.Errorf("status: %s", r)
	}

	// --verify-key with the device's TPM.
	r = ok(t, run(t, nil, nil, "agent", "status", "--state-dir", state, "--verify-key", "--tpm", sw.Device()))
	if !strings.Contains(r.stdout, "device key   in the TPM (fixedTPM, fixedParent, sensitiveDataOrigin), matches the certificate, signature verified") {
		t.Errorf("status --verify-key: %s", r)
	}
	st = agentStatusJSON{}
	decodeAny(t, ok(t, run(t, nil, nil, "agent", "status", "--state-dir", state, "--verify-key", "--tpm", sw.Device(), "-o", "json")), &st)
	if k := st.Key; !st.Enrolled || k == nil || !k.Verified || !k.InTPM || !k.MatchesCertificate || !k.SignatureVerified ||
		!k.HasAttribute("fixedTPM") || !k.HasAttribute("sensitiveDataOrigin") || k.Algorithm != "ECC P-256" || st.KeyError != "" {
		t.Errorf("status --verify-key -o json: %+v, key %+v", st, st.Key)
	}

	// --verify-key with another TPM: the status, then exit 4.
	r = exits(t, run(t, nil, nil, "agent", "status", "--state-dir", state, "--verify-key", "--tpm", sw2.Device()), 4)
	if !strings.Contains(r.stdout, "device key   NOT VERIFIED: device key not verified: the TPM "+sw2.Device()+" does not load") ||
		!strings.Contains(r.stderr, "rootgate: agent: device key not verified") {
		t.Errorf("status --verify-key with another TPM: %s", r)
	}
	st = agentStatusJSON{}
	decodeAny(t, exits(t, run(t, nil, nil, "agent", "status", "--state-dir", state, "--verify-key", "--tpm", sw2.Device(), "-o", "json"), 4), &st)
	if st.Key == nil || st.Key.InTPM || st.Key.Verified || !strings.Contains(st.KeyError, "does not load") {
		t.Errorf("status --verify-key -o json with another TPM: %+v", st)
	}

	// A --ca-bundle that does not authenticate the server: no retries, a
	// hint, well within --timeout.
	wrongBundle := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(wrongBundle, ekca.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	r = run(t, nil, nil, "agent", "enroll", "--server", srv.Addr, "--server-name", "localhost", "--tpm", sw2.Device(),
		"--state-dir", filepath.Join(t.TempDir(), "state2"), "--token-file", tokenFile, "--ca-bundle", wrongBundle, "--timeout", "1m")
	fails(t, r, "check --ca-bundle: the server's certificate is not signed by it")
	if strings.Contains(r.stderr, "retrying") || time.Since(start) > 10*time.Second {
		t.Errorf("wrong --ca-bundle retried or was slow (%s): %s", time.Since(start), r)
	}

	// An expired certificate: the status, then exit 3.
	expired := expiredState(t)
	r = exits(t, run(t, nil, nil, "agent", "status", "--state-dir", expired), 3)
	if !strings.Contains(r.stdout, "time left    expired") || !strings.Contains(r.stderr, "rootgate: certificate expired at ") {
		t.Errorf("status with an expired certificate: %s", r)
	}
	st = agentStatusJSON{}
	decodeAny(t, exits(t, run(t, nil, nil, "agent", "status", "--state-dir", expired, "-o", "json"), 3), &st)
	if !st.Enrolled || !st.Expired {
		t.Errorf("status -o json with an expired certificate: %+v", st)
	}
}

// expiredState writes a consistent state directory whose certificate
// expired an hour ago.
func expiredState(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "expired-device"},
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	sd, err := agent.OpenStateDir(filepath.Join(t.TempDir(), "expired"))
	if err != nil {
		t.Fatal(err)
	}
	st := agent.State{DeviceID: "expired-device", Serial: "7", NotAfter: cert.NotAfter, Server: "127.0.0.1:1", EnrolledAt: cert.NotBefore}
	if err := sd.SaveEnrollment(st, []byte("not a key blob"), cert, nil); err != nil {
		t.Fatal(err)
	}
	return sd.Path()
}

// reservePort returns a loopback HOST:PORT with nothing listening on it.
func reservePort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// proxy listens on addr and forwards every connection to target until the
// test ends.
func proxy(t *testing.T, addr, target string) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Errorf("proxy: %v", err)
		return
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				if _, err := io.Copy(c, u); err != nil && !errors.Is(err, net.ErrClosed) {
					return
				}
			})
		}
	})
}
