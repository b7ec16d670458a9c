package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/internal/testenv"
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
