// Package config loads Rootgate's YAML configuration files. Every role
// (server, agent, admin commands) reads one file; unknown keys are errors so
// a typo never silently falls back to a default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"gopkg.in/yaml.v3"
)

// Load decodes the YAML file at path into v, rejecting unknown keys. An
// empty path leaves v untouched.
func Load(path string, v any) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := Decode(data, v); err != nil {
		return fmt.Errorf("config: %s: %w", path, err)
	}
	return nil
}

// Decode decodes YAML bytes into v, rejecting unknown keys and trailing
// documents.
func Decode(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: all defaults
		}
		return err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

// Duration is a time.Duration that reads from YAML as a Go duration string
// ("24h", "90s").
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string like \"24h\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// DefaultModulePath is where Debian's softhsm2 package installs its PKCS#11
// module.
const DefaultModulePath = "/usr/lib/softhsm/libsofthsm2.so"

// Server is the configuration of `rootgate server` and of the admin
// commands that work on the server's data directory and HSM.
type Server struct {
	// DataDir holds the SQLite store and the CA chain (ca/chain.pem).
	DataDir string `yaml:"data_dir"`
	// TrustDomain is the SPIFFE trust domain of issued identities.
	TrustDomain string `yaml:"trust_domain"`
	HSM         HSM    `yaml:"hsm"`
	CA          CA     `yaml:"ca"`
	Enroll      Enroll `yaml:"enroll"`
	// MetricsListen serves /metrics, /healthz and /readyz; empty disables.
	MetricsListen string `yaml:"metrics_listen"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
}

// HSM locates the CA key.
type HSM struct {
	// URI is an RFC 7512 PKCS#11 URI. The PIN comes from pin-source
	// (file:PATH or env:NAME) or pin-value (tests), else $ROOTGATE_HSM_PIN.
	URI string `yaml:"uri"`
	// KeyAlgorithm for a new CA key: ecdsa-p256 (default), ecdsa-p384, rsa-3072.
	KeyAlgorithm string `yaml:"key_algorithm"`
}

// CA sets issuance lifetimes.
type CA struct {
	DefaultLifetime Duration `yaml:"default_lifetime"`
	MaxLifetime     Duration `yaml:"max_lifetime"`
	// CommonName of a CA created by `rootgate ca init`.
	CommonName string `yaml:"common_name"`
	// Validity of a CA created by `rootgate ca init`.
	Validity Duration `yaml:"validity"`
}

// Enroll configures the device-facing enrollment listener.
type Enroll struct {
	Listen string `yaml:"listen"`
	// Mode is preregistered, token or approval.
	Mode string `yaml:"mode"`
	// EKRoots is a directory of PEM manufacturer roots and intermediates.
	EKRoots string `yaml:"ek_roots"`
	// EKAllowlist holds EK fingerprints (hex SHA-256 of the PKIX EK) that are
	// trusted without a certificate chain.
	EKAllowlist []string `yaml:"ek_allowlist"`
	// PendingTTL bounds how long a challenge may be answered.
	PendingTTL Duration `yaml:"pending_ttl"`
	// MaxPending caps outstanding challenges; more get RESOURCE_EXHAUSTED.
	MaxPending int `yaml:"max_pending"`
	// ServerNames are the DNS names and IPs in the listener's certificate.
	ServerNames []string `yaml:"server_names"`
	// PollInterval tells agents waiting for approval how often to ask again.
	PollInterval Duration `yaml:"poll_interval"`
}

// DefaultServer returns the settings used when neither file nor flag says
// otherwise.
func DefaultServer() Server {
	return Server{
		DataDir:     "/var/lib/rootgate",
		TrustDomain: "rootgate.local",
		HSM: HSM{
			URI:          "pkcs11:token=rootgate;object=rootgate-ca?module-path=" + DefaultModulePath + "&pin-source=file:/etc/rootgate/hsm-pin",
			KeyAlgorithm: "ecdsa-p256",
		},
		CA: CA{
			DefaultLifetime: Duration(24 * time.Hour),
			MaxLifetime:     Duration(7 * 24 * time.Hour),
			CommonName:      "Rootgate Device CA",
			Validity:        Duration(10 * 365 * 24 * time.Hour),
		},
		Enroll: Enroll{
			Listen:       "127.0.0.1:8443",
			Mode:         "token",
			PendingTTL:   Duration(time.Minute),
			MaxPending:   10000,
			ServerNames:  []string{"localhost", "127.0.0.1"},
			PollInterval: Duration(10 * time.Second),
		},
		MetricsListen: "127.0.0.1:9443",
		LogLevel:      "info",
	}
}

// Agent is the configuration of `rootgate agent`.
type Agent struct {
	// Server is the enrollment endpoint HOST:PORT.
	Server string `yaml:"server"`
	// TPM is /dev/tpmrm0, tcp://HOST:PORT (swtpm socket) or unix:///PATH.
	TPM string `yaml:"tpm"`
	// StateDir keeps TPM-wrapped key blobs and the certificate chain.
	StateDir string `yaml:"state_dir"`
	// CABundle is the PEM file that authenticates the server.
	CABundle string `yaml:"ca_bundle"`
	// ServerName overrides the TLS name checked on the server certificate.
	ServerName string `yaml:"server_name"`
	// RenewBefore renews when less than this is left on the certificate;
	// zero means a third of the certificate's lifetime (8h of a 24h one).
	RenewBefore Duration `yaml:"renew_before"`
}

// DefaultAgent returns the agent's defaults.
func DefaultAgent() Agent {
	return Agent{
		Server:   "127.0.0.1:8443",
		TPM:      "/dev/tpmrm0",
		StateDir: "/var/lib/rootgate-agent",
	}
}
