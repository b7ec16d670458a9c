package testenv

import (
	"bytes"
	"crypto/x509"
	"testing"

	"github.com/google/go-attestation/attest"
)

func TestSwtpmManufactureAndOpen(t *testing.T) {
	ca := NewEKCA(t)
	// Two TPMs at once: the first use of the CA creates it, without a race.
	states := ca.ManufactureN(t, 2)
	if ca.Root() == nil || ca.Issuer() == nil {
		t.Fatal("EK CA has no root or issuer after manufacturing")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	inter := x509.NewCertPool()
	inter.AddCert(ca.Issuer())

	var eks [][]byte
	for _, st := range states {
		sw := StartSwtpm(t, st)
		tpm := sw.OpenTPM(t)
		got, err := tpm.EKs()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 || got[0].Certificate == nil {
			t.Fatalf("EKs() = %+v, want an RSA EK with its certificate", got)
		}
		cert, err := attest.ParseEKCertificate(st.EKCert)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cert.Raw, got[0].Certificate.Raw) {
			t.Error("the EK certificate in NV differs from the one swtpm_setup wrote")
		}
		cert.UnhandledCriticalExtensions = nil // the TCG SAN; attestor handles it properly
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("EK certificate does not chain to the private CA: %v", err)
		}
		der, _ := x509.MarshalPKIXPublicKey(got[0].Public)
		eks = append(eks, der)
		tpm.Close()
		sw.Close()
		sw.Close() // idempotent
		select {
		case <-sw.Done():
		default:
			t.Error("swtpm still running after Close")
		}
	}
	if bytes.Equal(eks[0], eks[1]) {
		t.Error("two manufactured TPMs share an EK")
	}
}

func TestSwtpmNoCertAndClone(t *testing.T) {
	ca := NewEKCA(t)
	st := ca.ManufactureNoCert(t)
	if st.EKCert != nil {
		t.Fatal("ManufactureNoCert produced an EK certificate")
	}
	sw1 := StartSwtpm(t, st)
	sw2 := StartSwtpm(t, st.Clone(t)) // same TPM, second process
	var eks [][]byte
	for _, sw := range []*Swtpm{sw1, sw2} {
		tpm := sw.OpenTPM(t)
		got, err := tpm.EKs()
		if err != nil || len(got) == 0 {
			t.Fatalf("EKs() = %v, %v", got, err)
		}
		if got[0].Certificate != nil {
			t.Error("EK has a certificate")
		}
		der, _ := x509.MarshalPKIXPublicKey(got[0].Public)
		eks = append(eks, der)
	}
	if !bytes.Equal(eks[0], eks[1]) {
		t.Error("a cloned state is not the same TPM")
	}
	if sw1.Addr() == sw2.Addr() {
		t.Error("two swtpms on one address")
	}
}
