package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/internal/testenv"
	"github.com/rootgate/rootgate/inventory"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunWithSoftHSM(m)) }

// newConfig returns a server configuration on loopback port 0 whose CA
// key (label) lives in the package's SoftHSM token; with initCA the CA is
// created first, as `rootgate ca init` would.
func newConfig(t *testing.T, label string, initCA bool) config.Server {
	t.Helper()
	tok := testenv.SoftHSM(t)
	cfg := config.DefaultServer()
	cfg.DataDir = t.TempDir()
	cfg.HSM.URI = tok.URI(label)
	cfg.Enroll.Listen = "127.0.0.1:0"
	cfg.MetricsListen = "127.0.0.1:0"
	if initCA {
		ctx := context.Background()
		signer, err := tok.Open(t, label, hsm.Options{}).GenerateSigner(ctx, label, hsm.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.Init(ctx, signer, ca.InitOptions{DataDir: cfg.DataDir, CommonName: "Server Test CA"}); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRunServesAndStops: New binds both listeners, Run serves health,
// readiness and metrics, and returns nil once its context is cancelled.
func TestRunServesAndStops(t *testing.T) {
	cfg := newConfig(t, "server-run", true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.CA().Subject.CommonName != "Server Test CA" || s.Mode() != "token" {
		t.Fatalf("CA %s, mode %s", s.CA().Subject, s.Mode())
	}
	if leaf := s.ServingCertificate(); leaf.CheckSignatureFrom(s.CA()) != nil {
		t.Fatal("serving certificate not issued by the CA")
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	base := "http://" + s.MetricsAddr()
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || !strings.Contains(body, "ok") {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "rootgate_enroll_pending_challenges") {
		t.Fatalf("/metrics: %d, no enrollment metrics", code)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(ShutdownGrace + 5*time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("metrics listener still open after Run returned")
	}
}

// TestNewRefuses: no CA, a missing key, a bad mode: New fails naming the
// problem and leaves no listener bound.
func TestNewRefuses(t *testing.T) {
	noCA := newConfig(t, "server-noca", false)
	if _, err := New(context.Background(), noCA, nil); !errors.Is(err, ErrNoCA) || !strings.Contains(err.Error(), "rootgate ca init") {
		t.Fatalf("no CA: %v", err)
	}

	missingKey := newConfig(t, "server-key", true)
	missingKey.HSM.URI = testenv.SoftHSM(t).URI("no-such-key")
	if _, err := New(context.Background(), missingKey, nil); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("missing key: %v", err)
	}

	badMode := newConfig(t, "server-mode", true)
	badMode.Enroll.Mode = "open-door"
	badMode.Enroll.Listen = "127.0.0.1:0"
	if _, err := New(context.Background(), badMode, nil); err == nil || !strings.Contains(err.Error(), "open-door") {
		t.Fatalf("bad mode: %v", err)
	}
}

// TestNewTrustDomain: the trust domain recorded with the CA is used when the
// configuration leaves it empty, and a different one is refused naming both.
func TestNewTrustDomain(t *testing.T) {
	cfg := newConfig(t, "server-td", true)
	if err := ca.RecordTrustDomain(cfg.DataDir, "corp.test"); err != nil {
		t.Fatal(err)
	}
	cfg.TrustDomain = "other.test"
	_, err := New(context.Background(), cfg, nil)
	if !errors.Is(err, ca.ErrTrustDomain) || !strings.Contains(err.Error(), "data dir "+cfg.DataDir+" belongs to trust domain corp.test") ||
		!strings.Contains(err.Error(), "says other.test") {
		t.Fatalf("mismatch: %v", err)
	}
	if certs := serverCerts(t, cfg.DataDir); len(certs) != 0 {
		t.Errorf("a refused server journaled %d certificates", len(certs))
	}
	for _, td := range []string{"", "corp.test"} {
		cfg.TrustDomain = td
		s, err := New(context.Background(), cfg, nil)
		if err != nil {
			t.Fatalf("trust domain %q: %v", td, err)
		}
		if s.TrustDomain() != "corp.test" {
			t.Errorf("trust domain %q: server uses %q, want the recorded corp.test", td, s.TrustDomain())
		}
		s.Close()
	}

	// A data directory from before the record keeps the configured one.
	legacy := newConfig(t, "server-td-legacy", true)
	legacy.TrustDomain = "legacy.test"
	s, err := New(context.Background(), legacy, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.TrustDomain() != "legacy.test" {
		t.Errorf("legacy data dir: trust domain %q", s.TrustDomain())
	}
	s.Close()
}

// serverCerts returns the serving certificates journaled in dataDir's store
// (none if there is no store).
func serverCerts(t *testing.T, dataDir string) []*inventory.Certificate {
	t.Helper()
	if _, err := os.Stat(StorePath(dataDir)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	st, err := inventory.Open(context.Background(), StorePath(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	certs, err := st.ListCertificates(context.Background(), "") // serving certificates have no device
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// TestNewListenFailsBeforeIssuing: a bad or busy listen address fails New
// before the serving certificate is signed and journaled.
func TestNewListenFailsBeforeIssuing(t *testing.T) {
	cfg := newConfig(t, "server-listen", true)
	st, err := inventory.Open(context.Background(), StorePath(cfg.DataDir)) // the store exists, as after admin commands
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for name, set := range map[string]func(*config.Server){
		"nonsense":     func(c *config.Server) { c.Enroll.Listen = "nonsense" },
		"busy enroll":  func(c *config.Server) { c.Enroll.Listen = busy.Addr().String() },
		"busy metrics": func(c *config.Server) { c.MetricsListen = busy.Addr().String() },
	} {
		c := cfg
		set(&c)
		if _, err := New(context.Background(), c, nil); err == nil || !strings.Contains(err.Error(), "listener") {
			t.Errorf("%s: %v, want a listener error", name, err)
		}
	}
	if certs := serverCerts(t, cfg.DataDir); len(certs) != 0 {
		t.Errorf("failed starts journaled %d serving certificates", len(certs))
	}
	// The control: a start that binds journals exactly one.
	s, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if certs := serverCerts(t, cfg.DataDir); len(certs) != 1 {
		t.Errorf("one start journaled %d serving certificates, want 1", len(certs))
	}
}

// TestNewOneServerPerDataDir: a second server on the same data directory is
// refused while the first runs, and may start once it is closed.
func TestNewOneServerPerDataDir(t *testing.T) {
	cfg := newConfig(t, "server-lock", true)
	first, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), cfg, nil)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another rootgate server is running on "+cfg.DataDir) {
		t.Fatalf("second server: %v", err)
	}
	if certs := serverCerts(t, cfg.DataDir); len(certs) != 1 {
		t.Errorf("%d serving certificates journaled, want only the first server's", len(certs))
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	again.Close()
}

// TestNewMissingDataDir: a data directory without a CA is refused and
// nothing is created in it.
func TestNewMissingDataDir(t *testing.T) {
	cfg := newConfig(t, "server-typo", false)
	cfg.DataDir = filepath.Join(cfg.DataDir, "typo")
	if _, err := New(context.Background(), cfg, nil); !errors.Is(err, ErrNoCA) || !strings.Contains(err.Error(), "no Rootgate CA in "+cfg.DataDir) {
		t.Fatalf("missing data dir: %v", err)
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New created %s (%v)", cfg.DataDir, err)
	}
}
