package agent

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rootgate/rootgate/internal/pemcert"
)

// Files in the state directory. Key blobs are wrapped by the TPM's storage
// root key: they are useless without that TPM, and no plaintext private key
// is ever written.
const (
	// AKFile holds the attestation key (attest.AK.Marshal).
	AKFile = "ak.blob"
	// KeyFile holds the device key (attest.Key.Marshal).
	KeyFile = "key.blob"
	// CertFile holds the device certificate (PEM).
	CertFile = "cert.pem"
	// ChainFile holds the issuing chain, issuing CA first (PEM).
	ChainFile = "chain.pem"
	// StateFile records the enrollment (JSON); it is written last, so a
	// state file that matches the other files marks a complete enrollment.
	StateFile = "state.json"
	lockFile  = ".lock"
)

// Permissions of the state directory and its files.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// State is what state.json records about the current enrollment.
type State struct {
	DeviceID   string    `json:"device_id"`
	SPIFFEID   string    `json:"spiffe_id,omitempty"`
	Serial     string    `json:"serial"`
	NotAfter   time.Time `json:"not_after"`
	Server     string    `json:"server"`
	EnrolledAt time.Time `json:"enrolled_at"`
	// KeySHA256 and CertSHA256 are hex SHA-256 digests of key.blob and
	// cert.pem as written with this state; a mismatch means the files are
	// not one enrollment (for example after a crash while writing them).
	KeySHA256  string `json:"key_sha256"`
	CertSHA256 string `json:"cert_sha256"`
}

// StateDir is an agent state directory: mode 0700, files 0600, every file
// replaced atomically (temporary file, fsync, rename, fsync of the
// directory).
type StateDir struct {
	path string
}

// OpenStateDir creates the directory at path if needed (mode 0700) and
// tightens its mode to 0700 if it is looser.
func OpenStateDir(path string) (*StateDir, error) {
	if path == "" {
		return nil, errors.New("agent: state directory not set")
	}
	path = filepath.Clean(path)
	if err := os.MkdirAll(path, DirMode); err != nil {
		return nil, fmt.Errorf("agent: state directory: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("agent: state directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("agent: state directory %s: not a directory", path)
	}
	if fi.Mode().Perm() != DirMode {
		if err := os.Chmod(path, DirMode); err != nil {
			return nil, fmt.Errorf("agent: state directory %s: set mode 0700: %w", path, err)
		}
	}
	return &StateDir{path: path}, nil
}

// Path returns the directory's path.
func (d *StateDir) Path() string { return d.path }

// File returns the path of the named file in the directory.
func (d *StateDir) File(name string) string { return filepath.Join(d.path, name) }

// Read returns the content of the named file; a missing file is an error
// wrapping fs.ErrNotExist.
func (d *StateDir) Read(name string) ([]byte, error) {
	b, err := os.ReadFile(d.File(name))
	if err != nil {
		return nil, fmt.Errorf("agent: read state: %w", err)
	}
	return b, nil
}

// Write atomically replaces the named file with data, mode 0600: readers see
// either the old content or the new, never a mix, even after a crash.
func (d *StateDir) Write(name string, data []byte) error {
	if err := writeFileAtomic(d.path, name, data); err != nil {
		return fmt.Errorf("agent: write %s: %w", d.File(name), err)
	}
	return nil
}

func writeFileAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(FileMode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	df, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer df.Close()
	return df.Sync()
}

// Enrollment is a complete, consistent enrollment read back from the state
// directory.
type Enrollment struct {
	State       State
	Certificate *x509.Certificate
	Chain       []*x509.Certificate
	KeyBlob     []byte
}

// ErrNotEnrolled is returned by LoadEnrollment when the directory holds no
// enrollment, or one whose files do not belong together.
var ErrNotEnrolled = errors.New("agent: not enrolled")

// LoadEnrollment reads state.json, cert.pem, chain.pem and key.blob and
// checks that they belong to one enrollment. It returns an error wrapping
// ErrNotEnrolled when state.json is missing or the files are inconsistent.
func (d *StateDir) LoadEnrollment() (*Enrollment, error) {
	raw, err := d.Read(StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, err
	}
	var e Enrollment
	if err := json.Unmarshal(raw, &e.State); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotEnrolled, d.File(StateFile), err)
	}
	certPEM, err := d.Read(CertFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotEnrolled, err)
	}
	if e.KeyBlob, err = d.Read(KeyFile); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotEnrolled, err)
	}
	if digest(certPEM) != e.State.CertSHA256 || digest(e.KeyBlob) != e.State.KeySHA256 {
		return nil, fmt.Errorf("%w: %s and %s do not match %s (interrupted write?)", ErrNotEnrolled, CertFile, KeyFile, StateFile)
	}
	certs, err := pemcert.ParsePEM(certPEM)
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("%w: %s: want one certificate: %v", ErrNotEnrolled, d.File(CertFile), err)
	}
	e.Certificate = certs[0]
	if chainPEM, err := d.Read(ChainFile); err == nil {
		if e.Chain, err = pemcert.ParsePEM(chainPEM); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNotEnrolled, d.File(ChainFile), err)
		}
	}
	return &e, nil
}

// SaveEnrollment writes the device key blob, the certificate, the chain and
// finally state.json (with digests of the key blob and certificate). Until
// state.json is replaced, LoadEnrollment keeps returning the previous
// enrollment or ErrNotEnrolled, never a mix of the two.
func (d *StateDir) SaveEnrollment(st State, keyBlob []byte, leaf *x509.Certificate, chain []*x509.Certificate) error {
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
	var chainPEM []byte
	for _, c := range chain {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	st.KeySHA256 = digest(keyBlob)
	st.CertSHA256 = digest(certPEM)
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("agent: encode state: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{KeyFile, keyBlob},
		{CertFile, certPEM},
		{ChainFile, chainPEM},
		{StateFile, append(raw, '\n')},
	} {
		if err := d.Write(f.name, f.data); err != nil {
			return err
		}
	}
	return nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Decision says whether Enroll must contact the server.
type Decision struct {
	// Enroll is true when a (re-)enrollment is needed.
	Enroll bool
	// Reason explains the decision: "not enrolled", "forced", "expired",
	// "renewal due" or "valid".
	Reason string
	// Remaining is the time left on the current certificate (0 if none).
	Remaining time.Duration
}

// Decide applies the idempotence rule: enroll when there is no complete
// enrollment, when forced, or when the certificate has renewBefore or less
// left at now; otherwise keep the current one.
func Decide(e *Enrollment, now time.Time, renewBefore time.Duration, force bool) Decision {
	if e == nil || e.Certificate == nil {
		return Decision{Enroll: true, Reason: "not enrolled"}
	}
	left := e.Certificate.NotAfter.Sub(now)
	switch {
	case force:
		return Decision{Enroll: true, Reason: "forced", Remaining: max(left, 0)}
	case left <= 0:
		return Decision{Enroll: true, Reason: "expired"}
	case left <= renewBefore:
		return Decision{Enroll: true, Reason: "renewal due", Remaining: left}
	}
	return Decision{Reason: "valid", Remaining: left}
}

// ReadEnrollment loads the enrollment in the state directory at path
// without creating or changing anything; see StateDir.LoadEnrollment.
func ReadEnrollment(path string) (*Enrollment, error) {
	if path == "" {
		return nil, errors.New("agent: state directory not set")
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNotEnrolled, path)
	}
	return (&StateDir{path: filepath.Clean(path)}).LoadEnrollment()
}
