package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCert makes a self-signed certificate valid from notBefore to notAfter.
func testCert(t *testing.T, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x1234abcd),
		Subject:      pkix.Name{CommonName: "dev"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStateDirPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	sd, err := OpenStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkMode(t, dir, DirMode)

	// A looser existing directory is tightened.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStateDir(dir); err != nil {
		t.Fatal(err)
	}
	checkMode(t, dir, DirMode)

	// Files are 0600 whatever the umask, and replacing keeps them 0600.
	if err := sd.Write(AKFile, []byte("one")); err != nil {
		t.Fatal(err)
	}
	checkMode(t, sd.File(AKFile), FileMode)
	if err := os.Chmod(sd.File(AKFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sd.Write(AKFile, []byte("two")); err != nil {
		t.Fatal(err)
	}
	checkMode(t, sd.File(AKFile), FileMode)
	if b, _ := sd.Read(AKFile); string(b) != "two" {
		t.Fatalf("content = %q, want two", b)
	}

	// A file in place of the directory is refused.
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := OpenStateDir(f); err == nil {
		t.Fatal("OpenStateDir on a file: want an error")
	}
	if _, err := OpenStateDir(""); err == nil {
		t.Fatal("OpenStateDir(\"\"): want an error")
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Fatalf("%s: mode %#o, want %#o", path, got, want)
	}
}

func TestStateDirAtomicWriteLeavesNoTemporaries(t *testing.T) {
	sd, err := OpenStateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := sd.Write(KeyFile, []byte(strings.Repeat("x", i))); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(sd.Path())
	if len(ents) != 1 || ents[0].Name() != KeyFile {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only %s", names, KeyFile)
	}
	// A failed write (directory removed) leaves the old file and reports
	// the path.
	ro := filepath.Join(t.TempDir(), "ro")
	sd2, _ := OpenStateDir(ro)
	sd2.Write(KeyFile, []byte("old"))
	os.Chmod(ro, 0o500)
	defer os.Chmod(ro, 0o700)
	if os.Geteuid() != 0 { // root ignores directory permissions
		if err := sd2.Write(KeyFile, []byte("new")); err == nil || !strings.Contains(err.Error(), KeyFile) {
			t.Fatalf("write into read-only dir: %v", err)
		}
		if b, _ := sd2.Read(KeyFile); string(b) != "old" {
			t.Fatalf("after a failed write: %q, want old", b)
		}
	}
}

func TestSaveLoadEnrollment(t *testing.T) {
	sd, err := OpenStateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sd.LoadEnrollment(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("empty dir: %v, want ErrNotEnrolled", err)
	}
	if _, err := ReadEnrollment(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("missing dir: %v, want ErrNotEnrolled", err)
	}
	now := time.Now().Truncate(time.Second)
	leaf := testCert(t, now.Add(-time.Minute), now.Add(24*time.Hour))
	ca := testCert(t, now.Add(-time.Hour), now.Add(48*time.Hour))
	st := State{DeviceID: "dev1", SPIFFEID: "spiffe://td/device/dev1", Serial: "1234abcd", NotAfter: leaf.NotAfter, Server: "s:1", EnrolledAt: now}
	if err := sd.SaveEnrollment(st, []byte("blob"), leaf, []*x509.Certificate{ca}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{KeyFile, CertFile, ChainFile, StateFile} {
		checkMode(t, sd.File(f), FileMode)
	}
	e, err := ReadEnrollment(sd.Path())
	if err != nil {
		t.Fatal(err)
	}
	if e.State.DeviceID != "dev1" || e.State.SPIFFEID != st.SPIFFEID || !e.Certificate.Equal(leaf) ||
		len(e.Chain) != 1 || !e.Chain[0].Equal(ca) || string(e.KeyBlob) != "blob" || !e.State.NotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("loaded %+v", e.State)
	}

	// A key blob that is not the one recorded (a torn re-enrollment) makes
	// the enrollment incomplete rather than mismatched.
	if err := sd.Write(KeyFile, []byte("other blob")); err != nil {
		t.Fatal(err)
	}
	if _, err := sd.LoadEnrollment(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("mismatched key blob: %v, want ErrNotEnrolled", err)
	}
	sd.Write(KeyFile, []byte("blob"))
	if _, err := sd.LoadEnrollment(); err != nil {
		t.Fatal(err)
	}
	os.Remove(sd.File(CertFile))
	if _, err := sd.LoadEnrollment(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("missing cert: %v, want ErrNotEnrolled", err)
	}
	sd.Write(StateFile, []byte("{not json"))
	if _, err := sd.LoadEnrollment(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("corrupt state.json: %v, want ErrNotEnrolled", err)
	}
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	enr := func(left time.Duration) *Enrollment {
		return &Enrollment{Certificate: &x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(left)}}
	}
	cases := []struct {
		name   string
		e      *Enrollment
		before time.Duration
		force  bool
		enroll bool
		reason string
	}{
		{"none", nil, time.Hour, false, true, "not enrolled"},
		{"valid", enr(10 * time.Hour), 8 * time.Hour, false, false, "valid"},
		{"valid forced", enr(10 * time.Hour), 8 * time.Hour, true, true, "forced"},
		{"renewal due", enr(7 * time.Hour), 8 * time.Hour, false, true, "renewal due"},
		{"exactly at renewal point", enr(8 * time.Hour), 8 * time.Hour, false, true, "renewal due"},
		{"expired", enr(-time.Second), 8 * time.Hour, false, true, "expired"},
		{"zero margin keeps until expiry", enr(time.Second), 0, false, false, "valid"},
	}
	for _, tc := range cases {
		d := Decide(tc.e, now, tc.before, tc.force)
		if d.Enroll != tc.enroll || d.Reason != tc.reason {
			t.Errorf("%s: %+v, want enroll=%v reason=%q", tc.name, d, tc.enroll, tc.reason)
		}
	}
}

func TestEnrollKeepsValidCertificateWithoutNetwork(t *testing.T) {
	dir := t.TempDir()
	sd, _ := OpenStateDir(dir)
	now := time.Now()
	leaf := testCert(t, now.Add(-time.Minute), now.Add(24*time.Hour))
	st := State{DeviceID: "dev1", Serial: "1234abcd", NotAfter: leaf.NotAfter, Server: "127.0.0.1:1"}
	if err := sd.SaveEnrollment(st, []byte("blob"), leaf, nil); err != nil {
		t.Fatal(err)
	}
	var steps []Step
	// Server and TPM point nowhere: any network or TPM access would fail.
	e, err := New(Config{Server: "127.0.0.1:1", TPM: "tcp://127.0.0.1:1", StateDir: dir, RenewBefore: 8 * time.Hour,
		Progress: func(s Step) { steps = append(steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.Enroll(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !res.AlreadyEnrolled || res.Renewed || res.DeviceID != "dev1" || !res.NotAfter.Equal(leaf.NotAfter) || res.Reason != "valid" {
		t.Fatalf("result %+v", res)
	}
	if len(steps) != 1 || steps[0].Name != "already_enrolled" || !strings.Contains(steps[0].Message, "dev1") {
		t.Fatalf("steps %+v", steps)
	}

	// Zero RenewBefore means a third of the lifetime: 24h cert with 24h
	// left is kept; with RenewBefore above the time left, it re-enrolls and
	// (with nothing listening) fails naming the TPM.
	e2, _ := New(Config{Server: "127.0.0.1:1", TPM: "tcp://127.0.0.1:1", StateDir: dir})
	if res, err := e2.Enroll(t.Context()); err != nil || !res.AlreadyEnrolled {
		t.Fatalf("zero RenewBefore: %+v, %v", res, err)
	}
	e3, _ := New(Config{Server: "127.0.0.1:1", TPM: "tcp://127.0.0.1:1", StateDir: dir, RenewBefore: 25 * time.Hour})
	if _, err := e3.Enroll(t.Context()); err == nil || !strings.Contains(err.Error(), "TPM tcp://127.0.0.1:1") {
		t.Fatalf("renewal due with no TPM: %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{StateDir: "/x", TPM: "bogus"},
		{StateDir: "/x", Server: "no-port"},
		{StateDir: "/x", CABundle: []byte("not pem")},
		{StateDir: "/x", RenewBefore: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): want an error", cfg)
		}
	}
}

func TestOSName(t *testing.T) {
	p := filepath.Join(t.TempDir(), "os-release")
	os.WriteFile(p, []byte("NAME=\"Debian GNU/Linux\"\n# c\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"), 0o600)
	if got := osName(p); got != "Debian GNU/Linux 12 (bookworm)" {
		t.Fatalf("osName = %q", got)
	}
}
