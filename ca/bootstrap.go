package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rootgate/rootgate/internal/pemcert"
)

// Files in the CA directory <data-dir>/ca.
const (
	// ChainFile holds the CA chain in PEM, issuing CA first, up to the root.
	ChainFile = "chain.pem"
	// CSRFile holds the intermediate's certificate request while it waits
	// for the offline root's signature.
	CSRFile = "intermediate.csr"
)

// Defaults of InitOptions.
const (
	DefaultCommonName = "Rootgate Device CA"
	DefaultValidity   = 10 * 365 * 24 * time.Hour
)

// Dir returns the CA directory inside a data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "ca") }

// ChainPath returns the path of the CA chain file inside a data directory.
func ChainPath(dataDir string) string { return filepath.Join(Dir(dataDir), ChainFile) }

// CSRPath returns the path of the pending intermediate CSR inside a data
// directory.
func CSRPath(dataDir string) string { return filepath.Join(Dir(dataDir), CSRFile) }

// InitOptions configures Init.
type InitOptions struct {
	// DataDir, when set, receives <DataDir>/ca/chain.pem (root mode) or
	// <DataDir>/ca/intermediate.csr (intermediate mode). Init refuses to
	// overwrite an existing chain.pem (ErrCAExists).
	DataDir string
	// CommonName of the CA (default DefaultCommonName).
	CommonName string
	// Validity of a self-signed root (default DefaultValidity). Ignored in
	// intermediate mode: the offline root decides.
	Validity time.Duration
	// Intermediate asks for a CSR for an offline root instead of a
	// self-signed root.
	Intermediate bool
	// TrustDomain, when set with DataDir, is recorded in
	// <DataDir>/ca/trust-domain (TrustDomainFile) before the chain or the
	// CSR is written, so that no CA is installed without it. A different
	// trust domain already recorded there is refused (ErrTrustDomain).
	TrustDomain string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// InitResult is what Init produced.
type InitResult struct {
	// Certificate is the self-signed root; nil in intermediate mode.
	Certificate *x509.Certificate
	// CSR is the intermediate's certificate request; nil in root mode.
	CSR *x509.CertificateRequest
	// Path is the file written (chain.pem or intermediate.csr), if any.
	Path string
}

// Init bootstraps a CA whose key is signer (an HSM key). In root mode it
// self-signs a CA certificate (basic constraints CA with path length 0, as
// the root issues leaves directly; KeyUsage certSign|cRLSign; a subject key
// ID). In intermediate mode it creates a CSR that requests the same
// extensions, for an offline root to sign; ImportCert installs the result.
func Init(ctx context.Context, signer crypto.Signer, opts InitOptions) (*InitResult, error) {
	if signer == nil {
		return nil, errors.New("ca: init: no signer")
	}
	if opts.CommonName == "" {
		opts.CommonName = DefaultCommonName
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultValidity
	}
	if opts.Validity < 0 {
		return nil, fmt.Errorf("ca: init %q: negative validity %s: %w", opts.CommonName, opts.Validity, ErrLifetime)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DataDir != "" {
		if _, err := os.Stat(ChainPath(opts.DataDir)); err == nil {
			return nil, fmt.Errorf("ca: init %q: %s: %w", opts.CommonName, ChainPath(opts.DataDir), ErrCAExists)
		}
	}
	if opts.TrustDomain != "" {
		if err := ValidateTrustDomain(opts.TrustDomain); err != nil {
			return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
		}
		if opts.DataDir != "" {
			recorded, err := LoadTrustDomain(opts.DataDir)
			if err != nil {
				return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
			}
			if recorded != "" && recorded != opts.TrustDomain {
				return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName,
					&TrustDomainMismatchError{DataDir: opts.DataDir, Recorded: recorded, Given: opts.TrustDomain, Source: "the new CA"})
			}
		}
	}
	if err := CheckPublicKey(signer.Public()); err != nil {
		return nil, fmt.Errorf("ca: init %q: CA key: %w", opts.CommonName, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
	}
	subject := pkix.Name{CommonName: opts.CommonName}
	if opts.Intermediate {
		return initIntermediate(signer, subject, opts)
	}
	skid, err := subjectKeyID(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
	}
	now := opts.Now().UTC().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-DefaultBackdate),
		NotAfter:              now.Add(opts.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("ca: init %q: self-sign: %w", opts.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: init %q: parse the root: %w", opts.CommonName, err)
	}
	res := &InitResult{Certificate: cert}
	if opts.DataDir != "" {
		res.Path = ChainPath(opts.DataDir)
		if err := recordInitTrustDomain(opts); err != nil {
			return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
		}
		if err := writeFileAtomic(res.Path, EncodeCertificates([]*x509.Certificate{cert})); err != nil {
			return nil, fmt.Errorf("ca: init %q: %w", opts.CommonName, err)
		}
	}
	return res, nil
}

// recordInitTrustDomain records opts.TrustDomain, if any, in
// opts.DataDir. Init calls it just before it writes the chain or the CSR:
// a CA is never installed without its trust domain.
func recordInitTrustDomain(opts InitOptions) error {
	if opts.TrustDomain == "" {
		return nil
	}
	return RecordTrustDomain(opts.DataDir, opts.TrustDomain)
}

// basicConstraints is RFC 5280's BasicConstraints.
type basicConstraints struct {
	IsCA       bool `asn1:"optional"`
	MaxPathLen int  `asn1:"optional,default:-1"`
}

var (
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
)

func initIntermediate(signer crypto.Signer, subject pkix.Name, opts InitOptions) (*InitResult, error) {
	bc, err := asn1.Marshal(basicConstraints{IsCA: true, MaxPathLen: 0})
	if err != nil {
		return nil, fmt.Errorf("ca: init intermediate %q: %w", opts.CommonName, err)
	}
	// keyCertSign (bit 5) and cRLSign (bit 6).
	ku, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})
	if err != nil {
		return nil, fmt.Errorf("ca: init intermediate %q: %w", opts.CommonName, err)
	}
	tmpl := &x509.CertificateRequest{
		Subject: subject,
		ExtraExtensions: []pkix.Extension{
			{Id: oidBasicConstraints, Critical: true, Value: bc},
			{Id: oidKeyUsage, Critical: true, Value: ku},
		},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: init intermediate %q: sign CSR: %w", opts.CommonName, err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("ca: init intermediate %q: parse CSR: %w", opts.CommonName, err)
	}
	res := &InitResult{CSR: csr}
	if opts.DataDir != "" {
		res.Path = CSRPath(opts.DataDir)
		if err := recordInitTrustDomain(opts); err != nil {
			return nil, fmt.Errorf("ca: init intermediate %q: %w", opts.CommonName, err)
		}
		if err := writeFileAtomic(res.Path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})); err != nil {
			return nil, fmt.Errorf("ca: init intermediate %q: %w", opts.CommonName, err)
		}
	}
	return res, nil
}

// subjectKeyID is RFC 7093 method 1: the leftmost 160 bits of the SHA-256
// of the subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key ID: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("subject key ID: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// checkCACert reports whether cert may sign certificates.
func checkCACert(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("certificate %q (serial %s) is not a CA certificate: %w", cert.Subject, serialHex(cert), ErrCertificate)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate %q (serial %s) lacks KeyUsage certSign: %w", cert.Subject, serialHex(cert), ErrCertificate)
	}
	return nil
}

// ImportCert installs the CA certificate an offline root signed for the
// HSM key signer. certPEM holds the CA certificate first (optionally
// followed by its chain); chainPEM holds further intermediates and the
// root. The certificate must be a CA certificate whose public key is the
// signer's, and it must chain to a self-signed root among the given
// certificates at the current time. The verified chain, issuing CA first and
// the root last, is written to <dataDir>/ca/chain.pem (replacing any
// earlier one for the same key) and returned; a pending intermediate.csr is
// removed. The trust domain recorded by Init (TrustDomainFile) is kept.
func ImportCert(ctx context.Context, signer crypto.Signer, dataDir string, certPEM, chainPEM []byte) ([]*x509.Certificate, error) {
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: import certificate: %w", err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("ca: import certificate: no certificate in the input: %w", ErrCertificate)
	}
	extra, err := ParseCertificates(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: import certificate: chain: %w", err)
	}
	cert := certs[0]
	extra = append(extra, certs[1:]...)
	op := fmt.Sprintf("ca: import certificate %q (serial %s)", cert.Subject, serialHex(cert))
	if err := checkCACert(cert); err != nil {
		return nil, fmt.Errorf("ca: import certificate: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, signer.Public()) {
		return nil, fmt.Errorf("%s: its public key is not the HSM key's: %w", op, ErrCertificate)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	haveRoot := false
	for _, c := range append([]*x509.Certificate{cert}, extra...) {
		if isSelfSigned(c) {
			roots.AddCert(c)
			haveRoot = true
		} else if c != cert {
			inter.AddCert(c)
		}
	}
	if !haveRoot {
		return nil, fmt.Errorf("%s: no self-signed root among the given certificates (pass the root with the chain): %w", op, ErrCertificate)
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("%s: does not chain to the given root: %w", op, ErrCertificate), err)
	}
	chain := chains[0]
	for _, c := range chain[1:] {
		if err := checkCACert(c); err != nil {
			return nil, fmt.Errorf("%s: chain: %w", op, err)
		}
	}
	if dataDir != "" {
		if err := writeFileAtomic(ChainPath(dataDir), EncodeCertificates(chain)); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if err := os.Remove(CSRPath(dataDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: remove the pending CSR: %w", op, err)
		}
	}
	return chain, nil
}

// isSelfSigned reports whether c names and signs itself.
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// LoadChain reads <dataDir>/ca/chain.pem and checks that its first
// certificate is a CA certificate and that each certificate is signed by the
// next. A missing file is reported with an error wrapping ErrNoCA and
// fs.ErrNotExist.
func LoadChain(dataDir string) ([]*x509.Certificate, error) {
	path := ChainPath(dataDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ca: load chain %s: %w: %w", path, ErrNoCA, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: load chain: %w", err)
	}
	chain, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("ca: load chain %s: %w", path, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("ca: load chain %s: no certificate: %w", path, ErrNoCA)
	}
	if err := checkCACert(chain[0]); err != nil {
		return nil, fmt.Errorf("ca: load chain %s: %w", path, err)
	}
	for k := 0; k+1 < len(chain); k++ {
		if err := chain[k].CheckSignatureFrom(chain[k+1]); err != nil {
			return nil, errors.Join(fmt.Errorf("ca: load chain %s: certificate %d (%q) is not signed by certificate %d (%q): %w",
				path, k, chain[k].Subject, k+1, chain[k+1].Subject, ErrCertificate), err)
		}
	}
	return chain, nil
}

// LoadCSR reads the pending intermediate CSR <dataDir>/ca/intermediate.csr.
// A missing file is reported with an error wrapping fs.ErrNotExist.
func LoadCSR(dataDir string) (*x509.CertificateRequest, error) {
	data, err := os.ReadFile(CSRPath(dataDir))
	if err != nil {
		return nil, fmt.Errorf("ca: load CSR: %w", err)
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		der = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("ca: load CSR %s: %w", CSRPath(dataDir), err)
	}
	return csr, nil
}

// ParseCertificates parses PEM "CERTIFICATE" blocks, or a single DER
// certificate when data is not PEM. Empty input yields no certificates.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	return pemcert.Parse(data)
}

// writeFileAtomic writes data to path through a temporary file and a
// rename, creating the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
