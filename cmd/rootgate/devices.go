package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/inventory"
)

// openStore opens the inventory in the server's data directory
// (<data-dir>/rootgate.db). The admin commands work on this file directly;
// SQLite's locking lets them run next to a live server. A data directory
// without a CA is refused before anything is created: it is a mistyped
// --data-dir, not an installation a server reads.
func openStore(ctx context.Context, cfg config.Server) (*inventory.Store, error) {
	if err := requireCA(cfg.DataDir); err != nil {
		return nil, err
	}
	return inventory.Open(ctx, filepath.Join(cfg.DataDir, storeFile))
}

// cliActor names the operator in audit events: "cli:" + $USER.
func cliActor() string {
	name := os.Getenv("USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	if name == "" {
		name = "unknown"
	}
	return "cli:" + name
}

// parseLabels turns repeated k=v flags into a map.
func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

// formatLabels renders labels as sorted k=v pairs.
func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// formatTime renders a time for tables; the zero time is "-".
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// withStore loads the configuration, opens the store, runs fn and closes
// the store.
func withStore(cmd *cobra.Command, sf *serverFlags, fn func(ctx context.Context, st *inventory.Store, asJSON bool) error) error {
	cfg, asJSON, err := loadWithOutput(cmd, sf.load)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(ctx, st, asJSON)
}

func newDevicesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Pre-register, list, approve, reject and revoke devices",
		Long: `Work on the device inventory in <data-dir>/rootgate.db directly (no network
port). Every change is written together with its audit event; the actor is
"cli:$USER".

States: registered (may enroll), pending (waits for approval), active
(enrolled), rejected, quarantined, revoked (final).`,
	}
	cmd.AddCommand(
		newDevicesRegisterCmd(),
		newDevicesListCmd(),
		newDevicesShowCmd(),
		newDevicesTransitionCmd("approve", "Approve a pending or rejected device so that it may enroll", false),
		newDevicesTransitionCmd("reject", "Reject a pending or registered device", true),
		newDevicesTransitionCmd("revoke", "Revoke a device and its certificates (final)", true),
	)
	return cmd
}

func newDevicesRegisterCmd() *cobra.Command {
	var sf serverFlags
	var fp string
	var labels []string
	cmd := &cobra.Command{
		Use:   "register --ek-fingerprint FP [--label k=v]...",
		Short: "Pre-register a device by its EK fingerprint (hex SHA-256 of the PKIX EK public key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				d, err := st.RegisterDevice(ctx, fp, lbl, cliActor())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), d)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "registered device %s (EK %s), state %s\n", d.ID, d.EKFingerprint, d.State)
				return nil
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&fp, "ek-fingerprint", "", "EK fingerprint: 64 hex digits (required)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	_ = cmd.MarkFlagRequired("ek-fingerprint")
	return cmd
}

func newDevicesListCmd() *cobra.Command {
	var sf serverFlags
	var state string
	var limit int
	cmd := &cobra.Command{
		Use:   "list [--state S]",
		Short: "List devices, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				devs, err := st.ListDevices(ctx, inventory.DeviceFilter{State: inventory.DeviceState(state), Limit: limit})
				if err != nil {
					return err
				}
				if asJSON {
					if devs == nil {
						devs = []*inventory.Device{}
					}
					return printJSON(cmd.OutOrStdout(), devs)
				}
				printDevices(cmd.OutOrStdout(), devs)
				return nil
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&state, "state", "", "only devices in this state (registered, pending, active, rejected, quarantined, revoked)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many devices (0: all)")
	return cmd
}

func printDevices(w io.Writer, devs []*inventory.Device) {
	if len(devs) > 0 {
		tw := newTable(w)
		fmt.Fprintln(tw, "ID\tSTATE\tEK FINGERPRINT\tCERTIFICATE\tENROLLED\tLABELS")
		for _, d := range devs {
			fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%s\n", d.ID, d.State, d.EKFingerprint[:16],
				orDash(d.CurrentSerial), formatTime(d.EnrolledAt), formatLabels(d.Labels))
		}
		tw.Flush()
	}
	counts := map[inventory.DeviceState]int{}
	for _, d := range devs {
		counts[d.State]++
	}
	var parts []string
	for _, s := range []inventory.DeviceState{inventory.StateActive, inventory.StateRegistered, inventory.StatePending,
		inventory.StateRejected, inventory.StateQuarantined, inventory.StateRevoked} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	summary := fmt.Sprintf("%d device(s)", len(devs))
	if len(parts) > 0 {
		summary += ": " + strings.Join(parts, ", ")
	}
	fmt.Fprintln(w, summary)
}

// resolveDevice accepts a device ID or an EK fingerprint.
func resolveDevice(ctx context.Context, st *inventory.Store, ref string) (*inventory.Device, error) {
	if len(ref) == 64 {
		if d, err := st.GetDeviceByEK(ctx, ref); err == nil {
			return d, nil
		}
	}
	return st.GetDevice(ctx, ref)
}

type deviceShowJSON struct {
	Device       *inventory.Device        `json:"device"`
	Certificates []*inventory.Certificate `json:"certificates"`
	Events       []*inventory.Event       `json:"events"`
}

func newDevicesShowCmd() *cobra.Command {
	var sf serverFlags
	var events int
	cmd := &cobra.Command{
		Use:   "show ID|EK-FINGERPRINT",
		Short: "Show a device, its certificates and its recent events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				d, err := resolveDevice(ctx, st, args[0])
				if err != nil {
					return err
				}
				certs, err := st.ListCertificates(ctx, d.ID)
				if err != nil {
					return err
				}
				evs, err := st.ListEvents(ctx, inventory.EventFilter{DeviceID: d.ID, Limit: events})
				if err != nil {
					return err
				}
				if asJSON {
					for _, c := range certs {
						c.DER = nil // the journal keeps it; `rootgate ca` tools print certificates
					}
					if certs == nil {
						certs = []*inventory.Certificate{}
					}
					if evs == nil {
						evs = []*inventory.Event{}
					}
					return printJSON(cmd.OutOrStdout(), deviceShowJSON{Device: d, Certificates: certs, Events: evs})
				}
				printDevice(cmd.OutOrStdout(), d, certs, evs)
				return nil
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().IntVar(&events, "events", 10, "how many recent events to show")
	return cmd
}

func printDevice(w io.Writer, d *inventory.Device, certs []*inventory.Certificate, evs []*inventory.Event) {
	tw := newTable(w)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("Device", d.ID)
	row("State", string(d.State))
	if d.StateReason != "" {
		row("Reason", d.StateReason)
	}
	row("EK fingerprint", d.EKFingerprint)
	row("EK certificate", presence(d.EKCertificate))
	row("AK", presence(d.AKPublic))
	row("Labels", formatLabels(d.Labels))
	row("Facts", formatLabels(d.Facts))
	row("Current cert", orDash(d.CurrentSerial))
	row("Created", formatTime(d.CreatedAt))
	row("Updated", formatTime(d.UpdatedAt))
	row("Enrolled", formatTime(d.EnrolledAt))
	if len(d.PCRs) > 0 {
		row("PCRs", fmt.Sprintf("%d values at %s", len(d.PCRs), formatTime(d.PCRsAt)))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nCertificates (%d)\n", len(certs))
	if len(certs) > 0 {
		tw = newTable(w)
		fmt.Fprintln(tw, "  SERIAL\tSTATUS\tNOT BEFORE\tNOT AFTER")
		for _, c := range certs {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", c.Serial, c.Status, formatTime(c.NotBefore), formatTime(c.NotAfter))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nRecent events (%d, newest first)\n", len(evs))
	if len(evs) > 0 {
		tw = newTable(w)
		fmt.Fprintln(tw, "  SEQ\tTIME\tTYPE\tOUTCOME\tACTOR\tREASON")
		for _, e := range evs {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, formatTime(e.At), e.Type, e.Outcome, orDash(e.Actor), orDash(e.Reason))
		}
		tw.Flush()
	}
}

func presence(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return fmt.Sprintf("present (%d bytes)", len(b))
}

// newDevicesTransitionCmd builds approve, reject and revoke.
func newDevicesTransitionCmd(verb, short string, withReason bool) *cobra.Command {
	var sf serverFlags
	var reason string
	cmd := &cobra.Command{
		Use:   verb + " ID|EK-FINGERPRINT",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd, &sf, func(ctx context.Context, st *inventory.Store, asJSON bool) error {
				d, err := resolveDevice(ctx, st, args[0])
				if err != nil {
					return err
				}
				actor := cliActor()
				switch verb {
				case "approve":
					err = st.ApproveDevice(ctx, d.ID, actor)
				case "reject":
					err = st.RejectDevice(ctx, d.ID, actor, reason)
				case "revoke":
					err = st.RevokeDevice(ctx, d.ID, actor, reason)
				}
				if err != nil {
					return err
				}
				after, err := st.GetDevice(ctx, d.ID)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), after)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "device %s %s: %s -> %s\n", d.ID, pastTense(verb), d.State, after.State)
				return nil
			})
		},
	}
	sf.register(cmd)
	if withReason {
		cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with the device and in the audit trail)")
	}
	return cmd
}

func pastTense(verb string) string {
	switch verb {
	case "approve":
		return "approved"
	case "reject":
		return "rejected"
	case "revoke":
		return "revoked"
	}
	return verb + "d"
}
