package enroll

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/rootgate/rootgate/ca"
)

// ServerIssuer issues TLS server certificates; *ca.Issuer implements it.
type ServerIssuer interface {
	IssueServer(ctx context.Context, pub crypto.PublicKey, dnsNames []string, ips []net.IP, lifetime time.Duration) (*ca.Issued, error)
}

// DefaultServingLifetime is the lifetime ServingCert asks for when none is
// given.
const DefaultServingLifetime = 24 * time.Hour

// ServingCert is the enrollment listener's own TLS certificate, issued by
// the Rootgate CA for a fresh in-memory ECDSA P-256 key and renewed by Run
// before it expires. The private key never leaves the process.
type ServingCert struct {
	issuer   ServerIssuer
	dns      []string
	ips      []net.IP
	lifetime time.Duration
	log      *slog.Logger
	cur      atomic.Pointer[tls.Certificate]
}

// NewServingCert issues the first certificate for names (DNS names or IP
// addresses) and returns a ServingCert holding it. lifetime zero means
// DefaultServingLifetime; logger may be nil.
func NewServingCert(ctx context.Context, iss ServerIssuer, names []string, lifetime time.Duration, logger *slog.Logger) (*ServingCert, error) {
	if len(names) == 0 {
		return nil, errors.New("enroll: serving certificate: no server names")
	}
	if lifetime <= 0 {
		lifetime = DefaultServingLifetime
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &ServingCert{issuer: iss, lifetime: lifetime, log: logger}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			c.ips = append(c.ips, ip)
		} else {
			c.dns = append(c.dns, n)
		}
	}
	if err := c.Renew(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Renew issues a new certificate for a new key and switches to it.
func (c *ServingCert) Renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("enroll: serving certificate: %w", err)
	}
	issued, err := c.issuer.IssueServer(ctx, key.Public(), c.dns, c.ips, c.lifetime)
	if err != nil {
		return fmt.Errorf("enroll: serving certificate: %w", err)
	}
	chain := [][]byte{issued.Certificate.Raw}
	for _, ic := range issued.Chain {
		chain = append(chain, ic.Raw)
	}
	c.cur.Store(&tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: issued.Certificate})
	c.log.Info("serving certificate issued", "serial", issued.Certificate.SerialNumber.Text(16),
		"not_after", issued.Certificate.NotAfter)
	return nil
}

// Leaf returns the current certificate.
func (c *ServingCert) Leaf() *x509.Certificate { return c.cur.Load().Leaf }

// GetCertificate returns the current certificate; it fits
// tls.Config.GetCertificate.
func (c *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// TLSConfig returns a server-authenticated TLS 1.3 configuration serving the
// current certificate.
func (c *ServingCert) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: c.GetCertificate,
		NextProtos:     []string{"h2"},
	}
}

// Run renews the certificate once two thirds of its lifetime have passed,
// retrying failures with backoff (the HSM may be away for a while), until
// ctx ends. It returns ctx's error.
func (c *ServingCert) Run(ctx context.Context) error {
	retry := time.Second
	for {
		leaf := c.Leaf()
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		wait := time.Until(leaf.NotBefore.Add(life * 2 / 3))
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		for {
			err := c.Renew(ctx)
			if err == nil {
				retry = time.Second
				break
			}
			c.log.Error("serving certificate renewal failed", "error", err.Error(), "not_after", leaf.NotAfter)
			t := time.NewTimer(retry)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			retry = min(2*retry, time.Minute)
		}
	}
}
