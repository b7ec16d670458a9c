package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecodeOverridesDefaults(t *testing.T) {
	cfg := DefaultServer()
	err := Decode([]byte(`
data_dir: /srv/rootgate
enroll:
  mode: approval
  pending_ttl: 90s
  ek_allowlist: [aa, bb]
ca:
  default_lifetime: 1h
`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/srv/rootgate" || cfg.Enroll.Mode != "approval" || cfg.Enroll.PendingTTL.Std() != 90*time.Second ||
		len(cfg.Enroll.EKAllowlist) != 2 || cfg.CA.DefaultLifetime.Std() != time.Hour {
		t.Fatalf("decoded %+v", cfg)
	}
	// Keys the file does not name keep their defaults.
	if cfg.TrustDomain != "rootgate.local" || cfg.Enroll.Listen != "127.0.0.1:8443" || cfg.Enroll.MaxPending != 10000 {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown top-level key": "data_dri: /x\n",
		"unknown nested key":    "enroll:\n  moed: token\n",
		"bad duration":          "enroll:\n  pending_ttl: soon\n",
		"number as duration":    "enroll:\n  pending_ttl: 60\n",
		"wrong type":            "enroll:\n  max_pending: many\n",
		"two documents":         "data_dir: /a\n---\ndata_dir: /b\n",
	} {
		cfg := DefaultServer()
		err := Decode([]byte(doc), &cfg)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if name == "unknown top-level key" && !strings.Contains(err.Error(), "data_dri") {
			t.Errorf("%s: error %q does not name the key", name, err)
		}
	}
}

func TestLoad(t *testing.T) {
	cfg := DefaultAgent()
	if err := Load("", &cfg); err != nil || cfg.TPM != "/dev/tpmrm0" {
		t.Fatalf("empty path: %v %+v", err, cfg)
	}
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("tpm: tcp://127.0.0.1:2321\nrenew_before: 2h\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Load(p, &cfg); err != nil || cfg.TPM != "tcp://127.0.0.1:2321" || cfg.RenewBefore.Std() != 2*time.Hour {
		t.Fatalf("load: %v %+v", err, cfg)
	}
	if err := Load(filepath.Join(t.TempDir(), "missing.yaml"), &cfg); err == nil {
		t.Fatal("missing file accepted")
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	if err := Load(empty, &cfg); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}
