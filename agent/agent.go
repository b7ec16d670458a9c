// Package agent is the device side of Rootgate: it reaches the TPM
// (/dev/tpmrm0, or a swtpm over TCP or a UNIX socket), keeps TPM-wrapped key
// blobs and the device certificate in a state directory, and enrolls the
// device with the enrollment service.
//
// The package never prints: progress goes to Config.Progress and diagnostics
// to Config.Logger.
package agent

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// Config configures an Enroller. The zero value of every field but Server
// and StateDir is usable.
type Config struct {
	// Server is the enrollment endpoint, HOST:PORT.
	Server string
	// TPM is the TPM device string (see ParseTPMDevice); empty means
	// DefaultTPM.
	TPM string
	// StateDir keeps the key blobs, the certificate chain and state.json.
	StateDir string
	// CABundle is PEM: the roots that authenticate the server. Empty means
	// the system roots.
	CABundle []byte
	// ServerName overrides the name checked on the server's certificate
	// (default: the host part of Server).
	ServerName string
	// Token is the one-time enrollment token, for servers in token mode.
	Token string
	// RenewBefore re-enrolls when the certificate has this much time or
	// less left. Zero means a third of the certificate's lifetime.
	RenewBefore time.Duration
	// Force re-enrolls even when the certificate is valid.
	Force bool
	// Facts are reported to the server; nil means CollectFacts().
	Facts *Facts
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Progress, if set, receives one Step per stage as it happens.
	Progress func(Step)
	// DialOptions are added to the gRPC client's options (after the TLS
	// credentials).
	DialOptions []grpc.DialOption
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Step is a progress report from Enroll.
type Step struct {
	// Name is a stable identifier: "tpm", "ek", "ak", "retry" (the server
	// is unreachable; the agent retries with backoff), "pending",
	// "challenge", "activated", "device_key", "quote", "issued",
	// "already_enrolled".
	Name string
	// Message is a one-line human description.
	Message string
	// DeviceID is set once the device ID is known (steps "pending",
	// "challenge", "issued", "already_enrolled").
	DeviceID string
}

// Result describes the enrollment after Enroll.
type Result struct {
	DeviceID string    `json:"device_id"`
	SPIFFEID string    `json:"spiffe_id,omitempty"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	Server   string    `json:"server,omitempty"`
	// CertPath, ChainPath and KeyPath locate the device certificate (PEM),
	// its issuing chain (PEM) and the TPM-wrapped device key blob.
	CertPath  string `json:"cert_path"`
	ChainPath string `json:"chain_path"`
	KeyPath   string `json:"key_path"`
	// AlreadyEnrolled is true when the current certificate was kept and
	// the server was not contacted.
	AlreadyEnrolled bool `json:"already_enrolled"`
	// Renewed is true when a previous enrollment was replaced.
	Renewed bool `json:"renewed"`
	// Reason is why Enroll did what it did: "valid", "not enrolled",
	// "forced", "expired" or "renewal due".
	Reason string `json:"reason"`
}

// Facts are self-reported device facts, informational only.
type Facts struct {
	Hostname     string `json:"hostname"`
	OS           string `json:"os"`
	Serial       string `json:"serial,omitempty"`
	AgentVersion string `json:"agent_version"`
}

// CollectFacts gathers the hostname, the OS (PRETTY_NAME from
// /etc/os-release), the DMI product serial when readable, and the agent's
// build version. Unreadable facts are left empty.
func CollectFacts() Facts {
	var f Facts
	f.Hostname, _ = os.Hostname()
	f.OS = osName("/etc/os-release")
	if b, err := os.ReadFile("/sys/class/dmi/id/product_serial"); err == nil {
		f.Serial = strings.TrimSpace(string(b))
	}
	f.AgentVersion = "devel"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		f.AgentVersion = bi.Main.Version
	}
	return f
}

// osName reads PRETTY_NAME (or NAME) from an os-release file.
func osName(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return runtime.GOOS
	}
	vals := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		vals[k] = strings.Trim(v, `"'`)
	}
	for _, k := range []string{"PRETTY_NAME", "NAME"} {
		if v := vals[k]; v != "" {
			return v
		}
	}
	return runtime.GOOS
}
