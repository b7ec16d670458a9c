// Package testenv starts real things for tests: swtpm devices with EK
// certificates from a private CA, and the like. Every helper registers its
// cleanup with t.Cleanup and returns a handle whose Close stops it early.
package testenv

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/rootgate/rootgate/internal/tpmdev"
)

// EKCA is a private swtpm-localca: a root and an issuing CA, made on the
// first Manufacture, that sign the EK certificates of the TPMs it
// manufactures. It never touches the system's /var/lib/swtpm-localca.
type EKCA struct {
	dir      string // holds the configuration files
	stateDir string // swtpm-localca statedir: keys, certificates, serial
	setupCfg string // swtpm_setup.conf naming the localca configuration

	// mu serializes manufacturing until the CA exists: swtpm_localca creates
	// its root and issuer on first use, and two first uses must not race.
	mu sync.Mutex
}

// NewEKCA makes a private EK CA in a temporary directory. Fails the test if
// swtpm_setup, swtpm_localca or swtpm is not installed (make deps installs them).
func NewEKCA(t testing.TB) *EKCA {
	t.Helper()
	requireTools(t, "swtpm", "swtpm_setup", "swtpm_localca")
	dir := t.TempDir()
	ca := &EKCA{
		dir:      dir,
		stateDir: filepath.Join(dir, "localca"),
		setupCfg: filepath.Join(dir, "swtpm_setup.conf"),
	}
	if err := os.Mkdir(ca.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	localcaCfg := filepath.Join(dir, "swtpm-localca.conf")
	localcaOpts := filepath.Join(dir, "swtpm-localca.options")
	files := map[string]string{
		localcaCfg:  fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca.stateDir),
		localcaOpts: "--platform-manufacturer Rootgate\n--platform-version 2.1\n--platform-model swtpm-test\n",
		ca.setupCfg: fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			lookPath(t, "swtpm_localca"), localcaCfg, localcaOpts),
	}
	for name, content := range files {
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca
}

// RootPEM returns the CA's self-signed root certificate in PEM. It exists
// once the CA has manufactured its first TPM.
func (ca *EKCA) RootPEM() []byte { return ca.readPEM("swtpm-localca-rootca-cert.pem") }

// IssuerPEM returns the certificate of the CA that signs EK certificates (an
// intermediate under RootPEM) in PEM. It exists once the CA has manufactured
// its first TPM.
func (ca *EKCA) IssuerPEM() []byte { return ca.readPEM("issuercert.pem") }

// Root returns the parsed RootPEM.
func (ca *EKCA) Root() *x509.Certificate { return mustParsePEM(ca.RootPEM()) }

// Issuer returns the parsed IssuerPEM.
func (ca *EKCA) Issuer() *x509.Certificate { return mustParsePEM(ca.IssuerPEM()) }

// RootsDir writes RootPEM and IssuerPEM, and nothing else, into a fresh
// temporary directory and returns its path: what `--ek-roots DIR` expects.
func (ca *EKCA) RootsDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range map[string][]byte{"root.pem": ca.RootPEM(), "issuer.pem": ca.IssuerPEM()} {
		if len(b) == 0 {
			t.Fatal("testenv: EK CA has no certificates yet; manufacture a TPM first")
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (ca *EKCA) readPEM(name string) []byte {
	b, err := os.ReadFile(filepath.Join(ca.stateDir, name))
	if err != nil {
		return nil
	}
	return b
}

func mustParsePEM(b []byte) *x509.Certificate {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil
	}
	return c
}

// TPMState is the persistent state of one manufactured swtpm: one TPM with
// its own endorsement seed, hence its own EK.
type TPMState struct {
	// Dir is the swtpm state directory (--tpmstate dir=Dir).
	Dir string
	// EKCert is the DER EK certificate of the RSA 2048 EK (also in NV index
	// 0x1c00002), nil when manufactured without certificates.
	EKCert []byte
	// ECCEKCert is the DER EK certificate of the ECC P-384 EK (NV index
	// 0x1c00016), nil when manufactured without certificates.
	ECCEKCert []byte
}

// Manufacture makes a new TPM whose RSA and ECC EKs carry certificates
// signed by this CA (about 1.5 s; use ManufactureN for several). The state
// lives in a temporary directory of t.
func (ca *EKCA) Manufacture(t testing.TB) *TPMState {
	t.Helper()
	return ca.ManufactureN(t, 1)[0]
}

// ManufactureN makes n distinct TPMs with EK certificates, in parallel.
func (ca *EKCA) ManufactureN(t testing.TB, n int) []*TPMState {
	t.Helper()
	return ca.manufactureN(t, n, true)
}

// ManufactureNoCert makes a new TPM with EKs but no EK certificates, as for
// a device admitted by an EK allowlist.
func (ca *EKCA) ManufactureNoCert(t testing.TB) *TPMState {
	t.Helper()
	return ca.manufactureN(t, 1, false)[0]
}

func (ca *EKCA) manufactureN(t testing.TB, n int, certs bool) []*TPMState {
	t.Helper()
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	states := make([]*TPMState, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if certs {
				// swtpm_localca creates the CA on first use: not twice at once.
				if _, err := os.Stat(filepath.Join(ca.stateDir, "issuercert.pem")); err != nil {
					ca.mu.Lock()
					defer ca.mu.Unlock()
				}
			}
			states[i], errs[i] = manufacture(dirs[i], ca.setupCfg, certs)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return states
}

func manufacture(base, setupCfg string, certs bool) (*TPMState, error) {
	st := &TPMState{Dir: filepath.Join(base, "state")}
	certDir := filepath.Join(base, "ekcerts")
	for _, d := range []string{st.Dir, certDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	logPath := filepath.Join(base, "swtpm_setup.log")
	args := []string{"--tpm2", "--tpmstate", st.Dir, "--config", setupCfg, "--pcr-banks", "sha256", "--logfile", logPath}
	if certs {
		args = append(args, "--create-ek-cert", "--write-ek-cert-files", certDir)
	} else {
		args = append(args, "--createek")
	}
	cmd := exec.Command("swtpm_setup", args...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+base, "HOME="+base)
	if out, err := cmd.CombinedOutput(); err != nil {
		logb, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("testenv: swtpm_setup %s: %v\n%s\n%s", strings.Join(args, " "), err, out, logb)
	}
	if certs {
		var err error
		if st.EKCert, err = os.ReadFile(filepath.Join(certDir, "ek-rsa2048.crt")); err != nil {
			return nil, fmt.Errorf("testenv: swtpm_setup wrote no RSA EK certificate: %v", err)
		}
		st.ECCEKCert, _ = os.ReadFile(filepath.Join(certDir, "ek-secp384r1.crt"))
	}
	return st, nil
}

// Clone copies the state into a new temporary directory of t: the copy is
// the same TPM (same EK), usable by a second swtpm process.
func (s *TPMState) Clone(t testing.TB) *TPMState {
	t.Helper()
	c := *s
	c.Dir = filepath.Join(t.TempDir(), "state")
	if err := os.CopyFS(c.Dir, os.DirFS(s.Dir)); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(c.Dir, ".lock"))
	return &c
}

// Swtpm is a running swtpm process in socket mode serving TPM 2.0 commands
// on a loopback TCP port.
type Swtpm struct {
	addr string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited

	closeOnce sync.Once
}

// StartSwtpm starts a swtpm on the given state, listening on a free
// 127.0.0.1 port, and waits until it accepts connections. Only one swtpm
// may run on a state at a time (swtpm locks it); use Clone for another.
func StartSwtpm(t testing.TB, state *TPMState) *Swtpm {
	t.Helper()
	requireTools(t, "swtpm")
	// The control channel is a UNIX socket in a short private directory (the
	// path length of a socket is limited, and t.TempDir can be long).
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s, err := startSwtpm(state.Dir, sockDir, port, attempt)
		if err == nil {
			t.Cleanup(func() { s.Close() })
			return s
		}
		lastErr = err // most likely another process took the port meanwhile
	}
	t.Fatalf("testenv: start swtpm: %v", lastErr)
	return nil
}

func startSwtpm(stateDir, sockDir string, port, attempt int) (*Swtpm, error) {
	logPath := filepath.Join(sockDir, fmt.Sprintf("swtpm-%d.log", attempt))
	ctrl := filepath.Join(sockDir, fmt.Sprintf("ctrl-%d.sock", attempt))
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--server", "type=tcp,port="+strconv.Itoa(port)+",bindaddr=127.0.0.1",
		"--ctrl", "type=unixio,path="+ctrl,
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+logPath+",level=1")
	out, err := os.Create(logPath + ".out")
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Swtpm{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, log: logPath, done: make(chan struct{})}
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(s.done) }()

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			b, _ := os.ReadFile(logPath + ".out")
			l, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("swtpm on port %d exited: %v\n%s%s", port, waitErr, b, l)
		default:
		}
		// The server port is ready once the control socket exists and the
		// port accepts; a probe connection is harmless (swtpm serves the
		// next client when one disconnects).
		if _, err := os.Stat(ctrl); err == nil {
			if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
				c.Close()
				// Our process must still own the port: a stranger might.
				select {
				case <-s.done:
					continue
				case <-time.After(20 * time.Millisecond):
				}
				return s, nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Close()
	return nil, fmt.Errorf("swtpm on port %d not ready after 10s", port)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr returns the swtpm's TPM command address, "127.0.0.1:PORT".
func (s *Swtpm) Addr() string { return s.addr }

// Device returns the device string for tpmdev.Open and `rootgate agent
// --tpm`: "tcp://127.0.0.1:PORT".
func (s *Swtpm) Device() string { return "tcp://" + s.addr }

// OpenTPM connects go-attestation to the swtpm and closes the connection at
// the end of the test. swtpm serves one connection at a time: close this TPM
// before anything else (an agent under test) connects.
func (s *Swtpm) OpenTPM(t testing.TB) *attest.TPM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tpm, err := tpmdev.Open(ctx, s.Device())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

// Close stops the swtpm (SIGTERM, then SIGKILL after 5 s) and waits for it
// to exit. It is safe to call more than once.
func (s *Swtpm) Close() error {
	s.closeOnce.Do(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	return nil
}

// Done is closed when the swtpm process has exited.
func (s *Swtpm) Done() <-chan struct{} { return s.done }

func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("testenv: %s not installed: run `make deps` (Debian packages swtpm, swtpm-tools)", n)
		}
	}
}

func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			t.Fatalf("testenv: %s not installed: run `make deps`", name)
		}
		t.Fatal(err)
	}
	return p
}
