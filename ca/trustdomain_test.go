package ca

import (
	"context"
	"crypto/elliptic"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"
)

// TestInitRecordsTrustDomain: Init writes the trust domain next to the chain
// (root) or the CSR (intermediate); ImportCert keeps it; a different one is
// refused.
func TestInitRecordsTrustDomain(t *testing.T) {
	ctx := context.Background()
	key := newECKey(t, elliptic.P256())

	root := t.TempDir()
	if td, err := LoadTrustDomain(root); err != nil || td != "" {
		t.Fatalf("LoadTrustDomain of an empty directory = %q, %v; want \"\", nil", td, err)
	}
	if _, err := Init(ctx, key, InitOptions{DataDir: root, TrustDomain: "corp.test"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(TrustDomainPath(root)); err != nil || string(b) != "corp.test\n" {
		t.Fatalf("%s = %q, %v", TrustDomainPath(root), b, err)
	}
	if td, err := LoadTrustDomain(root); err != nil || td != "corp.test" {
		t.Fatalf("LoadTrustDomain = %q, %v", td, err)
	}
	// Recording the same is a no-op; another is refused, naming both.
	if err := RecordTrustDomain(root, "corp.test"); err != nil {
		t.Errorf("RecordTrustDomain(same): %v", err)
	}
	err := RecordTrustDomain(root, "other.test")
	var mm *TrustDomainMismatchError
	if !errors.Is(err, ErrTrustDomain) || !errors.As(err, &mm) || mm.Recorded != "corp.test" || mm.Given != "other.test" ||
		!strings.Contains(err.Error(), "data dir "+root+" belongs to trust domain corp.test") || !strings.Contains(err.Error(), "other.test") {
		t.Errorf("RecordTrustDomain(other): %v", err)
	}
	// Init over a recorded trust domain that differs (the chain was removed)
	// is refused before anything is written.
	if err := os.Remove(ChainPath(root)); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(ctx, key, InitOptions{DataDir: root, TrustDomain: "other.test"}); !errors.Is(err, ErrTrustDomain) {
		t.Errorf("Init with another trust domain: %v, want ErrTrustDomain", err)
	}
	if _, err := os.Stat(ChainPath(root)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused Init wrote %s", ChainPath(root))
	}
	if _, err := Init(ctx, key, InitOptions{DataDir: root, TrustDomain: "BAD DOMAIN"}); !errors.Is(err, ErrIdentity) {
		t.Errorf("Init with an invalid trust domain: %v, want ErrIdentity", err)
	}

	// Intermediate: recorded with the CSR, kept by ImportCert.
	inter := t.TempDir()
	res, err := Init(ctx, key, InitOptions{DataDir: inter, Intermediate: true, TrustDomain: "corp.test"})
	if err != nil {
		t.Fatal(err)
	}
	if td, _ := LoadTrustDomain(inter); td != "corp.test" {
		t.Fatalf("trust domain after Init --intermediate: %q", td)
	}
	rootKey, rootCert := testRoot(t)
	cert := signCSR(t, res.CSR, rootKey, rootCert, true, time.Now().Add(24*time.Hour))
	if _, err := ImportCert(ctx, key, inter, pemOf(cert), pemOf(rootCert)); err != nil {
		t.Fatal(err)
	}
	if td, err := LoadTrustDomain(inter); err != nil || td != "corp.test" {
		t.Errorf("trust domain after ImportCert: %q, %v", td, err)
	}

	// Without TrustDomain nothing is recorded (callers that predate it).
	plain := t.TempDir()
	if _, err := Init(ctx, key, InitOptions{DataDir: plain}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(TrustDomainPath(plain)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Init without a trust domain wrote %s (%v)", TrustDomainPath(plain), err)
	}
}

func TestResolveTrustDomain(t *testing.T) {
	legacy := t.TempDir() // no record: from before the trust domain was recorded
	for given, want := range map[string]string{"": "", "a.test": "a.test"} {
		if got, err := ResolveTrustDomain(legacy, given, "--trust-domain"); err != nil || got != want {
			t.Errorf("ResolveTrustDomain(no record, %q) = %q, %v; want %q", given, got, err, want)
		}
	}
	dir := t.TempDir()
	if err := RecordTrustDomain(dir, "corp.test"); err != nil {
		t.Fatal(err)
	}
	for _, given := range []string{"", "corp.test"} {
		if got, err := ResolveTrustDomain(dir, given, "--trust-domain"); err != nil || got != "corp.test" {
			t.Errorf("ResolveTrustDomain(corp.test, %q) = %q, %v", given, got, err)
		}
	}
	_, err := ResolveTrustDomain(dir, "other.test", "--trust-domain")
	want := "data dir " + dir + " belongs to trust domain corp.test; --trust-domain says other.test"
	if !errors.Is(err, ErrTrustDomain) || err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("mismatch: %v; want ErrTrustDomain starting %q", err, want)
	}

	// A corrupt record is an error, not a silent default.
	if err := os.WriteFile(TrustDomainPath(dir), []byte("Not A Domain\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveTrustDomain(dir, "", "x"); !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), TrustDomainPath(dir)) {
		t.Errorf("corrupt record: %v", err)
	}
}

func TestHasCA(t *testing.T) {
	ctx := context.Background()
	key := newECKey(t, elliptic.P256())
	missing := t.TempDir() + "/typo"
	for _, dir := range []string{missing, t.TempDir()} {
		if has, err := HasCA(dir); has || err != nil {
			t.Errorf("HasCA(%s) = %v, %v; want false", dir, has, err)
		}
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("HasCA created %s", missing)
	}
	root, inter := t.TempDir(), t.TempDir()
	if _, err := Init(ctx, key, InitOptions{DataDir: root}); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(ctx, key, InitOptions{DataDir: inter, Intermediate: true}); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, inter} {
		if has, err := HasCA(dir); !has || err != nil {
			t.Errorf("HasCA(%s) = %v, %v; want true", dir, has, err)
		}
	}
	// A path through a regular file is no CA either, not an error.
	if has, err := HasCA(ChainPath(root)); has || err != nil {
		t.Errorf("HasCA(a file) = %v, %v", has, err)
	}
}
