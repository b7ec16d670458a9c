package attestor

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestDeviceIDAndFingerprint(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := DeviceID(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	fp, err := EKFingerprint(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 32 || strings.ToLower(id) != id || strings.Contains(id, "=") {
		t.Errorf("DeviceID = %q, want 32 lowercase base32 chars", id)
	}
	if len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Errorf("EKFingerprint = %q, want 64 lowercase hex digits", fp)
	}
	for _, in := range []string{fp, strings.ToUpper(fp)} {
		got, err := DeviceIDFromFingerprint(in)
		if err != nil || got != id {
			t.Errorf("DeviceIDFromFingerprint(%q) = %q, %v; want %q", in, got, err, id)
		}
		n, err := NormalizeFingerprint(in)
		if err != nil || n != fp {
			t.Errorf("NormalizeFingerprint(%q) = %q, %v; want %q", in, n, err, fp)
		}
	}
	for _, bad := range []string{"", "zz", fp[:62], fp + "00"} {
		if _, err := DeviceIDFromFingerprint(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("DeviceIDFromFingerprint(%q) error = %v, want ErrMalformed", bad, err)
		}
	}
	if _, err := DeviceID(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("DeviceID(nil) error = %v, want ErrMalformed", err)
	}
}

// TestDeviceIDKnownAnswer pins the encoding so that IDs never change.
func TestDeviceIDKnownAnswer(t *testing.T) {
	fp := "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	got, err := DeviceIDFromFingerprint(fp)
	if err != nil {
		t.Fatal(err)
	}
	const want = "aaaqeayeaudaocajbifqydiob4ibceqt"
	if got != want {
		t.Errorf("DeviceIDFromFingerprint = %q, want %q", got, want)
	}
}
