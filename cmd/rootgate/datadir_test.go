package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/inventory"
)

// noTrustDomainConfig writes a configuration for the site without
// trust_domain and returns its path.
func (s *site) noTrustDomainConfig() string {
	s.t.Helper()
	return writeConfig(s.t, fmt.Sprintf("data_dir: %s\nhsm:\n  uri: %q\n", s.dataDir, s.uri()))
}

// runWith runs `rootgate ARGS --config cfg`, checking no output shows the
// site's secrets.
func (s *site) runWith(cfg string, args ...string) result {
	s.t.Helper()
	return run(s.t, nil, s.secrets(), append(args, "--config", cfg)...)
}

// startServer runs `rootgate server -o json ARGS --config cfg` on loopback
// port 0 and waits for its startup record and /readyz. The server is
// interrupted by the returned stop (and by t.Cleanup), which fails the
// test unless it exits 0.
func (s *site) startServer(cfg string, args ...string) (serverStarted, func()) {
	t := s.t
	t.Helper()
	hsmMu.Lock() // until the server is ready: it logs in and signs at start
	locked := true
	defer func() {
		if locked {
			hsmMu.Unlock()
		}
	}()
	args = append([]string{"server", "-o", "json", "--config", cfg, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, args...)
	cmd := exec.Command(rootgateBin, args...)
	cmd.Env = append(os.Environ(), "USER="+testUser)
	stderrPath := filepath.Join(t.TempDir(), "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	records := make(chan serverStarted, 1)
	done := make(chan error, 1)
	go func() {
		var st serverStarted
		if err := json.NewDecoder(bufio.NewReader(stdout)).Decode(&st); err == nil {
			records <- st
		}
		close(records)
		done <- cmd.Wait()
		stderr.Close()
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server exit after SIGINT: %v", err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("the server did not stop within 20s of SIGINT")
		}
		if t.Failed() {
			b, _ := os.ReadFile(stderrPath)
			t.Logf("server stderr:\n%s", b)
		}
	}
	t.Cleanup(stop)
	var st serverStarted
	select {
	case rec, okRec := <-records:
		if !okRec {
			stop()
			b, _ := os.ReadFile(stderrPath)
			t.Fatalf("the server printed no startup record:\n%s", b)
		}
		st = rec
	case <-time.After(20 * time.Second):
		t.Fatal("no startup record after 20s")
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + st.MetricsListen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never answered 200")
		}
	}
	hsmMu.Unlock()
	locked = false
	return st, stop
}

// TestTrustDomainRecorded: `ca init --trust-domain` records the trust
// domain in the data directory; every later command uses it when none is
// given, and refuses a different one, naming both.
func TestTrustDomainRecorded(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	cfg := s.noTrustDomainConfig() // trust_domain neither in the file nor on the command line
	tdPath := filepath.Join(s.dataDir, "ca", "trust-domain")

	var res caInitJSON
	decode(t, s.runWith(cfg, "ca", "init", "-o", "json", "--trust-domain", "corp.test"), &res)
	if res.Status != "created" || res.TrustDomain != "corp.test" || res.TrustDomainPath != tdPath {
		t.Fatalf("ca init --trust-domain corp.test: %+v", res)
	}
	if b := readFile(t, tdPath); string(b) != "corp.test\n" {
		t.Fatalf("%s = %q", tdPath, b)
	}

	// Not given: the recorded one, for issuing and for the server.
	csr := writePEM(t, t.TempDir(), "d.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
	var issued caIssueJSON
	decode(t, s.runWith(cfg, "ca", "issue", "--csr", csr, "--device-id", "dev1", "-o", "json"), &issued)
	if issued.SPIFFEID != "spiffe://corp.test/device/dev1" {
		t.Errorf("ca issue without --trust-domain: %s, want spiffe://corp.test/device/dev1", issued.SPIFFEID)
	}
	var show caShowJSON
	decode(t, s.runWith(cfg, "ca", "show", "-o", "json"), &show)
	if show.TrustDomain != "corp.test" || show.TrustDomainPath != tdPath {
		t.Errorf("ca show: trust domain %q in %q", show.TrustDomain, show.TrustDomainPath)
	}
	if r := ok(t, s.runWith(cfg, "ca", "show")); !strings.Contains(r.stdout, "Trust domain: corp.test (recorded in "+tdPath+")") {
		t.Errorf("ca show text lacks the trust domain: %s", r)
	}
	st, stop := s.startServer(cfg)
	if st.TrustDomain != "corp.test" {
		t.Errorf("server without --trust-domain: startup record trust domain %q, want corp.test", st.TrustDomain)
	}
	stop()

	// Given and equal: fine.
	ok(t, s.runWith(cfg, "devices", "list", "--trust-domain", "corp.test"))

	// Given and different, by flag or by file: refused, naming both.
	flagMsg := "data dir " + s.dataDir + " belongs to trust domain corp.test; --trust-domain says other.test"
	fileMsg := "data dir " + s.dataDir + " belongs to trust domain corp.test; trust_domain in " + s.config + " says cli.rootgate.test"
	for _, args := range [][]string{
		{"ca", "issue", "--csr", csr, "--device-id", "refused"},
		{"ca", "show"},
		{"ca", "init"},
		{"devices", "list"},
		{"devices", "register", "--ek-fingerprint", strings.Repeat("ab", 32)},
		{"tokens", "create"},
		{"audit", "verify"},
		{"server", "--listen", "127.0.0.1:0", "--metrics-listen", ""},
	} {
		r := s.runWith(cfg, append(args, "--trust-domain", "other.test")...)
		fails(t, r, flagMsg)
		if r.stdout != "" {
			t.Errorf("a refused command printed on stdout: %s", r)
		}
		fails(t, s.run(args...), fileMsg) // the site's file says trust_domain: cli.rootgate.test
	}
	// Nothing happened under the wrong trust domain.
	var devs []inventory.Device
	decode(t, s.runWith(cfg, "devices", "list", "-o", "json"), &devs)
	var toks []inventory.Token
	decode(t, s.runWith(cfg, "tokens", "list", "-o", "json"), &toks)
	if len(devs) != 0 || len(toks) != 0 {
		t.Errorf("refused commands left %d devices, %d tokens", len(devs), len(toks))
	}
	if b := readFile(t, tdPath); string(b) != "corp.test\n" {
		t.Errorf("refused commands changed %s to %q", tdPath, b)
	}
	st2, err := inventory.Open(context.Background(), filepath.Join(s.dataDir, "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	refused, err := st2.ListCertificates(context.Background(), "refused")
	st2.Close()
	if err != nil || len(refused) != 0 {
		t.Errorf("refused issue journaled %d certificates (%v)", len(refused), err)
	}
	fails(t, s.runWith(cfg, "devices", "list", "--trust-domain", "Not/A/Domain"), "--trust-domain", "not allowed")
}

// TestTrustDomainLegacyDataDir: a data directory from before the trust
// domain was recorded keeps working with the configured or default trust
// domain, and `ca init` with an explicit one records it.
func TestTrustDomainLegacyDataDir(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	cfg := s.noTrustDomainConfig()
	s.initCA()
	tdPath := filepath.Join(s.dataDir, "ca", "trust-domain")
	if err := os.Remove(tdPath); err != nil { // as made by an older rootgate
		t.Fatal(err)
	}
	csr := writePEM(t, t.TempDir(), "d.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
	for _, tc := range []struct {
		cfg  string
		args []string
		want string
	}{
		{cfg, nil, "spiffe://rootgate.local/device/d"},
		{s.config, nil, "spiffe://cli.rootgate.test/device/d"},
		{cfg, []string{"--trust-domain", "any.test"}, "spiffe://any.test/device/d"},
	} {
		var got caIssueJSON
		decode(t, s.runWith(tc.cfg, append([]string{"ca", "issue", "--csr", csr, "--device-id", "d", "-o", "json"}, tc.args...)...), &got)
		if got.SPIFFEID != tc.want {
			t.Errorf("legacy data dir, ca issue %v: %s, want %s", tc.args, got.SPIFFEID, tc.want)
		}
	}
	// ca init without an explicit trust domain records nothing (the
	// default is no statement) ...
	var res caInitJSON
	decode(t, s.runWith(cfg, "ca", "init", "-o", "json"), &res)
	if res.Status != "exists" || res.TrustDomainPath != "" {
		t.Errorf("ca init on a legacy data dir: %+v", res)
	}
	if _, err := os.Stat(tdPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ca init without a trust domain recorded one (err %v)", err)
	}
	// ... with one it records it, and it holds from then on.
	decode(t, s.runWith(cfg, "ca", "init", "-o", "json", "--trust-domain", "migrated.test"), &res)
	if res.Status != "exists" || res.TrustDomain != "migrated.test" || res.TrustDomainPath != tdPath {
		t.Errorf("ca init --trust-domain on a legacy data dir: %+v", res)
	}
	fails(t, s.run("devices", "list"), "belongs to trust domain migrated.test")
}

// TestMissingDataDir: every command but `ca init`, pointed at a data
// directory without a CA (mistyped, or empty), fails and creates nothing.
func TestMissingDataDir(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	csr := writePEM(t, t.TempDir(), "d.csr", "CERTIFICATE REQUEST", deviceCSR(t, newP256(t)))
	cert := writePEM(t, t.TempDir(), "c.pem", "CERTIFICATE", newOfflineRoot(t).cert.Raw)
	typo := filepath.Join(t.TempDir(), "typo")
	empty := t.TempDir()
	for _, dir := range []string{typo, empty} {
		for _, args := range [][]string{
			{"devices", "list"},
			{"devices", "register", "--ek-fingerprint", strings.Repeat("ab", 32)},
			{"devices", "show", "x"},
			{"tokens", "create"},
			{"tokens", "list"},
			{"audit", "verify"},
			{"audit", "list"},
			{"ca", "show"},
			{"ca", "issue", "--csr", csr, "--device-id", "d"},
			{"ca", "import-cert", cert},
			{"server", "--listen", "127.0.0.1:0", "--metrics-listen", ""},
		} {
			r := s.run(append(args, "--data-dir", dir)...)
			fails(t, r, "no Rootgate CA in "+dir+": run 'rootgate ca init' or check --data-dir")
			if r.stdout != "" {
				t.Errorf("a refused command printed on stdout: %s", r)
			}
		}
	}
	if _, err := os.Stat(typo); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused commands created %s (err %v)", typo, err)
	}
	if ents, err := os.ReadDir(empty); err != nil || len(ents) != 0 {
		t.Errorf("refused commands wrote into %s: %v %v", empty, ents, err)
	}
	// ca init is the one command that makes a data directory.
	var res caInitJSON
	decode(t, s.run("ca", "init", "-o", "json", "--data-dir", typo), &res)
	if res.Status != "created" {
		t.Errorf("ca init on a new data dir: %+v", res)
	}
	ok(t, s.run("devices", "list", "--data-dir", typo))
}

// TestServerListenFailureIssuesNothing: a server that cannot bind its
// listeners exits non-zero without signing a serving certificate.
func TestServerListenFailureIssuesNothing(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.initCA()
	ok(t, s.run("devices", "list")) // the store exists
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	fails(t, s.run("server", "--listen", "nonsense", "--metrics-listen", ""), "enrollment listener")
	fails(t, s.run("server", "--listen", busy.Addr().String(), "--metrics-listen", ""), "enrollment listener", "address already in use")
	fails(t, s.run("server", "--listen", "127.0.0.1:0", "--metrics-listen", busy.Addr().String()), "metrics listener", "address already in use")

	st, err := inventory.Open(context.Background(), filepath.Join(s.dataDir, "rootgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	certs, err := st.ListCertificates(context.Background(), "") // serving certificates belong to no device
	if err != nil || len(certs) != 0 {
		t.Errorf("failed server starts journaled %d serving certificates (%v)", len(certs), err)
	}
}

// TestSecondServerRefused: one server per data directory.
func TestSecondServerRefused(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.initCA()
	_, stop := s.startServer(s.config)
	r := s.run("server", "--listen", "127.0.0.1:0", "--metrics-listen", "")
	fails(t, r, "another rootgate server is running on "+s.dataDir)
	stop()
	// Released on exit: a new server starts.
	_, stop = s.startServer(s.config)
	stop()
}
