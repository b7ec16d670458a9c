package testenv

// SoftHSM reads its configuration (SOFTHSM2_CONF) once, at C_Initialize, and
// crypto11 keeps one initialised instance of a module per process, so a
// SoftHSM configuration is per process, not per test. It also reads its
// token directory only at C_Initialize: a token created by softhsm2-util
// after the module was initialised is not seen until every context of the
// process has closed. Hence the shape of these helpers:
//
//   - a package whose tests run in parallel makes one token for the whole
//     process in TestMain, before anything opens the module:
//
//     func TestMain(m *testing.M) { os.Exit(testenv.RunWithSoftHSM(m)) }
//
//     and its tests call testenv.SoftHSM(t) to get that token (tests keep
//     apart by using distinct key labels);
//
//   - a package without such a TestMain may call testenv.SoftHSM(t) from
//     tests that do not call t.Parallel: it then makes a token in
//     t.TempDir() and sets SOFTHSM2_CONF with t.Setenv for that test.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rootgate/rootgate/hsm"
)

// softhsmMeta is the file, beside softhsm2.conf, that describes the token
// NewSoftHSM made, so that SoftHSM(t) finds it from SOFTHSM2_CONF alone.
const softhsmMeta = "rootgate-testenv.json"

// SoftHSMModuleEnv overrides where the SoftHSM PKCS#11 module is looked for.
const SoftHSMModuleEnv = "ROOTGATE_SOFTHSM_MODULE"

// SoftHSMToken is an initialised SoftHSM token in a private token
// directory. Its fields are read-only.
type SoftHSMToken struct {
	Label      string // token label
	PIN        string // user PIN (random unless set by WithSoftHSMPIN)
	SOPIN      string // security officer PIN
	ModulePath string // the SoftHSM PKCS#11 module
	ConfPath   string // the softhsm2.conf that SOFTHSM2_CONF names
	TokenDir   string // SoftHSM's directories.tokendir

	owned   bool // Close removes the files
	prevEnv *string
	dir     string
}

// SoftHSMOption changes how a token is made.
type SoftHSMOption func(*softhsmOptions)

type softhsmOptions struct {
	label, pin, soPIN string
}

// WithSoftHSMLabel sets the token label (default "rootgate-test").
func WithSoftHSMLabel(label string) SoftHSMOption {
	return func(o *softhsmOptions) { o.label = label }
}

// WithSoftHSMPIN sets the user and SO PINs (default: random).
func WithSoftHSMPIN(pin, soPIN string) SoftHSMOption {
	return func(o *softhsmOptions) { o.pin, o.soPIN = pin, soPIN }
}

// SoftHSMModule returns the path of the SoftHSM PKCS#11 module, from
// $ROOTGATE_SOFTHSM_MODULE or the usual Debian and /usr/local places.
func SoftHSMModule() (string, error) {
	if p := os.Getenv(SoftHSMModuleEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("testenv: %s: %w", SoftHSMModuleEnv, err)
		}
		return p, nil
	}
	for _, p := range []string{
		"/usr/lib/softhsm/libsofthsm2.so",
		"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/local/lib/softhsm/libsofthsm2.so",
	} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("testenv: SoftHSM module libsofthsm2.so not found: run `make deps` (Debian package softhsm2)")
}

// NewSoftHSM writes a softhsm2.conf and a token directory in dir, points
// SOFTHSM2_CONF at it for the whole process (os.Setenv) and initialises a
// token with softhsm2-util. It is meant for TestMain, before any test opens
// the module; see RunWithSoftHSM. Close removes the files and restores
// SOFTHSM2_CONF.
func NewSoftHSM(dir string, opts ...SoftHSMOption) (*SoftHSMToken, error) {
	h, err := makeSoftHSM(dir, opts)
	if err != nil {
		return nil, err
	}
	if prev, ok := os.LookupEnv("SOFTHSM2_CONF"); ok {
		h.prevEnv = &prev
	}
	if err := os.Setenv("SOFTHSM2_CONF", h.ConfPath); err != nil {
		h.Close()
		return nil, fmt.Errorf("testenv: set SOFTHSM2_CONF: %w", err)
	}
	return h, nil
}

// RunWithSoftHSM makes a token for the process in a temporary directory
// (NewSoftHSM), runs the tests and removes the token. It returns the exit
// code for os.Exit; when the token cannot be made (softhsm2 not installed,
// for instance) it reports why and returns 1: the tests fail, they are not
// skipped.
func RunWithSoftHSM(m *testing.M, opts ...SoftHSMOption) int {
	dir, err := os.MkdirTemp("", "rootgate-softhsm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	h, err := NewSoftHSM(dir, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer h.Close()
	return m.Run()
}

// SoftHSM returns a SoftHSM token for the test. When SOFTHSM2_CONF names a
// configuration made by NewSoftHSM (as RunWithSoftHSM does in TestMain) it
// returns that process-wide token, whatever opts say, and is safe in
// parallel tests. Otherwise it makes a token in t.TempDir() and sets
// SOFTHSM2_CONF with t.Setenv, which the testing package forbids in tests
// that call t.Parallel. The token is removed by t.Cleanup. A missing
// softhsm2 installation fails the test (run `make deps`).
func SoftHSM(t testing.TB, opts ...SoftHSMOption) *SoftHSMToken {
	t.Helper()
	if conf := os.Getenv("SOFTHSM2_CONF"); conf != "" {
		h, err := loadSoftHSM(conf)
		if err == nil {
			return h
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	h, err := makeSoftHSM(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", h.ConfPath)
	t.Cleanup(func() { h.Close() })
	return h
}

// URI returns a PKCS#11 URI for the token, with its module path and PIN
// (pin-value), naming the key labelled object if object is not empty.
func (h *SoftHSMToken) URI(object string) string {
	var b strings.Builder
	b.WriteString("pkcs11:token=")
	b.WriteString(pctEncode(h.Label, ""))
	if object != "" {
		b.WriteString(";object=")
		b.WriteString(pctEncode(object, ""))
	}
	b.WriteString("?module-path=")
	b.WriteString(pctEncode(h.ModulePath, "/"))
	b.WriteString("&pin-value=")
	b.WriteString(pctEncode(h.PIN, ""))
	return b.String()
}

// Open opens the token with hsm.Open and opts, through URI(object); the
// Token is closed by t.Cleanup.
func (h *SoftHSMToken) Open(t testing.TB, object string, opts hsm.Options) *hsm.Token {
	t.Helper()
	u, err := hsm.ParseURI(h.URI(object))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := hsm.Open(context.Background(), u, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", u, err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

// Outage takes the token away, as an HSM outage would, by moving its token
// directory aside, and returns a function that brings it back (failing t if
// it cannot). If the test ends with the token still away, t.Cleanup brings it
// back. SoftHSM recovers only once every Token in the process has let go of
// the module, so a test that calls Outage must not run in parallel with
// others on the same token.
func (h *SoftHSMToken) Outage(t testing.TB) (restore func()) {
	t.Helper()
	away := h.TokenDir + ".away"
	if err := os.Rename(h.TokenDir, away); err != nil {
		t.Fatal(err)
	}
	moved := true
	t.Cleanup(func() {
		if moved {
			os.Rename(away, h.TokenDir)
		}
	})
	return func() {
		t.Helper()
		if !moved {
			return
		}
		if err := os.Rename(away, h.TokenDir); err != nil {
			t.Fatal(err)
		}
		moved = false
	}
}

// Close removes a token made by NewSoftHSM or by SoftHSM in t.TempDir()
// and restores SOFTHSM2_CONF after NewSoftHSM. On the shared token that
// SoftHSM returns from a TestMain-made configuration it does nothing.
func (h *SoftHSMToken) Close() error {
	if !h.owned {
		return nil
	}
	h.owned = false
	if h.prevEnv != nil {
		os.Setenv("SOFTHSM2_CONF", *h.prevEnv)
	} else if os.Getenv("SOFTHSM2_CONF") == h.ConfPath {
		os.Unsetenv("SOFTHSM2_CONF")
	}
	return errors.Join(
		os.RemoveAll(h.TokenDir),
		os.Remove(h.ConfPath),
		os.Remove(filepath.Join(h.dir, softhsmMeta)),
	)
}

func makeSoftHSM(dir string, opts []SoftHSMOption) (*SoftHSMToken, error) {
	o := softhsmOptions{label: "rootgate-test"}
	for _, f := range opts {
		f(&o)
	}
	if o.pin == "" {
		o.pin = randomPIN()
	}
	if o.soPIN == "" {
		o.soPIN = randomPIN()
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return nil, errors.New("testenv: softhsm2-util not found: run `make deps` (Debian package softhsm2)")
	}
	module, err := SoftHSMModule()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	h := &SoftHSMToken{
		Label:      o.label,
		PIN:        o.pin,
		SOPIN:      o.soPIN,
		ModulePath: module,
		ConfPath:   filepath.Join(dir, "softhsm2.conf"),
		TokenDir:   filepath.Join(dir, "tokens"),
		owned:      true,
		dir:        dir,
	}
	if err := os.MkdirAll(h.TokenDir, 0o700); err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	conf := fmt.Sprintf("# written by rootgate internal/testenv\n"+
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", h.TokenDir)
	if err := os.WriteFile(h.ConfPath, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", h.Label, "--pin", h.PIN, "--so-pin", h.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+h.ConfPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testenv: softhsm2-util --init-token --label %s: %w\n%s", h.Label, err, out)
	}
	meta, err := json.Marshal(softhsmFile{Label: h.Label, PIN: h.PIN, SOPIN: h.SOPIN, ModulePath: h.ModulePath, TokenDir: h.TokenDir})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, softhsmMeta), meta, 0o600); err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return h, nil
}

// softhsmFile is the content of softhsmMeta.
type softhsmFile struct {
	Label, PIN, SOPIN, ModulePath, TokenDir string
}

// loadSoftHSM returns the token described beside conf; an error wrapping
// os.ErrNotExist if conf was not made by NewSoftHSM.
func loadSoftHSM(conf string) (*SoftHSMToken, error) {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(conf), softhsmMeta))
	if err != nil {
		return nil, err
	}
	var f softhsmFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("testenv: %s: %w", softhsmMeta, err)
	}
	return &SoftHSMToken{
		Label: f.Label, PIN: f.PIN, SOPIN: f.SOPIN, ModulePath: f.ModulePath,
		ConfPath: conf, TokenDir: f.TokenDir, dir: filepath.Dir(conf),
	}, nil
}

func randomPIN() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// pctEncode percent-encodes every byte that is not unreserved (RFC 3986)
// and not in keep.
func pctEncode(s, keep string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-._~", c) >= 0 || strings.IndexByte(keep, c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
