package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rootgate/rootgate/ca"
)

func TestServingCert(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(context.Background(), key, ca.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.New(key, []*x509.Certificate{res.Certificate}, newFakeStore(), ca.Config{TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewServingCert(context.Background(), iss, []string{"enroll.example.org", "127.0.0.1"}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := sc.Leaf()
	if len(leaf.DNSNames) != 1 || len(leaf.IPAddresses) != 1 || leaf.NotAfter.Sub(leaf.NotBefore) < time.Hour {
		t.Fatalf("serving certificate: DNS %v IP %v validity %v", leaf.DNSNames, leaf.IPAddresses, leaf.NotAfter.Sub(leaf.NotBefore))
	}
	roots := x509.NewCertPool()
	roots.AddCert(res.Certificate)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "enroll.example.org", Roots: roots}); err != nil {
		t.Fatal(err)
	}
	if err := sc.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := sc.GetCertificate(nil)
	if c.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("Renew kept the old certificate")
	}
	if cfg := sc.TLSConfig(); cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("TLS config: min %x client auth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	if _, err := NewServingCert(context.Background(), iss, nil, 0, nil); err == nil {
		t.Fatal("NewServingCert without names succeeded")
	}
}

func TestLoadEKVerifier(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ca.Init(context.Background(), key, ca.InitOptions{CommonName: "TPM Vendor Root"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pemRoot := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: res.Certificate.Raw})
	if err := os.WriteFile(filepath.Join(dir, "root.pem"), pemRoot, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".hidden"), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	fp := strings.Repeat("AB", 32)
	v, err := LoadEKVerifier(dir, []string{fp})
	if err != nil {
		t.Fatal(err)
	}
	if v.Roots == nil || !v.Allowlist[strings.ToLower(fp)] {
		t.Fatalf("verifier: roots %v allowlist %v", v.Roots, v.Allowlist)
	}
	if _, err := LoadEKVerifier(dir, []string{"not-hex"}); err == nil {
		t.Error("bad allowlist entry accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, "broken.pem"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadEKVerifier(dir, nil); err == nil || !strings.Contains(err.Error(), "broken.pem") {
		t.Errorf("broken file: %v, want an error naming it", err)
	}
	if _, err := LoadEKVerifier(t.TempDir(), nil); err == nil {
		t.Error("empty roots directory accepted")
	}
	if v, err := LoadEKVerifier("", nil); err != nil || v.Roots != nil {
		t.Errorf("no directory: %v, %v", v, err)
	}
}

func TestRecoverInterceptor(t *testing.T) {
	ic := recoverInterceptor(slog.New(slog.DiscardHandler))
	_, err := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x"}, func(context.Context, any) (any, error) {
		panic("hostile input")
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panic became %v, want Internal", err)
	}
}
