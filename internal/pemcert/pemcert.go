// Package pemcert parses X.509 certificates in the forms Rootgate reads
// them: PEM files of any number of certificates, or a single DER
// certificate. It does no I/O.
package pemcert

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// Parse returns the certificates in data: those of ParsePEM when data holds
// PEM, otherwise the single DER certificate it must be. Empty input, or only
// white space, yields no certificates and no error.
func Parse(data []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("parse DER certificate: %w", err)
		}
		return []*x509.Certificate{c}, nil
	}
	return ParsePEM(data)
}

// ParsePEM returns the certificates of the PEM "CERTIFICATE" blocks in data,
// in order. Other blocks and text around them are skipped, so data without
// PEM yields no certificates. An error names the position of the
// certificate that does not parse.
func ParsePEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
}
