// Package tpmdev opens a TPM 2.0 for go-attestation from a device string:
// a character device such as /dev/tpmrm0, or a swtpm reached over TCP
// (tcp://HOST:PORT) or a UNIX socket (unix:///PATH).
package tpmdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/google/go-attestation/attest"
)

// DefaultDevice is the device opened when Open is given an empty string: the
// kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// DefaultMeasurementLog is where the kernel exposes the firmware's TCG event
// log for the first TPM.
const DefaultMeasurementLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// maxResponse bounds the size of one TPM response read from a socket. TPM 2.0
// responses are at most a few KiB; anything larger is a broken peer.
const maxResponse = 1 << 16

// Open opens the TPM named by device and returns it ready for go-attestation.
//
// device is one of:
//   - "" (meaning DefaultDevice) or an absolute path to a TPM character
//     device such as /dev/tpmrm0; its measurement log is read from
//     DefaultMeasurementLog;
//   - "tcp://HOST:PORT": the server (command) port of a swtpm in socket mode
//     started with --flags not-need-init,startup-clear;
//   - "unix:///PATH": a swtpm started with --server type=unixio,path=PATH.
//
// A swtpm has no firmware, so its measurement log is empty (MeasurementLog
// returns a nil slice and no error). ctx bounds connecting only. The caller
// closes the TPM with its Close method.
func Open(ctx context.Context, device string) (*attest.TPM, error) {
	ch, err := OpenChannel(ctx, device)
	if err != nil {
		return nil, err
	}
	tpm, err := attest.OpenTPM(&attest.OpenConfig{CommandChannel: ch})
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("tpmdev: open %s: %w", device, err)
	}
	return tpm, nil
}

// OpenChannel opens the raw TPM 2.0 command channel named by device (see
// Open), for callers that also talk to the TPM with go-tpm directly. Over a
// socket each Read returns bytes of exactly one complete TPM response, so
// callers that issue a command with one Write and read the answer with one
// Read (as go-tpm does) never see a response split by the network.
func OpenChannel(ctx context.Context, device string) (*Channel, error) {
	if device == "" {
		device = DefaultDevice
	}
	switch {
	case strings.HasPrefix(device, "/"):
		f, err := os.OpenFile(device, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("tpmdev: open %s: %w", device, err)
		}
		return &Channel{rwc: f, logPath: DefaultMeasurementLog}, nil
	case strings.HasPrefix(device, "tcp://"), strings.HasPrefix(device, "unix://"):
		u, err := url.Parse(device)
		if err != nil {
			return nil, fmt.Errorf("tpmdev: device %q: %w", device, err)
		}
		network, addr := u.Scheme, u.Host
		if network == "unix" {
			addr = u.Path
		}
		if addr == "" || (network == "tcp" && u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("tpmdev: device %q: want tcp://HOST:PORT or unix:///PATH", device)
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, fmt.Errorf("tpmdev: connect to %s: %w", device, err)
		}
		return &Channel{rwc: conn, framed: true}, nil
	default:
		return nil, fmt.Errorf("tpmdev: device %q: want a path such as %s, tcp://HOST:PORT or unix:///PATH", device, DefaultDevice)
	}
}

// Channel is a TPM 2.0 command channel (attest.CommandChannelTPM20): a
// device file or a socket to a swtpm. It is safe for use by one command at a
// time, as a TPM is.
type Channel struct {
	rwc     io.ReadWriteCloser
	framed  bool   // socket: reassemble whole responses
	logPath string // "" when the TPM has no firmware event log

	mu      sync.Mutex
	pending []byte // unread rest of the current response (framed only)
}

// Write sends one complete TPM command.
func (c *Channel) Write(p []byte) (int, error) {
	return c.rwc.Write(p)
}

// Read reads from the current TPM response. Over a socket it first gathers
// the whole response (its length is in the response header) so that a
// single large enough Read returns all of it.
func (c *Channel) Read(p []byte) (int, error) {
	if !c.framed {
		return c.rwc.Read(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		resp, err := readResponse(c.rwc)
		if err != nil {
			return 0, err
		}
		c.pending = resp
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// readResponse reads one TPM response: tag (2 bytes), size (4 bytes, the
// length of the whole response), then the rest.
func readResponse(r io.Reader) ([]byte, error) {
	var hdr [6]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("tpmdev: read response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:])
	if size < uint32(len(hdr)) || size > maxResponse {
		return nil, fmt.Errorf("tpmdev: response size %d out of range", size)
	}
	resp := make([]byte, size)
	copy(resp, hdr[:])
	if _, err := io.ReadFull(r, resp[len(hdr):]); err != nil {
		return nil, fmt.Errorf("tpmdev: read response body: %w", err)
	}
	return resp, nil
}

// Close closes the device or the connection.
func (c *Channel) Close() error {
	return c.rwc.Close()
}

// MeasurementLog returns the firmware's TCG event log: the kernel's copy for
// a device file, and an empty log for a swtpm, which has no firmware.
func (c *Channel) MeasurementLog() ([]byte, error) {
	if c.logPath == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tpmdev: no measurement log at %s: %w", c.logPath, err)
		}
		return nil, fmt.Errorf("tpmdev: read measurement log: %w", err)
	}
	return b, nil
}

var _ attest.CommandChannelTPM20 = (*Channel)(nil)
