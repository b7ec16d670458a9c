package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/enroll"
	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

// testServer is a real enrollment service (enroll + inventory + ca, with an
// in-memory CA key) on a loopback TLS listener.
type testServer struct {
	addr   string
	caPEM  []byte
	caCert *x509.Certificate
	store  *inventory.Store
	svc    *enroll.Service
	tls    *tls.Config
}

const testTrustDomain = "agent.test"

// startServer starts a server that trusts ekca's EK certificates. The EK
// CA's root exists once it has manufactured a TPM: call Manufacture first.
func startServer(t *testing.T, ekca *testenv.EKCA, mode enroll.Mode) *testServer {
	t.Helper()
	srv := newServer(t, ekca, mode)
	srv.listen(t, "127.0.0.1:0")
	return srv
}

// listen serves srv on addr (HOST:PORT) and sets srv.addr.
func (srv *testServer) listen(t *testing.T, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	gs := enroll.NewGRPCServer(srv.svc, srv.tls)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	srv.addr = lis.Addr().String()
}

// newServer is startServer without the listener: call listen.
func newServer(t *testing.T, ekca *testenv.EKCA, mode enroll.Mode) *testServer {
	t.Helper()
	ctx := t.Context()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.Init(ctx, key, ca.InitOptions{CommonName: "agent test CA"})
	if err != nil {
		t.Fatal(err)
	}
	store, err := inventory.Open(ctx, filepath.Join(t.TempDir(), "inventory.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	iss, err := ca.New(key, []*x509.Certificate{root.Certificate}, store, ca.Config{TrustDomain: testTrustDomain})
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ekca.Root())
	inter.AddCert(ekca.Issuer())
	svc, err := enroll.New(enroll.Config{
		Mode:         mode,
		TrustDomain:  testTrustDomain,
		EKVerifier:   &attestor.EKVerifier{Roots: roots, Intermediates: inter},
		Store:        store,
		Issuer:       iss,
		PollInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := enroll.NewServingCert(ctx, iss, []string{"localhost", "127.0.0.1"}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{caPEM: iss.Bundle(), caCert: root.Certificate, store: store, svc: svc, tls: sc.TLSConfig()}
}

// TestEnrollAgainstServer proves the wire protocol: a swtpm enrolls with a
// real enrollment service in token mode, a second run keeps the
// certificate, --force re-enrolls with the same AK and a new key, and a
// bad token is refused with the server's gRPC code.
func TestEnrollAgainstServer(t *testing.T) {
	ekca := testenv.NewEKCA(t)
	var states [2]*testenv.TPMState
	var wg sync.WaitGroup
	for i := range states {
		wg.Go(func() { states[i] = ekca.Manufacture(t) })
	}
	wg.Wait()
	srv := startServer(t, ekca, enroll.ModeToken)
	sw := testenv.StartSwtpm(t, states[0])
	token, _, err := srv.store.CreateToken(t.Context(), inventory.TokenParams{TTL: time.Hour, Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	var steps []string
	cfg := Config{
		Server: srv.addr, TPM: sw.Device(), StateDir: dir, CABundle: srv.caPEM, Token: token,
		RenewBefore: time.Hour,
		Progress:    func(s Step) { steps = append(steps, s.Name) },
	}
	enr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := enr.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(steps, ","), "tpm,ek,ak,challenge,activated,device_key,issued"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	wantID, err := attestor.DeviceID(mustCert(t, states[0].EKCert).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if res.DeviceID != wantID || res.AlreadyEnrolled || res.Renewed || res.SPIFFEID != "spiffe://"+testTrustDomain+"/device/"+wantID {
		t.Fatalf("result %+v, want device %s", res, wantID)
	}
	for _, f := range []string{AKFile, KeyFile, CertFile, ChainFile, StateFile} {
		checkMode(t, filepath.Join(dir, f), FileMode)
	}
	checkMode(t, dir, DirMode)
	e1, err := ReadEnrollment(dir)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(srv.caCert)
	if _, err := e1.Certificate.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify against the CA: %v", err)
	}
	if !res.NotAfter.Equal(e1.Certificate.NotAfter) || res.Serial != e1.Certificate.SerialNumber.Text(16) {
		t.Fatalf("result %+v does not match the stored certificate", res)
	}
	dev, err := srv.store.GetDevice(t.Context(), wantID)
	if err != nil || dev.State != inventory.StateActive {
		t.Fatalf("device in store: %+v, %v", dev, err)
	}
	akBlob, _ := os.ReadFile(filepath.Join(dir, AKFile))

	// The stored key blob is the TPM key the certificate names.
	func() {
		tpm := sw.OpenTPM(t)
		defer tpm.Close()
		k, err := tpm.LoadKey(e1.KeyBlob)
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		if !k.Public().(*ecdsa.PublicKey).Equal(e1.Certificate.PublicKey) {
			t.Fatal("certificate key is not the stored TPM key")
		}
	}()

	// VerifyKey proves it from outside the enrollment: the TPM loads the
	// blob, the key is the certificate's, and a TPM signature verifies.
	rep, err := VerifyKey(ctx, sw.Device(), dir)
	if err != nil {
		t.Fatalf("VerifyKey: %v (report %+v)", err, rep)
	}
	if !rep.Verified || !rep.InTPM || !rep.MatchesCertificate || !rep.SignatureVerified || rep.Algorithm != "ECC P-256" ||
		!rep.HasAttribute("fixedTPM") || !rep.HasAttribute("fixedParent") || !rep.HasAttribute("sensitiveDataOrigin") || !rep.HasAttribute("sign") ||
		rep.HasAttribute("decrypt") || rep.HasAttribute("restricted") {
		t.Fatalf("VerifyKey report %+v", rep)
	}
	if got, want := rep.Summary(), "in the TPM (fixedTPM, fixedParent, sensitiveDataOrigin), matches the certificate, signature verified"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}

	// Again: kept, no network (the token is used up; a server call would fail).
	steps = nil
	res2, err := enr.Enroll(ctx)
	if err != nil || !res2.AlreadyEnrolled || res2.DeviceID != wantID || res2.Serial != res.Serial {
		t.Fatalf("second run: %+v, %v", res2, err)
	}

	// Forced: re-enrolls the active device (no token needed), same AK, new
	// key and certificate.
	cfg.Force, cfg.Token = true, ""
	enrF, _ := New(cfg)
	res3, err := enrF.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res3.Renewed || res3.AlreadyEnrolled || res3.DeviceID != wantID || res3.Serial == res.Serial || res3.Reason != "forced" {
		t.Fatalf("forced run: %+v", res3)
	}
	akBlob2, _ := os.ReadFile(filepath.Join(dir, AKFile))
	e3, err := ReadEnrollment(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(akBlob, akBlob2) {
		t.Error("re-enrollment replaced the AK")
	}
	if bytes.Equal(e3.KeyBlob, e1.KeyBlob) || e3.Certificate.PublicKey.(*ecdsa.PublicKey).Equal(e1.Certificate.PublicKey) {
		t.Error("re-enrollment kept the old device key")
	}

	// Another TPM with a bad token: refused, the server's code and message
	// in the error, nothing stored.
	sw2 := testenv.StartSwtpm(t, states[1])
	dir2 := filepath.Join(t.TempDir(), "state2")
	var badSteps []string
	bad, _ := New(Config{Server: srv.addr, TPM: sw2.Device(), StateDir: dir2, CABundle: srv.caPEM, Token: "rgt_notavalidtoken",
		Progress: func(s Step) { badSteps = append(badSteps, s.Name) }})
	_, err = bad.Enroll(ctx)
	var se *ServerError
	if !errors.As(err, &se) || se.Method != "BeginEnrollment" || status.Code(err) == codes.OK || status.Code(err) == codes.Unavailable {
		t.Fatalf("bad token: %v", err)
	}
	if retries := countSteps(badSteps, "retry"); retries != 0 {
		t.Errorf("a refused token was retried %d times", retries)
	}
	t.Logf("bad token refused: %v", err)
	if _, err := ReadEnrollment(dir2); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("after a refusal: %v, want ErrNotEnrolled", err)
	}

	// A CA bundle that does not authenticate the server: a TLS failure,
	// final at once (no retry), with a hint.
	other := testCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	var wrongSteps []string
	wrong, _ := New(Config{Server: srv.addr, TPM: sw2.Device(), StateDir: dir2, CABundle: pemCert(other), Token: token,
		Progress: func(s Step) { wrongSteps = append(wrongSteps, s.Name) }})
	start := time.Now()
	_, err = wrong.Enroll(ctx)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "check --ca-bundle: the server's certificate is not signed by it") {
		t.Fatalf("wrong CA bundle: %v", err)
	}
	if retries := countSteps(wrongSteps, "retry"); retries != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("wrong CA bundle: %d retries, %s: want a fast failure", retries, time.Since(start))
	}
	t.Logf("wrong CA bundle: %v", err)

	// The key blob of this enrollment is no key of the other TPM.
	rep, err = VerifyKey(ctx, sw2.Device(), dir)
	if !errors.Is(err, ErrKeyNotVerified) || rep == nil || rep.InTPM || rep.Verified {
		t.Fatalf("VerifyKey with another TPM: %v, %+v", err, rep)
	}
	t.Logf("VerifyKey with another TPM: %v", err)

	// A consistent state directory whose certificate is for another key.
	e3.Certificate = other
	sd, _ := OpenStateDir(dir)
	if err := sd.SaveEnrollment(e3.State, e3.KeyBlob, other, e3.Chain); err != nil {
		t.Fatal(err)
	}
	rep, err = VerifyKey(ctx, sw.Device(), dir)
	if !errors.Is(err, ErrKeyNotVerified) || rep == nil || !rep.InTPM || rep.MatchesCertificate || rep.SignatureVerified || rep.Verified ||
		!strings.Contains(err.Error(), "is not the key of the certificate") {
		t.Fatalf("VerifyKey with a certificate for another key: %v, %+v", err, rep)
	}

	// No enrollment.
	if _, err := VerifyKey(ctx, sw.Device(), t.TempDir()); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("VerifyKey without an enrollment: %v", err)
	}
}

func countSteps(steps []string, name string) int {
	n := 0
	for _, s := range steps {
		if s == name {
			n++
		}
	}
	return n
}

// TestEnrollRetriesUntilServerUp: with nothing listening yet, the agent
// retries with backoff, one "retry" step per attempt, and enrolls once the
// server starts; with nothing listening until the deadline, it gives up at
// the deadline with the last Unavailable error.
func TestEnrollRetriesUntilServerUp(t *testing.T) {
	ekca := testenv.NewEKCA(t)
	var states [2]*testenv.TPMState
	var wg sync.WaitGroup
	for i := range states {
		wg.Go(func() { states[i] = ekca.Manufacture(t) })
	}
	wg.Wait()
	srv := newServer(t, ekca, enroll.ModeToken)
	token, _, err := srv.store.CreateToken(t.Context(), inventory.TokenParams{TTL: time.Hour, Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	addr := reservePort(t)
	sw := testenv.StartSwtpm(t, states[0])
	var mu sync.Mutex
	var retries []string
	enr, err := New(Config{
		Server: addr, TPM: sw.Device(), StateDir: t.TempDir(), CABundle: srv.caPEM, Token: token,
		Progress: func(s Step) {
			if s.Name == "retry" {
				mu.Lock()
				retries = append(retries, s.Message)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	enr.backoff = backoff{base: 200 * time.Millisecond, max: 800 * time.Millisecond}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	time.AfterFunc(2*time.Second, func() { srv.listen(t, addr) })
	start := time.Now()
	res, err := enr.Enroll(ctx)
	if err != nil {
		t.Fatalf("enroll after the server came up: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(retries) < 2 || time.Since(start) < 2*time.Second {
		t.Fatalf("enrolled after %s with retries %q: want several retries", time.Since(start), retries)
	}
	for _, m := range retries {
		if !strings.Contains(m, "server "+addr+" unreachable (connection refused), retrying in ") {
			t.Errorf("retry step %q", m)
		}
	}
	t.Logf("enrolled %s after %s; retries %q", res.DeviceID, time.Since(start).Round(time.Millisecond), retries)

	// Nothing ever listens: the agent gives up at the deadline.
	dead := reservePort(t)
	sw2 := testenv.StartSwtpm(t, states[1])
	n := 0
	enr2, _ := New(Config{Server: dead, TPM: sw2.Device(), StateDir: t.TempDir(), CABundle: srv.caPEM, Token: token,
		Progress: func(s Step) {
			if s.Name == "retry" {
				n++
			}
		}})
	enr2.backoff = backoff{base: 100 * time.Millisecond, max: 300 * time.Millisecond}
	ctx2, cancel2 := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel2()
	start = time.Now()
	_, err = enr2.Enroll(ctx2)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "gave up after") || n < 2 {
		t.Fatalf("nothing listening: %v after %d retries", err, n)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %s, want about the 2s deadline", d)
	}
	t.Logf("nothing listening: %v", err)
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

// TestEnrollWaitsForApproval: in approval mode the agent reports the
// pending device once, polls, and finishes after an admin approves.
func TestEnrollWaitsForApproval(t *testing.T) {
	ekca := testenv.NewEKCA(t)
	st := ekca.Manufacture(t)
	srv := startServer(t, ekca, enroll.ModeApproval)
	sw := testenv.StartSwtpm(t, st)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	var pending []string
	approved := make(chan error, 1)
	enr, err := New(Config{
		Server: srv.addr, TPM: sw.Device(), StateDir: t.TempDir(), CABundle: srv.caPEM,
		Progress: func(s Step) {
			if s.Name != "pending" {
				return
			}
			mu.Lock()
			pending = append(pending, s.Message)
			mu.Unlock()
			id := s.DeviceID
			go func() { approved <- srv.store.ApproveDevice(context.Background(), id, "admin") }()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := enr.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-approved; err != nil {
		t.Fatalf("approve: %v", err)
	}
	if len(pending) != 1 || !strings.Contains(pending[0], res.DeviceID) {
		t.Fatalf("pending steps %q for device %s", pending, res.DeviceID)
	}
}

func mustCert(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
