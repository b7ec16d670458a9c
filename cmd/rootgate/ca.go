package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/server"
)

// storeFile is the SQLite store inside the data directory.
const storeFile = server.StoreFile

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "The certificate authority whose key lives in the HSM",
	}
	cmd.AddCommand(newCAInitCmd(), newCAImportCertCmd(), newCAShowCmd(), newCAIssueCmd())
	return cmd
}

// caKey is the opened HSM token and the CA key's label in it.
type caKey struct {
	uri   *hsm.URI
	label string
	token *hsm.Token
}

// openCAKey opens the token named by the configured HSM URI. The URI must
// name the key with object=<label>.
func openCAKey(ctx context.Context, cfg config.Server) (*caKey, error) {
	u, err := hsm.ParseURI(cfg.HSM.URI)
	if err != nil {
		return nil, fmt.Errorf("HSM URI: %w", err)
	}
	if u.Object == "" {
		return nil, fmt.Errorf("HSM URI %s names no key: add object=<label>", u)
	}
	tok, err := hsm.Open(ctx, u, hsm.Options{Logger: newLogger(cfg.LogLevel)})
	if err != nil {
		return nil, fmt.Errorf("open HSM token for %s: %w", u, err)
	}
	return &caKey{uri: u, label: u.Object, token: tok}, nil
}

func (k *caKey) Close() { _ = k.token.Close() }

// find returns the existing CA key, naming the token and label if absent.
func (k *caKey) find(ctx context.Context) (*hsm.Signer, error) {
	s, err := k.token.FindSigner(ctx, k.label)
	if err != nil {
		return nil, fmt.Errorf("CA key %q in %s: %w", k.label, k.uri, err)
	}
	return s, nil
}

// openCASigner opens the token (openCAKey) and finds the existing CA key in
// it; Close the caKey when done with the Signer.
func openCASigner(ctx context.Context, cfg config.Server) (*caKey, *hsm.Signer, error) {
	k, err := openCAKey(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	s, err := k.find(ctx)
	if err != nil {
		k.Close()
		return nil, nil, err
	}
	return k, s, nil
}

// keyJSON describes where the CA key lives, never with the PIN.
type keyJSON struct {
	URI        string        `json:"uri"`
	Label      string        `json:"label"`
	Algorithm  string        `json:"algorithm,omitempty"`
	Attributes *keyAttrsJSON `json:"attributes,omitempty"`
	Matches    *bool         `json:"matches_certificate,omitempty"`
}

// keyAttrsJSON are the PKCS#11 attributes of the CA private key.
type keyAttrsJSON struct {
	ID               string `json:"id"`
	KeyType          string `json:"key_type"`
	Token            bool   `json:"token"`
	Private          bool   `json:"private"`
	Sensitive        bool   `json:"sensitive"`
	AlwaysSensitive  bool   `json:"always_sensitive"`
	Extractable      bool   `json:"extractable"`
	NeverExtractable bool   `json:"never_extractable"`
	Sign             bool   `json:"sign"`
	Decrypt          bool   `json:"decrypt"`
	Unwrap           bool   `json:"unwrap"`
	Derive           bool   `json:"derive"`
}

// certJSON summarises a certificate.
type certJSON struct {
	Subject    string    `json:"subject"`
	Issuer     string    `json:"issuer"`
	Serial     string    `json:"serial"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	SHA256     string    `json:"sha256"`
	IsCA       bool      `json:"is_ca"`
	PathLen    *int      `json:"path_len,omitempty"`
	KeyAlg     string    `json:"key_algorithm"`
	URIs       []string  `json:"uris,omitempty"`
	DNSNames   []string  `json:"dns_names,omitempty"`
	IPs        []string  `json:"ip_addresses,omitempty"`
	EKPermanID []string  `json:"ek_permanent_identifiers,omitempty"`
}

func describeCert(c *x509.Certificate) certJSON {
	sum := sha256.Sum256(c.Raw)
	out := certJSON{
		Subject:   c.Subject.String(),
		Issuer:    c.Issuer.String(),
		Serial:    c.SerialNumber.Text(16),
		NotBefore: c.NotBefore.UTC(),
		NotAfter:  c.NotAfter.UTC(),
		SHA256:    hex.EncodeToString(sum[:]),
		IsCA:      c.IsCA,
		KeyAlg:    keyAlgorithm(c.PublicKey),
		DNSNames:  c.DNSNames,
	}
	if c.IsCA && (c.MaxPathLen > 0 || c.MaxPathLenZero) {
		pl := c.MaxPathLen
		out.PathLen = &pl
	}
	for _, u := range c.URIs {
		out.URIs = append(out.URIs, u.String())
	}
	for _, ip := range c.IPAddresses {
		out.IPs = append(out.IPs, ip.String())
	}
	if pis, err := ca.PermanentIdentifiers(c); err == nil {
		for _, p := range pis {
			out.EKPermanID = append(out.EKPermanID, p.Value)
		}
	}
	return out
}

func describeChain(chain []*x509.Certificate) []certJSON {
	out := make([]certJSON, 0, len(chain))
	for _, c := range chain {
		out = append(out, describeCert(c))
	}
	return out
}

// keyAlgorithm names a public key the way --key-algorithm does.
func keyAlgorithm(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ecdsa-" + strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))
	case *rsa.PublicKey:
		return "rsa-" + strconv.Itoa(k.N.BitLen())
	case ed25519.PublicKey:
		return "ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// printCerts writes a human summary of certs.
func printCerts(w io.Writer, title string, certs []certJSON) {
	for k, c := range certs {
		fmt.Fprintf(w, "%s %d:\n", title, k)
		t := newTable(w)
		fmt.Fprintf(t, "  subject\t%s\n", c.Subject)
		fmt.Fprintf(t, "  issuer\t%s\n", c.Issuer)
		fmt.Fprintf(t, "  serial\t%s\n", c.Serial)
		fmt.Fprintf(t, "  valid\t%s .. %s\n", c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
		fmt.Fprintf(t, "  sha256\t%s\n", c.SHA256)
		fmt.Fprintf(t, "  key\t%s\n", c.KeyAlg)
		if c.IsCA {
			pl := "unlimited"
			if c.PathLen != nil {
				pl = strconv.Itoa(*c.PathLen)
			}
			fmt.Fprintf(t, "  CA\tyes (path length %s)\n", pl)
		}
		for _, u := range c.URIs {
			fmt.Fprintf(t, "  URI SAN\t%s\n", u)
		}
		for _, d := range c.DNSNames {
			fmt.Fprintf(t, "  DNS SAN\t%s\n", d)
		}
		for _, ip := range c.IPs {
			fmt.Fprintf(t, "  IP SAN\t%s\n", ip)
		}
		for _, p := range c.EKPermanID {
			fmt.Fprintf(t, "  EK (permanentIdentifier)\t%s\n", p)
		}
		t.Flush()
	}
}

func printKey(w io.Writer, k keyJSON) {
	fmt.Fprintln(w, "CA key:")
	t := newTable(w)
	fmt.Fprintf(t, "  URI\t%s\n", k.URI)
	if k.Algorithm != "" {
		fmt.Fprintf(t, "  algorithm\t%s\n", k.Algorithm)
	}
	if a := k.Attributes; a != nil {
		fmt.Fprintf(t, "  private\t%v\n", a.Private)
		fmt.Fprintf(t, "  sensitive\t%v\n", a.Sensitive)
		fmt.Fprintf(t, "  extractable\t%v\n", a.Extractable)
		fmt.Fprintf(t, "  always sensitive\t%v\n", a.AlwaysSensitive)
		fmt.Fprintf(t, "  never extractable\t%v\n", a.NeverExtractable)
		fmt.Fprintf(t, "  sign only\t%v\n", a.Sign && !a.Decrypt && !a.Unwrap && !a.Derive)
	}
	if k.Matches != nil {
		fmt.Fprintf(t, "  matches certificate\t%v\n", *k.Matches)
	}
	t.Flush()
}

// describe reports where the CA key lives and its attributes as the token
// reports them, and whether it matches cert (when given).
func (k *caKey) describe(ctx context.Context, s *hsm.Signer, cert *x509.Certificate) (keyJSON, error) {
	out := keyJSON{URI: k.uri.String(), Label: k.label, Algorithm: keyAlgorithm(s.Public())}
	if cert != nil {
		m := publicKeyEqual(s.Public(), cert.PublicKey)
		out.Matches = &m
	}
	info, err := s.KeyInfo(ctx)
	if err != nil {
		return out, fmt.Errorf("attributes of CA key %q in %s: %w", k.label, k.uri, err)
	}
	out.Attributes = &keyAttrsJSON{
		ID: hex.EncodeToString(info.ID), KeyType: info.KeyType, Token: info.Token, Private: info.Private,
		Sensitive: info.Sensitive, AlwaysSensitive: info.AlwaysSensitive,
		Extractable: info.Extractable, NeverExtractable: info.NeverExtractable,
		Sign: info.Sign, Decrypt: info.Decrypt, Unwrap: info.Unwrap, Derive: info.Derive,
	}
	return out, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// parseValidity accepts Go durations plus a day ("3650d") or year ("10y")
// suffix.
func parseValidity(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "y": 365 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.Atoi(n)
			if err != nil || v <= 0 {
				return 0, fmt.Errorf("validity %q: want a positive whole number before %q", s, suffix)
			}
			return time.Duration(v) * unit, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("validity %q: want a positive duration like 87600h, 3650d or 10y", s)
	}
	return d, nil
}

type caInitJSON struct {
	// Status: created (new root), exists (CA already installed, kept),
	// pending (intermediate CSR written or already waiting for the root).
	Status     string     `json:"status"`
	KeyCreated bool       `json:"key_created"`
	Key        keyJSON    `json:"key"`
	ChainPath  string     `json:"chain_path,omitempty"`
	CSRPath    string     `json:"csr_path,omitempty"`
	Chain      []certJSON `json:"chain,omitempty"`
	// TrustDomain is the data directory's SPIFFE trust domain;
	// TrustDomainPath is where it is recorded, empty for a data directory
	// from before the record (then the configured one applies).
	TrustDomain     string `json:"trust_domain"`
	TrustDomainPath string `json:"trust_domain_path,omitempty"`
}

func newCAInitCmd() *cobra.Command {
	var (
		sf           serverFlags
		intermediate bool
		commonName   string
		keyAlg       string
		validity     string
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the CA key in the HSM and a self-signed root, or (--intermediate) a CSR for an offline root",
		Long: `init finds the CA key in the HSM by the label in the URI's object= attribute, or
generates it there (sensitive, never extractable), then self-signs a root CA
certificate into <data-dir>/ca/chain.pem. With --intermediate it writes
<data-dir>/ca/intermediate.csr instead; have the offline root sign it and
install the result with 'rootgate ca import-cert'.

The SPIFFE trust domain (--trust-domain or trust_domain, default
rootgate.local) is recorded in <data-dir>/ca/trust-domain with the CA. Every
later command on the data directory uses it, and refuses a --trust-domain or
trust_domain that differs.

Running it again is safe: an installed CA certificate and its key are kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := jsonOutput(cmd)
			if err != nil {
				return err
			}
			cfg, explicitTD, err := sf.loadInit(cmd)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("common-name") {
				cfg.CA.CommonName = commonName
			}
			if cmd.Flags().Changed("key-algorithm") {
				cfg.HSM.KeyAlgorithm = keyAlg
			}
			if cmd.Flags().Changed("validity") {
				d, err := parseValidity(validity)
				if err != nil {
					return err
				}
				cfg.CA.Validity = config.Duration(d)
			}
			switch cfg.HSM.KeyAlgorithm {
			case "ecdsa-p256", "ecdsa-p384", "rsa-3072":
			default:
				return fmt.Errorf("key algorithm %q: want ecdsa-p256, ecdsa-p384 or rsa-3072", cfg.HSM.KeyAlgorithm)
			}
			ctx := cmd.Context()
			res, err := caInit(ctx, cmd, cfg, intermediate, explicitTD)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			switch res.Status {
			case "exists":
				fmt.Fprintf(w, "CA already initialised in %s; kept it and its key.\n", res.ChainPath)
			case "created":
				fmt.Fprintf(w, "Created a self-signed root CA in %s.\n", res.ChainPath)
			case "pending":
				fmt.Fprintf(w, "Intermediate CSR in %s: have the offline root sign it, then run 'rootgate ca import-cert'.\n", res.CSRPath)
			}
			printCerts(w, "certificate", res.Chain)
			printKey(w, res.Key)
			printTrustDomain(w, res.TrustDomain, res.TrustDomainPath)
			return nil
		},
	}
	sf.register(cmd)
	cmd.Flags().BoolVar(&intermediate, "intermediate", false, "write a CSR for an offline root instead of self-signing")
	cmd.Flags().StringVar(&commonName, "common-name", "", "CA common name [default from config: Rootgate Device CA]")
	cmd.Flags().StringVar(&keyAlg, "key-algorithm", "", "algorithm of a new CA key: ecdsa-p256, ecdsa-p384 or rsa-3072 [default ecdsa-p256]")
	cmd.Flags().StringVar(&validity, "validity", "", "validity of a self-signed root, e.g. 87600h, 3650d, 10y [default 10y]")
	return cmd
}

// printTrustDomain writes the data directory's trust domain and where it
// is recorded.
func printTrustDomain(w io.Writer, td, path string) {
	if path == "" {
		fmt.Fprintf(w, "Trust domain: %s (not recorded in the data directory: from the configuration)\n", td)
		return
	}
	fmt.Fprintf(w, "Trust domain: %s (recorded in %s)\n", td, path)
}

// trustDomainPath is where dataDir records its trust domain, or "" when it
// records none.
func trustDomainPath(dataDir string) string {
	if td, err := ca.LoadTrustDomain(dataDir); err != nil || td == "" {
		return ""
	}
	return ca.TrustDomainPath(dataDir)
}

// caInit makes or keeps the CA. cfg.TrustDomain is already resolved against
// the data directory; explicitTD says it was given (flag or file), so that
// a CA from before the trust domain was recorded gets it recorded now.
func caInit(ctx context.Context, cmd *cobra.Command, cfg config.Server, intermediate, explicitTD bool) (out *caInitJSON, err error) {
	defer func() {
		if out != nil {
			out.TrustDomain, out.TrustDomainPath = cfg.TrustDomain, trustDomainPath(cfg.DataDir)
		}
	}()
	// recordExisting records an explicit trust domain for a CA (or CSR) that
	// predates the record; a recorded one is already equal (resolved).
	recordExisting := func() error {
		if !explicitTD {
			return nil
		}
		return ca.RecordTrustDomain(cfg.DataDir, cfg.TrustDomain)
	}
	chainPath, csrPath := ca.ChainPath(cfg.DataDir), ca.CSRPath(cfg.DataDir)
	chain, err := ca.LoadChain(cfg.DataDir)
	if err != nil && !errors.Is(err, ca.ErrNoCA) {
		return nil, err
	}
	step(cmd, "opening the HSM token")
	k, err := openCAKey(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer k.Close()

	if chain != nil {
		// Idempotent: keep the installed CA, check its key is still there.
		s, err := k.find(ctx)
		if err != nil {
			return nil, fmt.Errorf("CA certificate %s exists but: %w", chainPath, err)
		}
		desc, err := k.describe(ctx, s, chain[0])
		if err != nil {
			return nil, err
		}
		if !*desc.Matches {
			return nil, fmt.Errorf("CA certificate %s does not match key %q in %s", chainPath, k.label, k.uri)
		}
		if err := recordExisting(); err != nil {
			return nil, err
		}
		return &caInitJSON{Status: "exists", Key: desc, ChainPath: chainPath, Chain: describeChain(chain)}, nil
	}

	pending, err := ca.LoadCSR(cfg.DataDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if pending != nil && !intermediate {
		return nil, fmt.Errorf("an intermediate CSR is waiting in %s: install its certificate with 'rootgate ca import-cert', or remove the CSR to make a self-signed root", csrPath)
	}

	step(cmd, "finding or generating CA key %q (%s)", k.label, cfg.HSM.KeyAlgorithm)
	s, created, err := k.token.FindOrGenerateSigner(ctx, k.label, hsm.KeyAlgorithm(cfg.HSM.KeyAlgorithm))
	if err != nil {
		return nil, fmt.Errorf("CA key %q in %s: %w", k.label, k.uri, err)
	}
	if pending != nil && publicKeyEqual(s.Public(), pending.PublicKey) {
		desc, err := k.describe(ctx, s, nil)
		if err != nil {
			return nil, err
		}
		if err := recordExisting(); err != nil {
			return nil, err
		}
		return &caInitJSON{Status: "pending", KeyCreated: created, Key: desc, CSRPath: csrPath}, nil
	}
	if created {
		step(cmd, "generated CA key %q in the HSM", k.label)
	} else {
		step(cmd, "found existing CA key %q in the HSM", k.label)
	}
	step(cmd, "signing the %s", map[bool]string{true: "intermediate CSR", false: "self-signed root"}[intermediate])
	res, err := ca.Init(ctx, s, ca.InitOptions{
		DataDir:      cfg.DataDir,
		CommonName:   cfg.CA.CommonName,
		Validity:     cfg.CA.Validity.Std(),
		Intermediate: intermediate,
		TrustDomain:  cfg.TrustDomain,
	})
	if err != nil {
		return nil, err
	}
	var cert *x509.Certificate
	if res.Certificate != nil {
		cert = res.Certificate
	}
	desc, err := k.describe(ctx, s, cert)
	if err != nil {
		return nil, err
	}
	out = &caInitJSON{KeyCreated: created, Key: desc}
	if intermediate {
		out.Status, out.CSRPath = "pending", res.Path
	} else {
		out.Status, out.ChainPath, out.Chain = "created", res.Path, describeChain([]*x509.Certificate{cert})
	}
	return out, nil
}

func newCAImportCertCmd() *cobra.Command {
	var (
		sf        serverFlags
		chainFile string
	)
	cmd := &cobra.Command{
		Use:   "import-cert FILE",
		Short: "Install the intermediate CA certificate signed by the offline root",
		Long: `import-cert checks that FILE (PEM or DER) is a CA certificate for the key in the
HSM and that it chains to a self-signed root given in --chain (or in FILE after
the certificate), then writes the chain to <data-dir>/ca/chain.pem.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, asJSON, err := loadWithOutput(cmd, sf.load)
			if err != nil {
				return err
			}
			certPEM, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("read certificate: %w", err)
			}
			var chainPEM []byte
			if chainFile != "" {
				if chainPEM, err = os.ReadFile(chainFile); err != nil {
					return fmt.Errorf("read chain: %w", err)
				}
			}
			ctx := cmd.Context()
			step(cmd, "opening the HSM token")
			k, s, err := openCASigner(ctx, cfg)
			if err != nil {
				return err
			}
			defer k.Close()
			chain, err := ca.ImportCert(ctx, s, cfg.DataDir, certPEM, chainPEM)
			if err != nil {
				return err
			}
			desc, err := k.describe(ctx, s, chain[0])
			if err != nil {
				return err
			}
			out := caInitJSON{Status: "imported", Key: desc, ChainPath: ca.ChainPath(cfg.DataDir), Chain: describeChain(chain),
				TrustDomain: cfg.TrustDomain, TrustDomainPath: trustDomainPath(cfg.DataDir)}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Installed the CA chain in %s.\n", out.ChainPath)
			printCerts(w, "certificate", out.Chain)
			printKey(w, out.Key)
			printTrustDomain(w, out.TrustDomain, out.TrustDomainPath)
			return nil
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&chainFile, "chain", "", "PEM file with the issuing chain up to the root")
	return cmd
}

type caShowJSON struct {
	ChainPath       string     `json:"chain_path"`
	Chain           []certJSON `json:"chain,omitempty"`
	CSRPath         string     `json:"pending_csr,omitempty"`
	Key             keyJSON    `json:"key"`
	TrustDomain     string     `json:"trust_domain"`
	TrustDomainPath string     `json:"trust_domain_path,omitempty"`
}

func newCAShowCmd() *cobra.Command {
	var sf serverFlags
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the CA chain and where the CA key lives",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, asJSON, err := loadWithOutput(cmd, sf.load)
			if err != nil {
				return err
			}
			out := caShowJSON{ChainPath: ca.ChainPath(cfg.DataDir), TrustDomain: cfg.TrustDomain, TrustDomainPath: trustDomainPath(cfg.DataDir)}
			chain, err := ca.LoadChain(cfg.DataDir)
			switch {
			case errors.Is(err, ca.ErrNoCA):
				if _, cerr := ca.LoadCSR(cfg.DataDir); cerr != nil {
					return fmt.Errorf("%w: run 'rootgate ca init'", err)
				}
				out.CSRPath = ca.CSRPath(cfg.DataDir)
			case err != nil:
				return err
			default:
				out.Chain = describeChain(chain)
			}
			ctx := cmd.Context()
			k, s, err := openCASigner(ctx, cfg)
			if err != nil {
				return err
			}
			defer k.Close()
			var cert *x509.Certificate
			if len(chain) > 0 {
				cert = chain[0]
			}
			if out.Key, err = k.describe(ctx, s, cert); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			if out.CSRPath != "" {
				fmt.Fprintf(w, "No CA certificate yet; the intermediate CSR %s waits for the offline root.\n", out.CSRPath)
			} else {
				fmt.Fprintf(w, "CA chain %s (issuing CA first):\n", out.ChainPath)
				printCerts(w, "certificate", out.Chain)
			}
			printKey(w, out.Key)
			printTrustDomain(w, out.TrustDomain, out.TrustDomainPath)
			return nil
		},
	}
	sf.register(cmd)
	return cmd
}

type caIssueJSON struct {
	Serial        string    `json:"serial"`
	DeviceID      string    `json:"device_id"`
	SPIFFEID      string    `json:"spiffe_id"`
	EKFingerprint string    `json:"ek_fingerprint,omitempty"`
	NotBefore     time.Time `json:"not_before"`
	NotAfter      time.Time `json:"not_after"`
	SHA256        string    `json:"sha256"`
	Out           string    `json:"out,omitempty"`
	PEM           string    `json:"pem,omitempty"`
}

func newCAIssueCmd() *cobra.Command {
	var (
		sf       serverFlags
		csrFile  string
		deviceID string
		ekFP     string
		lifetime time.Duration
		outFile  string
	)
	cmd := &cobra.Command{
		Use:   "issue --csr FILE --device-id ID",
		Short: "Issue a device certificate for a CSR (admins and tests), journaled in the store",
		Long: `issue signs a device certificate for the key in the CSR (PEM or DER) with the
device template: URI SAN spiffe://<trust-domain>/device/<ID>, the EK's TCG
permanentIdentifier when --ek-fingerprint is given, EKU clientAuth. The
certificate is recorded in <data-dir>/rootgate.db before it is written out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, asJSON, err := loadWithOutput(cmd, sf.load)
			if err != nil {
				return err
			}
			if csrFile == "" || deviceID == "" {
				return errors.New("--csr and --device-id are required")
			}
			csrDER, err := readCSR(csrFile)
			if err != nil {
				return err
			}
			chain, err := ca.LoadChain(cfg.DataDir)
			if err != nil {
				if errors.Is(err, ca.ErrNoCA) {
					return fmt.Errorf("%w: the intermediate CSR %s waits for its certificate: install it with 'rootgate ca import-cert'", err, ca.CSRPath(cfg.DataDir))
				}
				return err
			}
			ctx := cmd.Context()
			k, s, err := openCASigner(ctx, cfg)
			if err != nil {
				return err
			}
			defer k.Close()
			store, err := openStore(ctx, cfg)
			if err != nil {
				return fmt.Errorf("open the store: %w", err)
			}
			defer store.Close()
			issuer, err := ca.New(s, chain, store, ca.Config{
				TrustDomain:     cfg.TrustDomain,
				DefaultLifetime: cfg.CA.DefaultLifetime.Std(),
				MaxLifetime:     cfg.CA.MaxLifetime.Std(),
			})
			if err != nil {
				return err
			}
			got, err := issuer.IssueDeviceCSR(ctx, csrDER, ca.DeviceRequest{DeviceID: deviceID, EKFingerprint: ekFP, Lifetime: lifetime})
			if err != nil {
				return err
			}
			c := describeCert(got.Certificate)
			out := caIssueJSON{
				Serial:    c.Serial,
				DeviceID:  deviceID,
				SPIFFEID:  c.URIs[0],
				NotBefore: c.NotBefore,
				NotAfter:  c.NotAfter,
				SHA256:    c.SHA256,
				Out:       outFile,
			}
			if len(c.EKPermanID) > 0 {
				out.EKFingerprint = c.EKPermanID[0]
			}
			pemOut := got.PEM()
			if outFile != "" {
				if err := os.WriteFile(outFile, pemOut, 0o644); err != nil {
					return fmt.Errorf("write certificate (serial %s, journaled): %w", out.Serial, err)
				}
			}
			switch {
			case asJSON:
				if outFile == "" {
					out.PEM = string(pemOut)
				}
				return printJSON(cmd.OutOrStdout(), out)
			case outFile == "":
				step(cmd, "issued serial %s for %s until %s", out.Serial, out.SPIFFEID, out.NotAfter.Format(time.RFC3339))
				_, err := cmd.OutOrStdout().Write(pemOut)
				return err
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "Issued %s, serial %s, valid until %s; certificate and chain in %s.\n",
					out.SPIFFEID, out.Serial, out.NotAfter.Format(time.RFC3339), outFile)
				return nil
			}
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&csrFile, "csr", "", "certificate request of the device key (PEM or DER)")
	cmd.Flags().StringVar(&deviceID, "device-id", "", "device ID: the last segment of the SPIFFE ID")
	cmd.Flags().StringVar(&ekFP, "ek-fingerprint", "", "EK fingerprint (hex SHA-256 of the EK's PKIX DER) for the TCG permanentIdentifier")
	cmd.Flags().DurationVar(&lifetime, "lifetime", 0, "certificate lifetime [default from config: 24h]")
	cmd.Flags().StringVar(&outFile, "out", "", "write the certificate and chain (PEM) here instead of standard output")
	return cmd
}

// readCSR reads a CSR file in PEM or DER.
func readCSR(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CSR: %w", err)
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("read CSR %s: PEM block is %q, want CERTIFICATE REQUEST", path, b.Type)
		}
		return b.Bytes, nil
	}
	return data, nil
}
