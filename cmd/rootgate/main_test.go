package main

// The tests in this package run the real rootgate binary, built once by
// TestMain, as an operator would: against a real SoftHSM token (one per
// process, made by testenv.RunWithSoftHSM; tests keep apart by key label)
// and real SQLite stores in t.TempDir(). They check exit codes and what is
// printed on standard output and standard error.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/internal/testenv"
)

// rootgateBin is the binary built once for the package by TestMain.
var rootgateBin string

func TestMain(m *testing.M) { os.Exit(testenv.RunWithRootgate(m, &rootgateBin)) }

// testUser is $USER for the binary: admin commands record "cli:"+$USER.
const testUser = "cli-tester"

// result is what one run of the binary did.
type result struct {
	args   []string
	stdout string
	stderr string
	code   int
}

func (r result) String() string {
	return fmt.Sprintf("rootgate %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// output is standard output and standard error together.
func (r result) output() string { return r.stdout + r.stderr }

// hsmMu serialises the processes that use the SoftHSM token. SoftHSM's file
// store is not safe for concurrent use by several processes: while one
// process writes the token (a new key, a failed login) another may find no
// token at all or fail C_Login with CKR_GENERAL_ERROR. Commands that do not
// touch the HSM (devices, tokens) run in parallel.
var hsmMu sync.Mutex

// usesHSM reports whether `rootgate args...` opens the HSM.
func usesHSM(args []string) bool {
	return len(args) > 0 && (args[0] == "ca" || args[0] == "server")
}

// run runs the binary with args and the environment plus env, and checks
// that none of secrets appears in anything it printed.
func run(t *testing.T, env, secrets []string, args ...string) result {
	t.Helper()
	if usesHSM(args) {
		hsmMu.Lock()
		defer hsmMu.Unlock()
	}
	cmd := exec.Command(rootgateBin, args...)
	cmd.Env = append(os.Environ(), "USER="+testUser)
	cmd.Env = append(cmd.Env, env...)
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start rootgate: %v", err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("rootgate %s: still running after 30s\nstderr:\n%s", strings.Join(args, " "), stderr.String())
	}
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("rootgate %s: %v", strings.Join(args, " "), err)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(r.output(), s) {
			t.Errorf("a secret (%q) appears in the output of %s", s, r)
		}
	}
	return r
}

// ok fails the test unless r exited 0.
func ok(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("want success, got %s", r)
	}
	return r
}

// fails fails the test unless r exited non-zero with every one of want in
// its standard error, after the "rootgate:" prefix main prints.
func fails(t *testing.T, r result, want ...string) {
	t.Helper()
	if r.code == 0 {
		t.Errorf("want a non-zero exit, got %s", r)
		return
	}
	if !strings.Contains(r.stderr, "rootgate: ") {
		t.Errorf("stderr lacks the \"rootgate: \" error line: %s", r)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks %q: %s", w, r)
		}
	}
}

// decode decodes r's standard output as JSON into v, strictly.
func decode(t *testing.T, r result, v any) {
	t.Helper()
	ok(t, r)
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode the JSON of %s: %v", r, err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value in %s", r)
	}
}

// site is one Rootgate installation: a data directory with its own store,
// a CA key label in the process's SoftHSM token, and a configuration file
// naming both (so the PIN is never on a command line).
type site struct {
	t       *testing.T
	tok     *testenv.SoftHSMToken
	label   string
	dir     string
	dataDir string
	config  string
	// trustDomain is the file's trust_domain.
	trustDomain string
}

var labelRE = regexp.MustCompile(`[^a-z0-9]+`)

// uniqueLabel is a key label no other test uses.
func uniqueLabel(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	name := labelRE.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return "ca-" + strings.Trim(name, "-") + "-" + hex.EncodeToString(b)
}

// newSite makes a site with a fresh data directory and key label; extra
// YAML is appended to its configuration file.
func newSite(t *testing.T, extra string) *site {
	t.Helper()
	tok := testenv.SoftHSM(t)
	dir := t.TempDir()
	s := &site{
		t:           t,
		tok:         tok,
		label:       uniqueLabel(t),
		dir:         dir,
		dataDir:     filepath.Join(dir, "data"),
		config:      filepath.Join(dir, "rootgate.yaml"),
		trustDomain: "cli.rootgate.test",
	}
	yaml := fmt.Sprintf("data_dir: %s\ntrust_domain: %s\nhsm:\n  uri: %q\n", s.dataDir, s.trustDomain, s.uri())
	if err := os.WriteFile(s.config, []byte(yaml+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// configWithURI writes another configuration file for the site, the same
// but for the HSM URI, and returns its path.
func (s *site) configWithURI(uri string) string {
	s.t.Helper()
	p := filepath.Join(s.t.TempDir(), "rootgate.yaml")
	yaml := fmt.Sprintf("data_dir: %s\ntrust_domain: %s\nhsm:\n  uri: %q\n", s.dataDir, s.trustDomain, uri)
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// uri is the PKCS#11 URI of the site's CA key, with the PIN in it.
func (s *site) uri() string { return s.tok.URI(s.label) }

// secrets are the strings no output may contain.
func (s *site) secrets() []string { return []string{s.tok.PIN, s.tok.SOPIN} }

// run runs `rootgate ARGS --config <site config>`.
func (s *site) run(args ...string) result {
	s.t.Helper()
	return run(s.t, nil, s.secrets(), append(args, "--config", s.config)...)
}

// json runs `rootgate ARGS -o json --config <site config>` and decodes
// the output into v.
func (s *site) json(v any, args ...string) {
	s.t.Helper()
	decode(s.t, s.run(append(args, "-o", "json")...), v)
}

// initCA runs `rootgate ca init` for the site.
func (s *site) initCA(args ...string) caInitJSON {
	s.t.Helper()
	var out caInitJSON
	s.json(&out, append([]string{"ca", "init"}, args...)...)
	return out
}

// softCA installs in dataDir a CA made with an in-memory key, as
// `rootgate ca init` would but without the HSM, recording trustDomain. It
// is for tests of commands that never sign (devices, tokens, audit): they
// need a CA in the data directory, not its key.
func softCA(t *testing.T, dataDir, trustDomain string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Init(context.Background(), key, ca.InitOptions{DataDir: dataDir, CommonName: "Soft CA", TrustDomain: trustDomain}); err != nil {
		t.Fatal(err)
	}
}

// softCA installs a software CA (softCA) for the site's trust domain.
func (s *site) softCA() { s.t.Helper(); softCA(s.t, s.dataDir, s.trustDomain) }

// readFile returns the content of a file, failing the test if it cannot.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
