package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/config"
)

// serverFlags binds the settings shared by `rootgate server` and the admin
// commands that work on the server's data directory and HSM. Flags override
// the file; the file overrides the defaults. The trust domain is the
// exception: the one `rootgate ca init` recorded in the data directory
// beats the default, and an explicit one (flag or file) must equal it.
type serverFlags struct {
	file        string
	dataDir     string
	hsmURI      string
	trustDomain string
}

func (f *serverFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.file, "config", "", "YAML configuration file (unknown keys are errors)")
	cmd.Flags().StringVar(&f.dataDir, "data-dir", "", "data directory (store, CA chain) [default /var/lib/rootgate]")
	cmd.Flags().StringVar(&f.hsmURI, "hsm", "", "PKCS#11 URI of the CA key (RFC 7512); the PIN comes from pin-source=file:|env: or $ROOTGATE_HSM_PIN, never a flag")
	cmd.Flags().StringVar(&f.trustDomain, "trust-domain", "", "SPIFFE trust domain; must match the one 'rootgate ca init' recorded in the data directory [default: the recorded one, else rootgate.local]")
}

// load returns the effective server configuration for a command that works
// on an existing CA: a data directory without one is refused (nothing is
// created), and the trust domain is resolved against the recorded one.
func (f *serverFlags) load(cmd *cobra.Command) (config.Server, error) {
	cfg, explicit, err := f.loadConfig(cmd)
	if err != nil {
		return cfg, err
	}
	if err := requireCA(cfg.DataDir); err != nil {
		return cfg, err
	}
	err = f.resolveTrustDomain(&cfg, explicit)
	return cfg, err
}

// loadInit is load for `rootgate ca init`: the data directory may hold no
// CA yet. It reports whether the trust domain was given explicitly.
func (f *serverFlags) loadInit(cmd *cobra.Command) (config.Server, bool, error) {
	cfg, explicit, err := f.loadConfig(cmd)
	if err != nil {
		return cfg, false, err
	}
	err = f.resolveTrustDomain(&cfg, explicit)
	return cfg, explicit != "", err
}

// loadConfig reads defaults, file and flags. The trust domain is left empty
// unless given explicitly; explicit then names where it came from.
func (f *serverFlags) loadConfig(cmd *cobra.Command) (cfg config.Server, explicit string, err error) {
	cfg = config.DefaultServer()
	// The default trust domain is no statement: only the file or the flag
	// can contradict the data directory.
	cfg.TrustDomain = ""
	if err := config.Load(f.file, &cfg); err != nil {
		return cfg, "", err
	}
	if cfg.TrustDomain != "" {
		explicit = "trust_domain in " + f.file
	}
	if cmd.Flags().Changed("data-dir") {
		cfg.DataDir = f.dataDir
	}
	if cmd.Flags().Changed("hsm") {
		// A PIN on the command line is visible to every user in ps.
		if u, err := hsm.ParseURI(f.hsmURI); err == nil && u.PinValue != "" {
			return cfg, "", errors.New("--hsm: pin-value is not accepted on the command line (it would show in the process list): use pin-source=file:PATH, pin-source=env:NAME or $ROOTGATE_HSM_PIN")
		}
		cfg.HSM.URI = f.hsmURI
	}
	if cmd.Flags().Changed("trust-domain") {
		cfg.TrustDomain, explicit = f.trustDomain, "--trust-domain"
	}
	if explicit != "" {
		if err := ca.ValidateTrustDomain(cfg.TrustDomain); err != nil {
			return cfg, "", fmt.Errorf("%s: %w", explicit, err)
		}
	}
	return cfg, explicit, nil
}

// resolveTrustDomain sets cfg.TrustDomain to the one recorded in the data
// directory, refusing an explicit one that differs; with none recorded (a
// data directory from before the record, or no CA yet) the explicit one or
// the default applies.
func (f *serverFlags) resolveTrustDomain(cfg *config.Server, explicit string) error {
	td, err := ca.ResolveTrustDomain(cfg.DataDir, cfg.TrustDomain, explicit)
	if err != nil {
		return err
	}
	if td == "" {
		td = config.DefaultServer().TrustDomain
	}
	cfg.TrustDomain = td
	return nil
}

// requireCA refuses a data directory without a CA (no chain, no pending
// intermediate CSR): a mistyped --data-dir must not become a new, empty
// installation that no server reads.
func requireCA(dataDir string) error {
	has, err := ca.HasCA(dataDir)
	if err != nil {
		return err
	}
	if !has {
		return fmt.Errorf("no Rootgate CA in %s: run 'rootgate ca init' or check --data-dir", dataDir)
	}
	return nil
}

// jsonOutput reports whether -o json was asked for.
func jsonOutput(cmd *cobra.Command) (bool, error) {
	o, _ := cmd.Flags().GetString("output")
	switch strings.ToLower(o) {
	case "", "text":
		return false, nil
	case "json":
		return true, nil
	}
	return false, fmt.Errorf("unknown output format %q (want text or json)", o)
}

// loadWithOutput reads -o, then the configuration with load (serverFlags.load
// or agentFlags.load), and reports whether JSON output was asked for. A bad
// -o is reported before a bad configuration.
func loadWithOutput[C any](cmd *cobra.Command, load func(*cobra.Command) (C, error)) (cfg C, asJSON bool, err error) {
	if asJSON, err = jsonOutput(cmd); err != nil {
		return cfg, false, err
	}
	cfg, err = load(cmd)
	return cfg, asJSON, err
}

// printJSON writes v as indented JSON, with &, < and > as themselves (URIs
// and subjects are printed as they are, not as \u0026).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tab-aligned writer for text listings; call Flush.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// newLogger builds the process logger; libraries receive it, never print.
func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// step prints a progress line for humans (suppressed with -o json).
func step(cmd *cobra.Command, format string, args ...any) {
	if j, _ := jsonOutput(cmd); j {
		return
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "• "+format+"\n", args...)
}
