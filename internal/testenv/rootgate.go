package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BuildRootgate builds cmd/rootgate into dir and returns the binary's path.
// Call it once from TestMain: the end-to-end tests run the real binary, as
// an operator would.
func BuildRootgate(dir string) (string, error) {
	bin := filepath.Join(dir, "rootgate")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/rootgate/rootgate/cmd/rootgate")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: go build rootgate: %v\n%s", err, out)
	}
	return bin, nil
}

// RunWithRootgate builds the rootgate binary into a temporary directory
// (BuildRootgate), sets *bin to its path and runs the tests with a SoftHSM
// token for the process (RunWithSoftHSM), then removes the binary. It
// returns the exit code for os.Exit: 1, with the reason on standard error,
// if the binary cannot be built.
//
//	func TestMain(m *testing.M) { os.Exit(testenv.RunWithRootgate(m, &rootgateBin)) }
func RunWithRootgate(m *testing.M, bin *string, opts ...SoftHSMOption) int {
	dir, err := os.MkdirTemp("", "rootgate-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bin, err = BuildRootgate(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return RunWithSoftHSM(m, opts...)
}

// ServerOptions configures a Rootgate server started by StartServer. The
// zero value is a token-mode server that trusts no EK.
type ServerOptions struct {
	Mode        string        // preregistered, token (default) or approval
	EKRoots     string        // directory of EK manufacturer roots
	EKAllowlist []string      // EK fingerprints trusted without a certificate
	MaxPending  int           // 0: the server's default
	PendingTTL  time.Duration // 0: the server's default
	TrustDomain string        // default "e2e.rootgate.test"
	KeyLabel    string        // CA key label in the token; default unique per server
}

// Rootgate is a `rootgate server` process on loopback with its own data
// directory and CA key in a SoftHSM token.
type Rootgate struct {
	Bin         string
	DataDir     string
	ConfigPath  string
	Addr        string // enrollment listener
	MetricsAddr string
	CABundle    string // the CA chain (PEM) that authenticates the server

	cmd      *exec.Cmd
	logPath  string
	done     chan struct{}
	stopOnce sync.Once
}

// StartServer initialises a CA in the SoftHSM token (`rootgate ca init`) and
// starts `rootgate server` on free loopback ports, waiting until /readyz
// answers. The process is stopped by t.Cleanup.
func StartServer(t testing.TB, bin string, tok *SoftHSMToken, opts ServerOptions) *Rootgate {
	t.Helper()
	dir := t.TempDir()
	if opts.TrustDomain == "" {
		opts.TrustDomain = "e2e.rootgate.test"
	}
	if opts.KeyLabel == "" {
		opts.KeyLabel = "ca-" + strings.ToLower(strings.ReplaceAll(filepath.Base(dir), "_", "-"))
	}
	cfg := map[string]any{
		"data_dir":       filepath.Join(dir, "data"),
		"trust_domain":   opts.TrustDomain,
		"metrics_listen": "127.0.0.1:0",
		"log_level":      "debug",
		"hsm":            map[string]any{"uri": tok.URI(opts.KeyLabel)},
	}
	enroll := map[string]any{"listen": "127.0.0.1:0", "server_names": []string{"localhost", "127.0.0.1"}, "poll_interval": "300ms"}
	if opts.Mode != "" {
		enroll["mode"] = opts.Mode
	}
	if opts.EKRoots != "" {
		enroll["ek_roots"] = opts.EKRoots
	}
	if len(opts.EKAllowlist) > 0 {
		enroll["ek_allowlist"] = opts.EKAllowlist
	}
	if opts.MaxPending > 0 {
		enroll["max_pending"] = opts.MaxPending
	}
	if opts.PendingTTL > 0 {
		enroll["pending_ttl"] = opts.PendingTTL.String()
	}
	cfg["enroll"] = enroll
	// JSON is YAML: the server reads this file as its configuration.
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	r := &Rootgate{
		Bin:        bin,
		DataDir:    filepath.Join(dir, "data"),
		ConfigPath: filepath.Join(dir, "rootgate.yaml"),
		logPath:    filepath.Join(dir, "server.log"),
		done:       make(chan struct{}),
	}
	r.CABundle = filepath.Join(r.DataDir, "ca", "chain.pem")
	if err := os.WriteFile(r.ConfigPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	// SoftHSM keeps a token in files that every process reads at login: a
	// process generating a key while another opens the token can make the
	// latter fail. Key generation and the server's first open of the token
	// are serialized across processes with a lock file beside the token.
	unlock, err := lockFile(tok.ConfPath + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if out, err := r.Admin("ca", "init", "--common-name", "E2E CA"); err != nil {
		t.Fatalf("rootgate ca init: %v\n%s", err, out)
	}

	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, "server", "--config", r.ConfigPath, "-o", "json")
	r.cmd.Stderr = logf
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); logf.Close(); close(r.done) }()
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(r.logPath)
			t.Logf("server log:\n%s", b)
		}
	})

	// The first line on stdout is the startup record with the real addresses.
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var buf bytes.Buffer
		for sc.Scan() {
			buf.WriteString(sc.Text())
			if strings.TrimSpace(sc.Text()) == "}" {
				lines <- buf.String()
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case l := <-lines:
		var started struct {
			Listen        string `json:"listen"`
			MetricsListen string `json:"metrics_listen"`
		}
		if err := json.Unmarshal([]byte(l), &started); err != nil {
			t.Fatalf("server startup record %q: %v", l, err)
		}
		r.Addr, r.MetricsAddr = started.Listen, started.MetricsListen
	case <-r.done:
		b, _ := os.ReadFile(r.logPath)
		t.Fatalf("rootgate server exited at start:\n%s", b)
	case <-time.After(30 * time.Second):
		t.Fatal("rootgate server: no startup record after 30s")
	}
	if err := r.waitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *Rootgate) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + r.MetricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("rootgate server on %s not ready after %s", r.Addr, d)
}

// lockFile takes an exclusive flock on path (created if needed) and
// returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("testenv: lock %s: %w", path, err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// Stop interrupts the server and waits for it to exit.
func (r *Rootgate) Stop() {
	r.stopOnce.Do(func() {
		if r.cmd == nil || r.cmd.Process == nil {
			return
		}
		r.cmd.Process.Signal(os.Interrupt)
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			r.cmd.Process.Kill()
			<-r.done
		}
	})
}

// Admin runs an admin command (`rootgate ARGS --config FILE`) against the
// server's data directory and HSM and returns its standard output; on
// failure the error carries the exit status and standard error.
func (r *Rootgate) Admin(args ...string) ([]byte, error) {
	return r.AdminContext(context.Background(), args...)
}

// AdminContext is Admin with a context bounding the command.
func (r *Rootgate) AdminContext(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "--config", r.ConfigPath)
	cmd := exec.CommandContext(ctx, r.Bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("rootgate %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// AdminJSON runs an admin command with -o json and decodes its output
// into v, failing the test on any error.
func (r *Rootgate) AdminJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out, err := r.Admin(append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			t.Fatalf("rootgate %s: decode %q: %v", strings.Join(args, " "), out, err)
		}
	}
}

// Enroll runs `rootgate agent enroll` for the swtpm against this server
// with the given state directory and extra flags; it returns standard
// output (the JSON result) and an error carrying standard error on failure.
func (r *Rootgate) Enroll(ctx context.Context, tpm *Swtpm, stateDir string, extra ...string) ([]byte, error) {
	args := append([]string{"agent", "enroll", "-o", "json",
		"--server", r.Addr, "--server-name", "localhost",
		"--tpm", tpm.Device(), "--state-dir", stateDir, "--ca-bundle", r.CABundle,
	}, extra...)
	cmd := exec.CommandContext(ctx, r.Bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("rootgate agent enroll: %w: %s", err, stderr.String())
	}
	return out, nil
}
