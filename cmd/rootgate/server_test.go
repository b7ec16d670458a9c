package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestServerWithoutCA(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	r := s.run("server", "--listen", "127.0.0.1:0", "--metrics-listen", "")
	fails(t, r, "no Rootgate CA in "+s.dataDir, "run 'rootgate ca init' or check --data-dir")
	r = s.run("server", "-o", "json")
	fails(t, r, "rootgate ca init")
	if r.stdout != "" {
		t.Errorf("a server that did not start printed a startup record: %s", r)
	}
}

func TestServerBadSettings(t *testing.T) {
	t.Parallel()
	s := newSite(t, "")
	s.initCA()
	fails(t, s.run("server", "--mode", "open", "--listen", "127.0.0.1:0", "--metrics-listen", ""), `"open"`)
	fails(t, s.run("server", "--listen", "256.0.0.1:99999", "--metrics-listen", ""), "listen")
	fails(t, s.run("server", "--ek-roots", filepath.Join(t.TempDir(), "none"), "--listen", "127.0.0.1:0", "--metrics-listen", ""), "none")
}

// TestServerStartsAndStops: `rootgate server -o json` prints its startup
// record with the real addresses, is ready, and exits 0 on SIGINT.
func TestServerStartsAndStops(t *testing.T) {
	t.Parallel()
	s := newSite(t, "enroll:\n  mode: approval\n")
	s.initCA("--common-name", "Serving CA", "--trust-domain", "flag.rootgate.test")

	hsmMu.Lock() // until the server is ready: it logs in and signs at start
	locked := true
	defer func() {
		if locked {
			hsmMu.Unlock()
		}
	}()
	cmd := exec.Command(rootgateBin, "server", "-o", "json", "--config", s.config,
		"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--trust-domain", "flag.rootgate.test")
	cmd.Env = append(os.Environ(), "USER="+testUser)
	stderrPath := filepath.Join(t.TempDir(), "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var rest strings.Builder
	records := make(chan serverStarted, 1)
	go func() {
		dec := json.NewDecoder(bufio.NewReader(stdout))
		var st serverStarted
		if err := dec.Decode(&st); err == nil {
			records <- st
		}
		close(records)
		io.Copy(&rest, dec.Buffered())
		io.Copy(&rest, stdout)
		done <- cmd.Wait()
	}()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
		if t.Failed() {
			b, _ := os.ReadFile(stderrPath)
			t.Logf("server stderr:\n%s", b)
		}
	}()

	var st serverStarted
	select {
	case rec, okRec := <-records:
		if !okRec {
			t.Fatal("the server printed no startup record")
		}
		st = rec
	case <-time.After(20 * time.Second):
		t.Fatal("no startup record after 20s")
	}
	if st.Mode != "approval" || st.TrustDomain != "flag.rootgate.test" || st.CASubject != "CN=Serving CA" ||
		st.ServerCert == "" || strings.HasSuffix(st.Listen, ":0") || strings.HasSuffix(st.MetricsListen, ":0") {
		t.Errorf("startup record %+v", st)
	}
	var ready bool
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + st.MetricsListen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = true
				break
			}
		}
	}
	hsmMu.Unlock()
	locked = false
	if !ready {
		t.Fatal("/readyz never answered 200")
	}

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("server exit after SIGINT: %v, want status 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the server did not stop within 20s of SIGINT")
	}
	if strings.TrimSpace(rest.String()) != "" {
		t.Errorf("the server printed more than its startup record on stdout: %q", rest.String())
	}
	b, _ := os.ReadFile(stderrPath)
	if strings.Contains(string(b), s.tok.PIN) {
		t.Error("the server log contains the PIN")
	}
}
