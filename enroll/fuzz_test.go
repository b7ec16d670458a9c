package enroll

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

// Fuzz targets for the service's request handling, with the real attestor
// checks (attestorEvidence) over the in-memory store (fakeStore) and a
// software-key CA. Malformed protobuf is grpc's to refuse; everything that
// unmarshals is expected input: truncated TPM structures, oversized fields,
// replayed challenges must be refused with a documented status code and
// leave the store as it was.
//
// The seeds (testdata/fuzz/<Target>/) and testdata/swtpm-enroll.json come
// from a real swtpm, written by TestWriteFuzzSeeds (see testdata/README.md).
// The service's randomness is a fixed ChaCha8 stream, so the challenge a
// Begin issues is the same in every run and the committed Finish seeds
// answer it.

// fuzzToken is the enrollment token of the Begin seeds; in token mode the
// store holds it, bound to the seed device's EK.
const fuzzToken = "rgt_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz"

// fuzzMaxEventLog is the event-log bound in the fuzzed service: small, so
// that mutated inputs cross it.
const fuzzMaxEventLog = 4 << 10

// fuzzSeed seeds the service's randomness (challenge secret, nonce,
// enrollment ID, in that order).
var fuzzSeed = [32]byte([]byte("rootgate enroll fuzz randomness!"))

// enrollFixture is testdata/swtpm-enroll.json: one enrollment of a swtpm
// device against a service whose randomness is fuzzSeed.
type enrollFixture struct {
	Source    string    `json:"source"`
	RootPEM   []byte    `json:"root_pem"`   // the EK CA's root
	IssuerPEM []byte    `json:"issuer_pem"` // the EK CA's issuer
	Now       time.Time `json:"now"`        // the service's clock: inside the EK certificate's validity
	Begin     []byte    `json:"begin"`      // BeginEnrollmentRequest, protobuf wire format
	Nonce     []byte    `json:"nonce"`      // the nonce Begin answers with under fuzzSeed
	Finish    []byte    `json:"finish"`     // FinishEnrollmentRequest answering that challenge
}

func loadEnrollFixture(tb testing.TB) *enrollFixture {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "swtpm-enroll.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var fx enrollFixture
	if err := json.Unmarshal(b, &fx); err != nil {
		tb.Fatal(err)
	}
	return &fx
}

// fuzzEnv builds, per input, a fresh Service with the real evidence checks,
// a fresh fakeStore and an Issuer journaling into it.
type fuzzEnv struct {
	now      time.Time
	ekv      *attestor.EKVerifier
	caKey    crypto.Signer
	caChain  []*x509.Certificate
	ekFP     string // of the fixture's EK
	deviceID string
}

func newFuzzEnv(tb testing.TB, rootPEM, issuerPEM, beginDER []byte, now time.Time) *fuzzEnv {
	tb.Helper()
	roots, inter, err := attestor.ParseEKRoots([][]byte{rootPEM, issuerPEM})
	if err != nil {
		tb.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	res, err := ca.Init(context.Background(), key, ca.InitOptions{CommonName: "Fuzz CA"})
	if err != nil {
		tb.Fatal(err)
	}
	var begin rootgatev1.BeginEnrollmentRequest
	if err := proto.Unmarshal(beginDER, &begin); err != nil {
		tb.Fatal(err)
	}
	ek, err := attestor.ParseEKPublic(begin.GetEkPublic())
	if err != nil {
		tb.Fatal(err)
	}
	fp, _ := attestor.EKFingerprint(ek)
	id, _ := attestor.DeviceID(ek)
	return &fuzzEnv{
		now:     now,
		ekv:     &attestor.EKVerifier{Roots: roots, Intermediates: inter},
		caKey:   key,
		caChain: []*x509.Certificate{res.Certificate},
		ekFP:    fp, deviceID: id,
	}
}

// service returns a Service in mode over a new store (see store) with an
// Issuer journaling into it.
func (e *fuzzEnv) service(tb testing.TB, mode Mode) (*Service, *fakeStore) {
	tb.Helper()
	st := e.store(mode)
	iss, err := ca.New(e.caKey, e.caChain, st, ca.Config{TrustDomain: "example.org"})
	if err != nil {
		tb.Fatal(err)
	}
	return e.serviceWith(tb, mode, st, iss), st
}

// store returns a new fakeStore that admits the fixture's device in mode:
// registered in preregistered mode, holding fuzzToken in token mode, unknown
// in approval mode.
func (e *fuzzEnv) store(mode Mode) *fakeStore {
	st := newFakeStore()
	switch mode {
	case ModePreregistered:
		st.setDevice(inventory.Device{ID: e.deviceID, EKFingerprint: e.ekFP, State: inventory.StateRegistered})
	case ModeToken:
		st.addToken(fuzzToken, "tok-fuzz", e.ekFP, e.now.Add(time.Hour))
	}
	return st
}

// serviceWith returns a Service in mode with the real evidence checks, the
// fixture's clock and EK roots, and randomness from fuzzSeed.
func (e *fuzzEnv) serviceWith(tb testing.TB, mode Mode, st Store, iss Issuer) *Service {
	tb.Helper()
	svc, err := New(Config{
		Mode:        mode,
		TrustDomain: "example.org",
		EKVerifier:  e.ekv,
		Store:       st,
		Issuer:      iss,
		MaxEventLog: fuzzMaxEventLog,
		Now:         func() time.Time { return e.now },
		Rand:        mrand.NewChaCha8(fuzzSeed),
	})
	if err != nil {
		tb.Fatal(err)
	}
	if _, ok := svc.ev.(attestorEvidence); !ok {
		tb.Fatalf("service verifies with %T, want the real attestorEvidence", svc.ev)
	}
	return svc
}

// storeState is what a refusal must leave unchanged.
type storeState struct {
	devices map[string]inventory.Device
	certs   map[string]string
	tokens  map[string]bool // secret -> used
}

func stateOf(st *fakeStore) storeState {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := storeState{devices: map[string]inventory.Device{}, certs: maps.Clone(st.certs), tokens: map[string]bool{}}
	for fp, d := range st.devices {
		s.devices[fp] = *d
	}
	for secret, t := range st.tokens {
		s.tokens[secret] = t.used
	}
	return s
}

// checkRefusal checks a refused call: a status error with one of allowed,
// no response, and exactly one refusal event more than before.
func checkRefusal(t *testing.T, what string, resp any, err error, refusalsBefore int, st *fakeStore, allowed ...codes.Code) codes.Code {
	t.Helper()
	s, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: error is not a gRPC status: %v", what, err)
	}
	if !reflect.ValueOf(resp).IsNil() {
		t.Fatalf("%s: refused (%v) with a response", what, err)
	}
	code := s.Code()
	found := false
	for _, c := range allowed {
		found = found || c == code
	}
	if !found {
		t.Fatalf("%s: code %v (%q), want one of %v", what, code, s.Message(), allowed)
	}
	if n := len(st.refusals()); n != refusalsBefore+1 {
		t.Fatalf("%s: %d refusal events recorded, want 1", what, n-refusalsBefore)
	}
	return code
}

// FuzzBeginEnrollment runs each request that unmarshals through
// BeginEnrollment in every admission mode.
func FuzzBeginEnrollment(f *testing.F) {
	fx := loadEnrollFixture(f)
	env := newFuzzEnv(f, fx.RootPEM, fx.IssuerPEM, fx.Begin, fx.Now)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req rootgatev1.BeginEnrollmentRequest
		if proto.Unmarshal(data, &req) != nil {
			t.Skip("not a BeginEnrollmentRequest: grpc refuses it")
		}
		for _, mode := range []Mode{ModePreregistered, ModeToken, ModeApproval} {
			svc, st := env.service(t, mode)
			before := stateOf(st)
			resp, err := svc.BeginEnrollment(context.Background(), proto.Clone(&req).(*rootgatev1.BeginEnrollmentRequest))
			what := fmt.Sprintf("BeginEnrollment (%s mode)", mode)
			if err != nil {
				checkRefusal(t, what, resp, err, 0, st, codes.InvalidArgument, codes.PermissionDenied)
				if after := stateOf(st); !reflect.DeepEqual(before, after) {
					t.Fatalf("%s: refused (%v) but the store changed:\nbefore %+v\nafter  %+v", what, err, before, after)
				}
				if svc.Pending() != 0 {
					t.Fatalf("%s: refused (%v) but holds %d challenges", what, err, svc.Pending())
				}
				continue
			}
			checkBeginAccepted(t, what, mode, resp, svc, st, before)
		}
	})
}

func checkBeginAccepted(t *testing.T, what string, mode Mode, resp *rootgatev1.BeginEnrollmentResponse, svc *Service, st *fakeStore, before storeState) {
	t.Helper()
	if resp == nil {
		t.Fatalf("%s: OK with a nil response", what)
	}
	if len(st.refusals()) != 0 {
		t.Fatalf("%s: accepted but recorded a refusal", what)
	}
	if resp.GetDeviceId() == "" {
		t.Fatalf("%s: accepted without a device ID", what)
	}
	after := stateOf(st)
	switch resp.GetStatus() {
	case rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE:
		if len(resp.GetNonce()) != nonceSize || len(resp.GetEnrollmentId()) != 2*enrollmentIDLen ||
			resp.GetCredential() == nil || len(resp.GetCredential().GetCredential()) == 0 || len(resp.GetCredential().GetSecret()) == 0 {
			t.Fatalf("%s: incomplete challenge: %v", what, resp)
		}
		if svc.Pending() != 1 {
			t.Fatalf("%s: challenge issued but %d held", what, svc.Pending())
		}
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("%s: a challenge changed the store:\nbefore %+v\nafter  %+v", what, before, after)
		}
	case rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_PENDING_APPROVAL:
		if mode != ModeApproval {
			t.Fatalf("%s: PENDING_APPROVAL outside approval mode", what)
		}
		if svc.Pending() != 0 {
			t.Fatalf("%s: pending approval but %d challenges held", what, svc.Pending())
		}
		found := false
		for _, d := range after.devices {
			found = found || (d.ID == resp.GetDeviceId() && d.State == inventory.StatePending)
		}
		if !found || len(after.devices) != len(before.devices)+1 {
			t.Fatalf("%s: pending approval but the device is not queued: %+v", what, after.devices)
		}
	default:
		t.Fatalf("%s: OK with status %v", what, resp.GetStatus())
	}
}

// FuzzFinishEnrollment answers one real challenge (from a real Begin of the
// fixture device, made once) with each request that unmarshals, then
// replays the request.
func FuzzFinishEnrollment(f *testing.F) {
	fx := loadEnrollFixture(f)
	env := newFuzzEnv(f, fx.RootPEM, fx.IssuerPEM, fx.Begin, fx.Now)
	eid, challenge := env.challenge(f, fx)

	// The committed answer must still enroll, or every seed would stop at
	// the activation check and the target would prove little.
	svc, st := env.finishService(f, eid, challenge)
	var good rootgatev1.FinishEnrollmentRequest
	if err := proto.Unmarshal(fx.Finish, &good); err != nil {
		f.Fatal(err)
	}
	if _, err := svc.FinishEnrollment(context.Background(), &good); err != nil {
		f.Fatalf("the fixture's Finish does not enroll: %v (rewrite testdata with TestWriteFuzzSeeds)", err)
	}
	if d := st.device(env.ekFP); d == nil || d.State != inventory.StateActive {
		f.Fatalf("the fixture's Finish left the device %+v", d)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		var req rootgatev1.FinishEnrollmentRequest
		if proto.Unmarshal(data, &req) != nil {
			t.Skip("not a FinishEnrollmentRequest: grpc refuses it")
		}
		svc, st := env.finishService(t, eid, challenge)
		before := stateOf(st)
		resp, err := svc.FinishEnrollment(context.Background(), proto.Clone(&req).(*rootgatev1.FinishEnrollmentRequest))
		taken := svc.Pending() == 0
		if err != nil {
			code := checkRefusal(t, "FinishEnrollment", resp, err, 0, st,
				codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition)
			if after := stateOf(st); !reflect.DeepEqual(before, after) {
				t.Fatalf("refused (%v) but the store changed:\nbefore %+v\nafter  %+v", err, before, after)
			}
			if !taken && code != codes.InvalidArgument && code != codes.FailedPrecondition {
				t.Fatalf("refused with %v (%v) without spending the challenge", code, err)
			}
			if !taken && code == codes.FailedPrecondition && req.GetEnrollmentId() == eid {
				t.Fatalf("FailedPrecondition (%v) for the challenge held", err)
			}
		} else {
			checkFinishAccepted(t, resp, env, st)
		}

		// A replay never succeeds once the challenge is spent, and changes
		// nothing.
		if !taken {
			return
		}
		before = stateOf(st)
		refusals := len(st.refusals())
		resp2, err := svc.FinishEnrollment(context.Background(), proto.Clone(&req).(*rootgatev1.FinishEnrollmentRequest))
		if err == nil {
			t.Fatalf("replayed Finish accepted")
		}
		checkRefusal(t, "replayed FinishEnrollment", resp2, err, refusals, st, codes.FailedPrecondition)
		if after := stateOf(st); !reflect.DeepEqual(before, after) {
			t.Fatalf("replayed Finish changed the store:\nbefore %+v\nafter  %+v", before, after)
		}
	})
}

// challenge runs the fixture's Begin once, in preregistered mode, and
// returns the challenge it leaves pending.
func (e *fuzzEnv) challenge(tb testing.TB, fx *enrollFixture) (string, *pending) {
	tb.Helper()
	svc, _ := e.service(tb, ModePreregistered)
	var begin rootgatev1.BeginEnrollmentRequest
	if err := proto.Unmarshal(fx.Begin, &begin); err != nil {
		tb.Fatal(err)
	}
	b, err := svc.BeginEnrollment(context.Background(), &begin)
	if err != nil {
		tb.Fatalf("the fixture's Begin: %v", err)
	}
	if !bytes.Equal(b.GetNonce(), fx.Nonce) {
		tb.Fatalf("Begin's nonce is %x, the fixture's %x: the service draws its randomness differently now (rewrite testdata with TestWriteFuzzSeeds)", b.GetNonce(), fx.Nonce)
	}
	svc.pending.mu.Lock()
	p := svc.pending.m[b.GetEnrollmentId()]
	svc.pending.mu.Unlock()
	if p == nil {
		tb.Fatal("no pending challenge after Begin")
	}
	return b.GetEnrollmentId(), p
}

// finishService returns a preregistered-mode service holding a copy of the
// challenge under eid.
func (e *fuzzEnv) finishService(tb testing.TB, eid string, p *pending) (*Service, *fakeStore) {
	tb.Helper()
	svc, st := e.service(tb, ModePreregistered)
	e.hold(tb, svc, eid, p)
	return svc, st
}

// hold puts a copy of the challenge p into svc's pending table under eid,
// as a Begin would.
func (e *fuzzEnv) hold(tb testing.TB, svc *Service, eid string, p *pending) {
	tb.Helper()
	c := *p
	c.facts = maps.Clone(p.facts)
	if err := svc.pending.add(eid, &c, e.now); err != nil {
		tb.Fatal(err)
	}
}

func checkFinishAccepted(t *testing.T, resp *rootgatev1.FinishEnrollmentResponse, env *fuzzEnv, st *fakeStore) {
	t.Helper()
	if resp == nil {
		t.Fatal("FinishEnrollment: OK with a nil response")
	}
	if len(st.refusals()) != 0 {
		t.Fatal("FinishEnrollment: accepted but recorded a refusal")
	}
	cert, err := x509.ParseCertificate(resp.GetCertificate())
	if err != nil {
		t.Fatalf("FinishEnrollment: certificate: %v", err)
	}
	serial := cert.SerialNumber.Text(16)
	d := st.device(env.ekFP)
	if resp.GetDeviceId() != env.deviceID || d == nil || d.State != inventory.StateActive || d.CurrentSerial != serial {
		t.Fatalf("FinishEnrollment: accepted %s (serial %s) but the device is %+v", resp.GetDeviceId(), serial, d)
	}
	if certs := stateOf(st).certs; len(certs) != 1 || certs[serial] != "active" {
		t.Fatalf("FinishEnrollment: certificates %v, want %s active", certs, serial)
	}
	if len(resp.GetChain()) == 0 || !strings.HasSuffix(resp.GetSpiffeId(), "/device/"+env.deviceID) {
		t.Fatalf("FinishEnrollment: chain %d, spiffe_id %q", len(resp.GetChain()), resp.GetSpiffeId())
	}
}

// TestFuzzSeeds checks that each committed seed reaches the check it was
// written for, so that a change in the service cannot quietly turn the
// corpus into inputs refused at the door.
func TestFuzzSeeds(t *testing.T) {
	fx := loadEnrollFixture(t)
	env := newFuzzEnv(t, fx.RootPEM, fx.IssuerPEM, fx.Begin, fx.Now)
	for name, want := range map[string]string{
		"swtpm":                          "OK",
		"swtpm-no-ek-cert":               "PermissionDenied: attestor: EK not trusted",
		"swtpm-truncated-ek-cert":        "InvalidArgument: attestor: malformed evidence: EK certificate",
		"swtpm-truncated-ak":             "InvalidArgument: attestor: malformed evidence: AK public area",
		"swtpm-truncated-ak-attestation": "InvalidArgument: attestor: malformed evidence: AK creation attestation",
		"swtpm-wrong-token":              "PermissionDenied: enroll: enrollment token invalid",
	} {
		var req rootgatev1.BeginEnrollmentRequest
		if err := proto.Unmarshal(readSeed(t, "FuzzBeginEnrollment", name), &req); err != nil {
			t.Fatalf("seed %s: %v", name, err)
		}
		svc, _ := env.service(t, ModeToken)
		_, err := svc.BeginEnrollment(context.Background(), &req)
		if got := outcome(err); !strings.HasPrefix(got, want) {
			t.Errorf("Begin seed %s: %s, want %s", name, got, want)
		}
	}
	eid, challenge := env.challenge(t, fx)
	for name, want := range map[string]string{
		"swtpm":                         "OK",
		"swtpm-wrong-secret":            "PermissionDenied: attestor: credential activation failed",
		"swtpm-other-nonce":             "PermissionDenied: attestor: nonce mismatch",
		"swtpm-csr-other-key":           "PermissionDenied: attestor: key mismatch",
		"swtpm-truncated-certification": "InvalidArgument: attestor: malformed evidence: certification",
		"swtpm-truncated-key-public":    "InvalidArgument: attestor: malformed evidence: certified key public area",
		"swtpm-truncated-quote":         "InvalidArgument: attestor: malformed evidence: quote 0",
		"swtpm-oversized-event-log":     "InvalidArgument: invalid request: event_log exceeds",
	} {
		var req rootgatev1.FinishEnrollmentRequest
		if err := proto.Unmarshal(readSeed(t, "FuzzFinishEnrollment", name), &req); err != nil {
			t.Fatalf("seed %s: %v", name, err)
		}
		svc, _ := env.finishService(t, eid, challenge)
		_, err := svc.FinishEnrollment(context.Background(), &req)
		if got := outcome(err); !strings.HasPrefix(got, want) {
			t.Errorf("Finish seed %s: %s, want %s", name, got, want)
		}
	}
}

func outcome(err error) string {
	if err == nil {
		return "OK"
	}
	s := status.Convert(err)
	return s.Code().String() + ": " + s.Message()
}

// readSeed returns the one []byte argument of a committed seed file.
func readSeed(tb testing.TB, target, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		tb.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
		tb.Fatalf("seed %s/%s: not one []byte argument in go test fuzz v1 format", target, name)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		tb.Fatalf("seed %s/%s: %v", target, name, err)
	}
	return []byte(s)
}

// TestWriteFuzzSeeds enrolls a fresh swtpm device against the fuzzed
// service and rewrites testdata/swtpm-enroll.json and the seed corpora
// when ROOTGATE_WRITE_TESTDATA=1 (needs swtpm, swtpm-tools).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("ROOTGATE_WRITE_TESTDATA") != "1" {
		t.Skip("set ROOTGATE_WRITE_TESTDATA=1 to rewrite testdata/swtpm-enroll.json and testdata/fuzz")
	}
	ekca := testenv.NewEKCA(t)
	state := ekca.Manufacture(t)
	sw := testenv.StartSwtpm(t, state)
	dev := testenv.NewDevice(t, sw.OpenTPM(t), state.EKCert)

	begin := dev.Begin(fuzzToken)
	beginDER := mustMarshal(t, begin)
	fx := &enrollFixture{
		Source: "internal/testenv swtpm (swtpm_setup --tpm2 --create-ek-cert, private swtpm-localca from testenv.NewEKCA), " +
			"go-attestation AK and device key (testenv.Device); written by TestWriteFuzzSeeds",
		RootPEM:   ekca.RootPEM(),
		IssuerPEM: ekca.IssuerPEM(),
		Now:       time.Now().UTC().Truncate(time.Second),
		Begin:     beginDER,
	}
	env := newFuzzEnv(t, fx.RootPEM, fx.IssuerPEM, fx.Begin, fx.Now)
	svc, _ := env.service(t, ModePreregistered)
	b, err := svc.BeginEnrollment(context.Background(), begin)
	if err != nil {
		t.Fatalf("BeginEnrollment: %v", err)
	}
	fx.Nonce = b.GetNonce()
	finish, _ := dev.Answer(t, b)
	fx.Finish = mustMarshal(t, finish)

	// Another answer from the same device, certification and quote over a
	// nonce that is not the challenge's.
	other := proto.Clone(b).(*rootgatev1.BeginEnrollmentResponse)
	other.Nonce = bytes.Repeat([]byte{0x5a}, nonceSize)
	otherNonce, _ := dev.Answer(t, other)

	j, err := json.MarshalIndent(fx, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "swtpm-enroll.json"), append(j, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}

	mutBegin := func(fn func(r *rootgatev1.BeginEnrollmentRequest)) []byte {
		r := proto.Clone(begin).(*rootgatev1.BeginEnrollmentRequest)
		fn(r)
		return mustMarshal(t, r)
	}
	mutFinish := func(base *rootgatev1.FinishEnrollmentRequest, fn func(r *rootgatev1.FinishEnrollmentRequest)) []byte {
		r := proto.Clone(base).(*rootgatev1.FinishEnrollmentRequest)
		fn(r)
		return mustMarshal(t, r)
	}
	half := func(b []byte) []byte { return b[:len(b)/2] }
	seeds := map[string]map[string][]byte{
		"FuzzBeginEnrollment": {
			"swtpm":                   beginDER,
			"swtpm-no-ek-cert":        mutBegin(func(r *rootgatev1.BeginEnrollmentRequest) { r.EkCertificate = nil }),
			"swtpm-truncated-ek-cert": mutBegin(func(r *rootgatev1.BeginEnrollmentRequest) { r.EkCertificate = half(r.EkCertificate) }),
			"swtpm-truncated-ak":      mutBegin(func(r *rootgatev1.BeginEnrollmentRequest) { r.Ak.Public = half(r.Ak.Public) }),
			"swtpm-truncated-ak-attestation": mutBegin(func(r *rootgatev1.BeginEnrollmentRequest) {
				r.Ak.CreateAttestation = half(r.Ak.CreateAttestation)
			}),
			"swtpm-wrong-token": mutBegin(func(r *rootgatev1.BeginEnrollmentRequest) { r.EnrollmentToken = "rgt_" + strings.Repeat("a", 32) }),
		},
		"FuzzFinishEnrollment": {
			"swtpm":             fx.Finish,
			"swtpm-other-nonce": mustMarshal(t, otherNonce),
			"swtpm-wrong-secret": mutFinish(finish, func(r *rootgatev1.FinishEnrollmentRequest) {
				r.ActivationSecret = bytes.Repeat([]byte{0}, len(r.ActivationSecret))
			}),
			"swtpm-truncated-certification": mutFinish(finish, func(r *rootgatev1.FinishEnrollmentRequest) {
				r.DeviceKey.CreateAttestation = half(r.DeviceKey.CreateAttestation)
			}),
			"swtpm-truncated-key-public": mutFinish(finish, func(r *rootgatev1.FinishEnrollmentRequest) {
				r.DeviceKey.Public = half(r.DeviceKey.Public)
			}),
			"swtpm-truncated-quote": mutFinish(finish, func(r *rootgatev1.FinishEnrollmentRequest) {
				r.Quotes[0].Quote = half(r.Quotes[0].Quote)
			}),
			"swtpm-oversized-event-log": mutFinish(finish, func(r *rootgatev1.FinishEnrollmentRequest) {
				r.EventLog = bytes.Repeat([]byte{0xee}, fuzzMaxEventLog+1)
			}),
			"swtpm-csr-other-key": mutFinish(finish, func(r *rootgatev1.FinishEnrollmentRequest) {
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				r.Csr, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
				if err != nil {
					t.Fatal(err)
				}
			}),
		},
	}
	for target, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("wrote testdata/swtpm-enroll.json (nonce %s) and %d seed directories", hex.EncodeToString(fx.Nonce), len(seeds))
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
