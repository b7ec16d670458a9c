package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultLifetime    = 24 * time.Hour
	DefaultMinLifetime = 5 * time.Minute
	DefaultMaxLifetime = 7 * 24 * time.Hour
	DefaultBackdate    = time.Minute
)

// serialBits is the size of the random serial numbers of issued certificates.
const serialBits = 128

// Config sets an Issuer's identity namespace and lifetimes. The zero value
// of every field except TrustDomain selects a default.
type Config struct {
	// TrustDomain is the SPIFFE trust domain of device identities. Required.
	TrustDomain string
	// DefaultLifetime applies when a request asks for none (default 24h).
	DefaultLifetime time.Duration
	// MinLifetime is the shortest lifetime issued (default 5m); shorter
	// requests are refused with ErrLifetime.
	MinLifetime time.Duration
	// MaxLifetime is the longest lifetime issued (default 7 days); longer
	// requests are refused with ErrLifetime.
	MaxLifetime time.Duration
	// Backdate moves NotBefore into the past to absorb clock skew
	// (default 1m). A negative value disables backdating.
	Backdate time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Issuer signs leaf certificates with an HSM-held CA key and journals each
// one before returning it. It is safe for concurrent use.
type Issuer struct {
	signer  crypto.Signer
	chain   []*x509.Certificate // issuing CA first
	bundle  []byte              // PEM of chain
	journal Journal
	cfg     Config
	// notAfter is the earliest NotAfter along the chain: no leaf outlives it.
	notAfter time.Time
	// notBefore is the latest NotBefore along the chain: no leaf predates it.
	notBefore time.Time
}

// New returns an Issuer that signs with signer as the CA certificate
// chain[0]; chain runs from the issuing CA up to (optionally) the root.
// The signer's public key must be chain[0]'s, and chain[0] must be a CA
// certificate allowed to sign certificates.
func New(signer crypto.Signer, chain []*x509.Certificate, j Journal, cfg Config) (*Issuer, error) {
	if signer == nil {
		return nil, errors.New("ca: new issuer: no signer")
	}
	if j == nil {
		return nil, errors.New("ca: new issuer: no journal")
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("ca: new issuer: empty chain: %w", ErrNoCA)
	}
	if err := checkCACert(chain[0]); err != nil {
		return nil, fmt.Errorf("ca: new issuer: %w", err)
	}
	if !publicKeysEqual(signer.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("ca: new issuer: CA certificate %q does not match the signing key: %w", chain[0].Subject, ErrCertificate)
	}
	if err := ValidateTrustDomain(cfg.TrustDomain); err != nil {
		return nil, fmt.Errorf("ca: new issuer: %w", err)
	}
	if cfg.DefaultLifetime == 0 {
		cfg.DefaultLifetime = DefaultLifetime
	}
	if cfg.MinLifetime == 0 {
		cfg.MinLifetime = DefaultMinLifetime
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = DefaultMaxLifetime
	}
	if cfg.Backdate == 0 {
		cfg.Backdate = DefaultBackdate
	} else if cfg.Backdate < 0 {
		cfg.Backdate = 0
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MinLifetime < 0 || cfg.MaxLifetime < cfg.MinLifetime || cfg.DefaultLifetime < cfg.MinLifetime || cfg.DefaultLifetime > cfg.MaxLifetime {
		return nil, fmt.Errorf("ca: new issuer: lifetimes must satisfy 0 <= min (%s) <= default (%s) <= max (%s): %w",
			cfg.MinLifetime, cfg.DefaultLifetime, cfg.MaxLifetime, ErrLifetime)
	}
	is := &Issuer{
		signer:  signer,
		chain:   append([]*x509.Certificate(nil), chain...),
		journal: j,
		cfg:     cfg,
	}
	for i, c := range is.chain {
		if i == 0 || c.NotAfter.Before(is.notAfter) {
			is.notAfter = c.NotAfter
		}
		if c.NotBefore.After(is.notBefore) {
			is.notBefore = c.NotBefore
		}
	}
	is.bundle = EncodeCertificates(is.chain)
	return is, nil
}

// Certificate returns the issuing CA certificate.
func (i *Issuer) Certificate() *x509.Certificate { return i.chain[0] }

// Chain returns the CA chain, issuing CA first, as a new slice.
func (i *Issuer) Chain() []*x509.Certificate { return append([]*x509.Certificate(nil), i.chain...) }

// Bundle returns the CA chain in PEM, issuing CA first and the root (when
// known) last: what a relying party needs to verify issued certificates.
func (i *Issuer) Bundle() []byte { return bytes.Clone(i.bundle) }

// TrustDomain returns the SPIFFE trust domain of issued device identities.
func (i *Issuer) TrustDomain() string { return i.cfg.TrustDomain }

// DeviceRequest asks for a device certificate.
type DeviceRequest struct {
	// PublicKey is the device key to certify. IssueDeviceCSR takes it from
	// the CSR; if set there too, the two must be equal.
	PublicKey crypto.PublicKey
	// DeviceID becomes spiffe://<trust-domain>/device/<DeviceID>.
	DeviceID string
	// EKFingerprint (hex SHA-256 of the EK's PKIX DER), when set, becomes a
	// TCG permanentIdentifier otherName.
	EKFingerprint string
	// Lifetime of the certificate; zero means the configured default.
	Lifetime time.Duration
}

// Issued is a certificate returned by an Issuer, already journaled.
type Issued struct {
	// Certificate is the issued leaf.
	Certificate *x509.Certificate
	// Chain is the issuer chain, issuing CA first; the leaf is excluded.
	Chain []*x509.Certificate
}

// PEM returns the leaf followed by its issuer chain, PEM-encoded.
func (is *Issued) PEM() []byte {
	return EncodeCertificates(append([]*x509.Certificate{is.Certificate}, is.Chain...))
}

// IssueDevice certifies req.PublicKey as device req.DeviceID: URI SAN
// spiffe://<trust-domain>/device/<id>, the EK's permanentIdentifier when
// req.EKFingerprint is set, EKU clientAuth, KeyUsage digitalSignature, a
// random 128-bit serial. The certificate is committed to the journal before
// it is returned; if the journal fails, no certificate is returned.
func (i *Issuer) IssueDevice(ctx context.Context, req DeviceRequest) (*Issued, error) {
	if err := CheckPublicKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: issue device %q: %w", req.DeviceID, err)
	}
	id, err := DeviceSPIFFEID(i.cfg.TrustDomain, req.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("ca: issue device: %w", err)
	}
	fp := ""
	if req.EKFingerprint != "" {
		if fp, err = normalizeEKFingerprint(req.EKFingerprint); err != nil {
			return nil, fmt.Errorf("ca: issue device %q: %w", req.DeviceID, err)
		}
	}
	san := marshalDeviceSAN(id.String(), fp)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: req.DeviceID},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		// The SAN is not critical: the subject is not empty.
		ExtraExtensions: []pkix.Extension{{Id: OIDSubjectAltName, Value: san}},
	}
	return i.issue(ctx, tmpl, req.PublicKey, req.Lifetime, IssuanceRecord{Kind: KindDevice, DeviceID: req.DeviceID, Subject: id.String()})
}

// IssueDeviceCSR is IssueDevice for the key in a DER certificate request:
// the CSR's signature must verify and its key must pass CheckPublicKey. The
// CSR's subject and extensions are ignored; the template decides the
// certificate's contents.
func (i *Issuer) IssueDeviceCSR(ctx context.Context, csrDER []byte, req DeviceRequest) (*Issued, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("ca: issue device %q: parse CSR: %w", req.DeviceID, ErrBadCSR), err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errors.Join(fmt.Errorf("ca: issue device %q: CSR signature does not verify: %w", req.DeviceID, ErrBadCSR), err)
	}
	if req.PublicKey != nil && !publicKeysEqual(req.PublicKey, csr.PublicKey) {
		return nil, fmt.Errorf("ca: issue device %q: CSR key differs from the expected device key: %w", req.DeviceID, ErrBadCSR)
	}
	req.PublicKey = csr.PublicKey
	return i.IssueDevice(ctx, req)
}

// IssueServer certifies pub for a TLS server (EKU serverAuth) named by
// dnsNames and ips, for lifetime (zero: the configured default). The
// certificate is journaled (KindServer) before it is returned.
func (i *Issuer) IssueServer(ctx context.Context, pub crypto.PublicKey, dnsNames []string, ips []net.IP, lifetime time.Duration) (*Issued, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, fmt.Errorf("ca: issue server certificate: no DNS name or IP address: %w", ErrIdentity)
	}
	var cn string
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	} else {
		cn = ips[0].String()
	}
	for _, n := range dnsNames {
		if !validDNSName(n) {
			return nil, fmt.Errorf("ca: issue server certificate %q: DNS name %q is malformed: %w", cn, n, ErrIdentity)
		}
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, fmt.Errorf("ca: issue server certificate %q: IP address %v is malformed: %w", cn, ip, ErrIdentity)
		}
	}
	if err := CheckPublicKey(pub); err != nil {
		return nil, fmt.Errorf("ca: issue server certificate %q: %w", cn, err)
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              append([]string(nil), dnsNames...),
		IPAddresses:           append([]net.IP(nil), ips...),
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	return i.issue(ctx, tmpl, pub, lifetime, IssuanceRecord{Kind: KindServer, Subject: cn})
}

// validDNSName accepts a DNS host name or a "*." wildcard of one.
func validDNSName(n string) bool {
	n, _ = cutWildcard(n)
	if n == "" || len(n) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_':
			label++
			if label > 63 {
				return false
			}
		default:
			return false
		}
	}
	return label > 0
}

func cutWildcard(n string) (string, bool) {
	if len(n) > 2 && n[0] == '*' && n[1] == '.' {
		return n[2:], true
	}
	return n, false
}

// validity returns the leaf's validity window for a requested lifetime:
// zero selects the default; below the minimum or above the maximum is
// refused; NotAfter is clamped to the chain's earliest NotAfter so a leaf
// never outlives its issuer, and refused if that leaves less than the
// minimum lifetime.
func (i *Issuer) validity(lifetime time.Duration) (notBefore, notAfter time.Time, err error) {
	if lifetime == 0 {
		lifetime = i.cfg.DefaultLifetime
	}
	if lifetime < i.cfg.MinLifetime {
		return time.Time{}, time.Time{}, fmt.Errorf("lifetime %s is below the minimum %s: %w", lifetime, i.cfg.MinLifetime, ErrLifetime)
	}
	if lifetime > i.cfg.MaxLifetime {
		return time.Time{}, time.Time{}, fmt.Errorf("lifetime %s is above the maximum %s: %w", lifetime, i.cfg.MaxLifetime, ErrLifetime)
	}
	now := i.cfg.Now().UTC().Truncate(time.Second)
	if now.Before(i.notBefore) {
		return time.Time{}, time.Time{}, fmt.Errorf("CA chain is not valid before %s: %w", i.notBefore.UTC().Format(time.RFC3339), ErrLifetime)
	}
	notAfter = now.Add(lifetime)
	if notAfter.After(i.notAfter) {
		notAfter = i.notAfter
		if notAfter.Sub(now) < i.cfg.MinLifetime {
			return time.Time{}, time.Time{}, fmt.Errorf("CA chain expires at %s, less than the minimum lifetime %s from now: %w",
				i.notAfter.UTC().Format(time.RFC3339), i.cfg.MinLifetime, ErrLifetime)
		}
	}
	notBefore = now.Add(-i.cfg.Backdate)
	if notBefore.Before(i.notBefore) {
		notBefore = i.notBefore
	}
	return notBefore, notAfter, nil
}

// newSerial returns a uniformly random positive serial of serialBits bits
// (at most 17 DER octets, within RFC 5280's 20).
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), serialBits)
	for {
		s, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial: %w", err)
		}
		if s.Sign() > 0 {
			return s, nil
		}
	}
}

// issue completes tmpl (serial, validity), signs it with the CA key, checks
// the result, journals it and only then returns it.
func (i *Issuer) issue(ctx context.Context, tmpl *x509.Certificate, pub crypto.PublicKey, lifetime time.Duration, rec IssuanceRecord) (*Issued, error) {
	fail := func(err error) error {
		return fmt.Errorf("ca: issue %s certificate %q: %w", rec.Kind, rec.Subject, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(err)
	}
	nb, na, err := i.validity(lifetime)
	if err != nil {
		return nil, fail(err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fail(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = nb, na
	// AuthorityKeyId is taken from the issuer's SubjectKeyId by
	// CreateCertificate, which also checks the HSM's signature against the
	// CA public key (equal to chain[0]'s, checked by New).
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.chain[0], pub, i.signer)
	if err != nil {
		return nil, fail(fmt.Errorf("sign: %w", err))
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fail(fmt.Errorf("parse the signed certificate: %w", err))
	}
	if err := i.checkIssued(cert); err != nil {
		return nil, fail(err)
	}
	rec.Serial = serial.Text(16)
	rec.NotBefore, rec.NotAfter = cert.NotBefore, cert.NotAfter
	rec.DER = der
	if err := ctx.Err(); err != nil {
		return nil, fail(err)
	}
	if err := i.journal.RecordIssuance(ctx, rec); err != nil {
		return nil, fail(fmt.Errorf("serial %s: %w: %w", rec.Serial, ErrJournal, err))
	}
	return &Issued{Certificate: cert, Chain: i.Chain()}, nil
}

// checkIssued is a cheap sanity check that cert chains to the issuing CA:
// issuer name and key identifier link to it and the validity window nests
// in the chain's. The signature itself was verified by CreateCertificate
// against the CA key, so it is not verified a second time.
func (i *Issuer) checkIssued(cert *x509.Certificate) error {
	ca := i.chain[0]
	switch {
	case !bytes.Equal(cert.RawIssuer, ca.RawSubject):
		return fmt.Errorf("sanity check: issuer name %q differs from the CA's %q", cert.Issuer, ca.Subject)
	case len(ca.SubjectKeyId) > 0 && !bytes.Equal(cert.AuthorityKeyId, ca.SubjectKeyId):
		return errors.New("sanity check: authority key ID differs from the CA's subject key ID")
	case cert.NotAfter.After(i.notAfter) || cert.NotBefore.Before(i.notBefore):
		return errors.New("sanity check: validity window outside the CA chain's")
	case cert.IsCA:
		return errors.New("sanity check: leaf is a CA certificate")
	}
	return nil
}

// EncodeCertificates PEM-encodes certs in order.
func EncodeCertificates(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	return b.Bytes()
}
