package pemcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

func selfSigned(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParse(t *testing.T) {
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	var two []byte
	two = append(two, "comment\n"...)
	two = append(two, pemOf("CERTIFICATE", a.Raw)...)
	two = append(two, pemOf("EC PRIVATE KEY", []byte("skipped"))...)
	two = append(two, pemOf("CERTIFICATE", b.Raw)...)

	for _, tc := range []struct {
		name    string
		in      []byte
		want    []*x509.Certificate
		wantErr bool
	}{
		{"empty", nil, nil, false},
		{"white space", []byte(" \n\t"), nil, false},
		{"PEM with other blocks", two, []*x509.Certificate{a, b}, false},
		{"DER", a.Raw, []*x509.Certificate{a}, false},
		{"garbage", []byte("garbage"), nil, true},
		{"bad PEM certificate", pemOf("CERTIFICATE", []byte("bad")), nil, true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.wantErr || len(got) != len(tc.want) {
			t.Fatalf("%s: Parse = %d certificates, %v", tc.name, len(got), err)
		}
		for i := range got {
			if !got[i].Equal(tc.want[i]) {
				t.Errorf("%s: certificate %d is %q, want %q", tc.name, i, got[i].Subject, tc.want[i].Subject)
			}
		}
	}

	// ParsePEM ignores anything that is not PEM, DER included.
	if got, err := ParsePEM(a.Raw); err != nil || got != nil {
		t.Errorf("ParsePEM(DER) = %v, %v; want nothing", got, err)
	}
}
