package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

// realEnv is a Service over a real SoftHSM CA key, a real SQLite store and
// a real swtpm device whose EK is certified by a private EK CA.
type realEnv struct {
	svc    *Service
	store  *inventory.Store
	issuer *ca.Issuer
	roots  *x509.CertPool // the Rootgate CA
	dev    *testenv.Device
}

func newRealEnv(tb testing.TB, mode Mode) *realEnv {
	tb.Helper()
	ctx := context.Background()

	// The CA: a key in a fresh SoftHSM token, a self-signed root.
	sh := testenv.SoftHSM(tb)
	tok := sh.Open(tb, "rootgate-ca", hsm.Options{})
	signer, err := tok.GenerateSigner(ctx, "rootgate-ca", hsm.ECDSAP256)
	if err != nil {
		tb.Fatal(err)
	}
	dataDir := tb.TempDir()
	res, err := ca.Init(ctx, signer, ca.InitOptions{DataDir: dataDir, CommonName: "Enroll Test CA"})
	if err != nil {
		tb.Fatal(err)
	}
	store, err := inventory.Open(ctx, filepath.Join(dataDir, "rootgate.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	issuer, err := ca.New(signer, []*x509.Certificate{res.Certificate}, store, ca.Config{TrustDomain: "example.org"})
	if err != nil {
		tb.Fatal(err)
	}

	// The device: a swtpm manufactured with an EK certificate.
	ekca := testenv.NewEKCA(tb)
	state := ekca.Manufacture(tb)
	sw := testenv.StartSwtpm(tb, state)
	ekv, err := LoadEKVerifier(ekca.RootsDir(tb), nil)
	if err != nil {
		tb.Fatal(err)
	}

	svc, err := New(Config{
		Mode:        mode,
		TrustDomain: "example.org",
		EKVerifier:  ekv,
		Store:       store,
		Issuer:      issuer,
		Metrics:     prometheus.NewRegistry(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(res.Certificate)
	return &realEnv{svc: svc, store: store, issuer: issuer, roots: roots,
		dev: testenv.NewDevice(tb, sw.OpenTPM(tb), state.EKCert)}
}

// serve starts the service over gRPC with TLS on a loopback port and
// returns a client that trusts the Rootgate CA.
func (e *realEnv) serve(tb testing.TB) rootgatev1.EnrollmentServiceClient {
	tb.Helper()
	ctx := context.Background()
	serving, err := NewServingCert(ctx, e.issuer, []string{"127.0.0.1", "localhost"}, time.Hour, nil)
	if err != nil {
		tb.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gs := NewGRPCServer(e.svc, serving.TLSConfig())
	go gs.Serve(lis)
	tb.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: e.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return rootgatev1.NewEnrollmentServiceClient(conn)
}

// TestEnrollEndToEnd enrolls a swtpm over gRPC and TLS on loopback against
// a SoftHSM CA and a SQLite store, then re-enrolls it, and checks that
// replays and a wrong answer are refused and audited.
func TestEnrollEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SoftHSM and swtpm")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := newRealEnv(t, ModeToken)
	client := e.serve(t)
	secret, _, err := e.store.CreateToken(ctx, inventory.TokenParams{TTL: time.Hour, Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}

	b, err := client.BeginEnrollment(ctx, e.dev.Begin(secret))
	if err != nil {
		t.Fatalf("BeginEnrollment: %v", err)
	}
	if b.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE {
		t.Fatalf("status %v", b.Status)
	}
	req, keyPub := e.dev.Answer(t, b)
	f, err := client.FinishEnrollment(ctx, req)
	if err != nil {
		t.Fatalf("FinishEnrollment: %v", err)
	}

	// The certificate: chains to the CA for client auth, certifies the
	// TPM-resident key, names the device.
	cert, err := x509.ParseCertificate(f.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: e.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate does not verify: %v", err)
	}
	if !publicKeysEqual(cert.PublicKey, keyPub) {
		t.Fatal("certificate key is not the TPM key")
	}
	if f.SpiffeId != "spiffe://example.org/device/"+b.DeviceId || f.DeviceId != b.DeviceId {
		t.Fatalf("identity %s / %s", f.SpiffeId, f.DeviceId)
	}
	dev, err := e.store.GetDevice(ctx, f.DeviceId)
	if err != nil {
		t.Fatal(err)
	}
	serial := cert.SerialNumber.Text(16)
	if dev.State != inventory.StateActive || dev.CurrentSerial != serial || len(dev.PCRs) != 24 || dev.Facts["hostname"] != "swtpm-box" || len(dev.AKPublic) == 0 {
		t.Fatalf("device: state %s serial %s (want %s) pcrs %d facts %v", dev.State, dev.CurrentSerial, serial, len(dev.PCRs), dev.Facts)
	}

	// The challenge is spent.
	_, err = client.FinishEnrollment(ctx, req)
	wantCode(t, err, codes.FailedPrecondition, "replayed Finish")

	// Re-enrollment: no token needed, same ID; a replayed certification
	// (old nonce) and a wrong activation answer are refused first.
	b2, err := client.BeginEnrollment(ctx, e.dev.Begin(""))
	if err != nil {
		t.Fatalf("re-enroll Begin: %v", err)
	}
	stale := proto.Clone(req).(*rootgatev1.FinishEnrollmentRequest)
	stale.EnrollmentId = b2.EnrollmentId
	fresh, _ := e.dev.Answer(t, b2)
	stale.ActivationSecret = fresh.ActivationSecret
	_, err = client.FinishEnrollment(ctx, stale)
	wantCode(t, err, codes.PermissionDenied, "certification over an old nonce")

	b3, err := client.BeginEnrollment(ctx, e.dev.Begin(""))
	if err != nil {
		t.Fatal(err)
	}
	req3, _ := e.dev.Answer(t, b3)
	good := req3.ActivationSecret
	req3.ActivationSecret = make([]byte, len(good))
	_, err = client.FinishEnrollment(ctx, req3)
	wantCode(t, err, codes.PermissionDenied, "wrong activation secret")

	b4, err := client.BeginEnrollment(ctx, e.dev.Begin(""))
	if err != nil {
		t.Fatal(err)
	}
	req4, _ := e.dev.Answer(t, b4)
	f4, err := client.FinishEnrollment(ctx, req4)
	if err != nil {
		t.Fatalf("re-enroll Finish: %v", err)
	}
	if f4.DeviceId != f.DeviceId {
		t.Fatalf("device ID changed: %s -> %s", f.DeviceId, f4.DeviceId)
	}
	certs, err := e.store.ListCertificates(ctx, f.DeviceId)
	if err != nil {
		t.Fatal(err)
	}
	st := map[string]string{}
	for _, c := range certs {
		st[c.Serial] = string(c.Status)
	}
	if st[serial] != "superseded" || len(certs) != 2 {
		t.Fatalf("certificates after re-enrollment: %v", st)
	}

	// The audit trail: two acceptances, three refusals (the replay names no
	// device: its enrollment_id no longer leads to one), chain intact.
	events, err := e.store.ListEvents(ctx, inventory.EventFilter{Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, ev := range events {
		n[ev.Type]++
		if ev.Type != inventory.EventEnrollmentRefused {
			continue
		}
		if ev.Peer == "" || ev.Code == "" || ev.Reason == "" {
			t.Errorf("refusal event lacks peer/code/reason: %+v", ev)
		}
		if ev.Code == codes.PermissionDenied.String() && (ev.DeviceID != f.DeviceId || ev.EKFingerprint != dev.EKFingerprint) {
			t.Errorf("refusal event lacks the device: %+v", ev)
		}
	}
	// Four challenges were issued (two finished, two refused at Finish),
	// each on the trail even before it was answered.
	if n[inventory.EventEnrollmentBegin] != 4 || n[inventory.EventEnrollmentFinish] != 2 || n[inventory.EventEnrollmentRefused] != 3 {
		t.Errorf("events by type: %v", n)
	}
	if err := e.store.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

func publicKeysEqual(a, b any) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && string(da) == string(db)
}

func mustFingerprint(tb testing.TB, ekPub []byte) string {
	tb.Helper()
	pub, err := x509.ParsePKIXPublicKey(ekPub)
	if err != nil {
		tb.Fatal(err)
	}
	fp, err := attestor.EKFingerprint(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return fp
}
