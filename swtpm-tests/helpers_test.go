package swtpmtests

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	_ "modernc.org/sqlite"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

// fleet is a private EK CA with the TPMs it manufactured and a server
// that trusts it.
type fleet struct {
	ekca *testenv.EKCA
	tpms []*testenv.TPMState
	srv  *testenv.Rootgate
}

// newFleet manufactures n TPMs (in parallel) and starts a server that
// trusts their EK CA, with opts.
func newFleet(t *testing.T, n int, opts testenv.ServerOptions) *fleet {
	t.Helper()
	f := &fleet{ekca: testenv.NewEKCA(t)}
	f.tpms = f.ekca.ManufactureN(t, n)
	if opts.EKRoots == "" {
		opts.EKRoots = f.ekca.RootsDir(t)
	}
	f.srv = testenv.StartServer(t, rootgateBin, testenv.SoftHSM(t), opts)
	return f
}

// fingerprint returns the EK fingerprint of a TPM from its EK certificate.
func fingerprint(t *testing.T, st *testenv.TPMState) string {
	t.Helper()
	c, err := attestor.ParseEKCertificate(st.EKCert)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := attestor.EKFingerprint(c.Certificate.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// deviceIDOf returns the device ID a TPM will get.
func deviceIDOf(t *testing.T, st *testenv.TPMState) string {
	t.Helper()
	id, err := attestor.DeviceIDFromFingerprint(fingerprint(t, st))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// token creates a one-time enrollment token with the admin CLI.
func token(t *testing.T, srv *testenv.Rootgate, args ...string) (secret, id string) {
	t.Helper()
	var out struct {
		Secret string           `json:"secret"`
		Token  *inventory.Token `json:"token"`
	}
	srv.AdminJSON(t, &out, append([]string{"tokens", "create"}, args...)...)
	if !strings.HasPrefix(out.Secret, "rgt_") || out.Token == nil {
		t.Fatalf("tokens create: %+v", out)
	}
	return out.Secret, out.Token.ID
}

// tokenFile writes a token to a 0600 file for --token-file.
func tokenFile(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// listDevices returns the inventory as the admin CLI reports it.
func listDevices(t *testing.T, srv *testenv.Rootgate, args ...string) []inventory.Device {
	t.Helper()
	var ds []inventory.Device
	srv.AdminJSON(t, &ds, append([]string{"devices", "list"}, args...)...)
	return ds
}

// deviceShow is `rootgate devices show -o json`.
type deviceShow struct {
	Device       inventory.Device        `json:"device"`
	Certificates []inventory.Certificate `json:"certificates"`
	Events       []inventory.Event       `json:"events"`
}

func showDevice(t *testing.T, srv *testenv.Rootgate, id string) deviceShow {
	t.Helper()
	var d deviceShow
	srv.AdminJSON(t, &d, "devices", "show", id, "--events", "100")
	return d
}

// agentResult is `rootgate agent enroll -o json`.
type agentResult struct {
	DeviceID        string    `json:"device_id"`
	SPIFFEID        string    `json:"spiffe_id"`
	Serial          string    `json:"serial"`
	NotAfter        time.Time `json:"not_after"`
	CertPath        string    `json:"cert_path"`
	KeyPath         string    `json:"key_path"`
	AlreadyEnrolled bool      `json:"already_enrolled"`
	Renewed         bool      `json:"renewed"`
}

// enroll runs the agent binary and decodes its result.
func enroll(t *testing.T, srv *testenv.Rootgate, sw *testenv.Swtpm, stateDir string, extra ...string) agentResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := srv.Enroll(ctx, sw, stateDir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	var r agentResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("agent output %q: %v", out, err)
	}
	return r
}

// db opens the server's SQLite store read-only, as an auditor would.
func db(t *testing.T, srv *testenv.Rootgate) *sql.DB {
	t.Helper()
	d, err := sql.Open("sqlite", "file:"+filepath.Join(srv.DataDir, "rootgate.db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func count(t *testing.T, d *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := d.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// snapshot is what a refused request must leave unchanged.
type snapshot struct{ devices, deviceCerts, refusals int }

func snap(t *testing.T, d *sql.DB) snapshot {
	t.Helper()
	return snapshot{
		devices:     count(t, d, `SELECT count(*) FROM devices`),
		deviceCerts: count(t, d, `SELECT count(*) FROM certificates WHERE kind = 'device'`),
		refusals:    count(t, d, `SELECT count(*) FROM events WHERE type = 'enrollment.refused'`),
	}
}

// assertRefusedCleanly checks that a refusal created no device, issued no
// certificate and wrote exactly one refusal event with the code.
func assertRefusedCleanly(t *testing.T, d *sql.DB, before snapshot, code codes.Code, what string) snapshot {
	t.Helper()
	after := snap(t, d)
	if after.devices != before.devices || after.deviceCerts != before.deviceCerts {
		t.Errorf("%s: state changed: devices %d -> %d, device certificates %d -> %d",
			what, before.devices, after.devices, before.deviceCerts, after.deviceCerts)
	}
	if after.refusals != before.refusals+1 {
		t.Errorf("%s: %d refusal events written, want 1", what, after.refusals-before.refusals)
	}
	var gotCode string
	if err := d.QueryRow(`SELECT code FROM events WHERE type = 'enrollment.refused' ORDER BY seq DESC LIMIT 1`).Scan(&gotCode); err != nil {
		t.Fatal(err)
	}
	if !strings.EqualFold(gotCode, code.String()) {
		t.Errorf("%s: refusal event code %q, want %s", what, gotCode, code)
	}
	return after
}

// wantCode fails unless err is a gRPC status with code whose message
// contains every fragment (case-insensitive).
func wantCode(t *testing.T, err error, code codes.Code, what string, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %s", what, code)
	}
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	for _, f := range fragments {
		if !strings.Contains(strings.ToLower(st.Message()), strings.ToLower(f)) {
			t.Errorf("%s: message %q does not name %q", what, st.Message(), f)
		}
	}
}

// client dials the server's enrollment listener like an agent: TLS 1.3,
// trusting the Rootgate CA.
func client(t *testing.T, srv *testenv.Rootgate) rootgatev1.EnrollmentServiceClient {
	t.Helper()
	pool := x509.NewCertPool()
	b, err := os.ReadFile(srv.CABundle)
	if err != nil {
		t.Fatal(err)
	}
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no CA certificates in bundle")
	}
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rootgatev1.NewEnrollmentServiceClient(conn)
}

// readCert reads the first PEM certificate of a file.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// samePublicKey compares two public keys.
func samePublicKey(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(eq)
	return ok && ea.Equal(b)
}
