package agent

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
)

// DefaultTPM is the TPM used when Config.TPM is empty: the kernel's TPM
// resource manager.
const DefaultTPM = "/dev/tpmrm0"

// TPMDevice is a parsed TPM device string.
type TPMDevice struct {
	// Kind is "device" (a character device path), "tcp" (a swtpm's server
	// port) or "unix" (a swtpm's UNIX socket).
	Kind string
	// Address is the path (device, unix) or HOST:PORT (tcp).
	Address string
}

// String returns the canonical device string, as accepted by ParseTPMDevice.
func (d TPMDevice) String() string {
	switch d.Kind {
	case "tcp":
		return "tcp://" + d.Address
	case "unix":
		return "unix://" + d.Address
	}
	return d.Address
}

// ParseTPMDevice checks a TPM device string: an absolute path such as
// /dev/tpmrm0 (the default when s is empty), tcp://HOST:PORT for a swtpm in
// socket mode, or unix:///PATH for a swtpm listening on a UNIX socket.
func ParseTPMDevice(s string) (TPMDevice, error) {
	if s == "" {
		s = DefaultTPM
	}
	bad := func(why string) (TPMDevice, error) {
		return TPMDevice{}, fmt.Errorf("agent: TPM device %q: %s (want a path such as %s, tcp://HOST:PORT or unix:///PATH)", s, why, DefaultTPM)
	}
	switch {
	case strings.HasPrefix(s, "/"):
		return TPMDevice{Kind: "device", Address: filepath.Clean(s)}, nil
	case strings.HasPrefix(s, "tcp://"):
		u, err := url.Parse(s)
		if err != nil {
			return bad(err.Error())
		}
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
			return bad("unexpected path, query or user info")
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" || port == "" {
			return bad("missing HOST:PORT")
		}
		return TPMDevice{Kind: "tcp", Address: u.Host}, nil
	case strings.HasPrefix(s, "unix://"):
		p := strings.TrimPrefix(s, "unix://")
		if !strings.HasPrefix(p, "/") {
			return bad("the socket path must be absolute (unix:///PATH)")
		}
		return TPMDevice{Kind: "unix", Address: filepath.Clean(p)}, nil
	}
	return bad("unknown form")
}
