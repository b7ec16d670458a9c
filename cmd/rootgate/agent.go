package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/agent"
	"github.com/rootgate/rootgate/internal/config"
)

// tokenEnv is the environment variable read for the enrollment token when
// neither --token nor --token-file is given.
const tokenEnv = "ROOTGATE_ENROLL_TOKEN"

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Device agent: enroll this device's TPM and keep its certificate",
	}
	cmd.AddCommand(newAgentEnrollCmd(), newAgentStatusCmd())
	return cmd
}

// agentFlags binds the agent settings. Flags override the file; the file
// overrides the defaults.
type agentFlags struct {
	file        string
	server      string
	tpm         string
	stateDir    string
	caBundle    string
	serverName  string
	renewBefore time.Duration
}

func (f *agentFlags) register(cmd *cobra.Command, all bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.file, "config", "", "YAML configuration file (unknown keys are errors)")
	fl.StringVar(&f.stateDir, "state-dir", "", "state directory: TPM-wrapped key blobs, certificate, chain [default /var/lib/rootgate-agent]")
	if !all {
		return
	}
	fl.StringVar(&f.server, "server", "", "enrollment server HOST:PORT [default 127.0.0.1:8443]")
	fl.StringVar(&f.tpm, "tpm", "", "TPM: /dev/tpmrm0, tcp://HOST:PORT (swtpm socket) or unix:///PATH [default /dev/tpmrm0]")
	fl.StringVar(&f.caBundle, "ca-bundle", "", "PEM file of the CAs that authenticate the server [default: system roots]")
	fl.StringVar(&f.serverName, "server-name", "", "name checked on the server's certificate [default: host of --server]")
	fl.DurationVar(&f.renewBefore, "renew-before", 0, "re-enroll when the certificate has this much or less left [default: a third of its lifetime]")
}

// load returns the effective agent configuration.
func (f *agentFlags) load(cmd *cobra.Command) (config.Agent, error) {
	cfg := config.DefaultAgent()
	if err := config.Load(f.file, &cfg); err != nil {
		return cfg, err
	}
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("server", &cfg.Server, f.server)
	set("tpm", &cfg.TPM, f.tpm)
	set("state-dir", &cfg.StateDir, f.stateDir)
	set("ca-bundle", &cfg.CABundle, f.caBundle)
	set("server-name", &cfg.ServerName, f.serverName)
	if cmd.Flags().Changed("renew-before") {
		cfg.RenewBefore = config.Duration(f.renewBefore)
	}
	return cfg, nil
}

func newAgentEnrollCmd() *cobra.Command {
	var (
		flags     agentFlags
		token     string
		tokenFile string
		force     bool
		timeout   time.Duration
		logLevel  string
	)
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll this device with its TPM (idempotent: keeps a valid certificate)",
		Long: `Enroll proves this device's identity with its TPM and stores a short-lived
certificate for a TPM-resident key in the state directory.

Run it again at any time: with a certificate that has more than --renew-before
left it does nothing; otherwise it re-enrolls, reusing the AK and creating a
new device key. --force re-enrolls anyway.

While the server cannot be reached (nothing listening, a restart) the agent
retries with exponential backoff (about 1s doubling to 30s) until --timeout,
printing a line per retry. A refusal by the server, or a server certificate
that --ca-bundle does not verify, fails at once.

The enrollment token is a secret. Prefer --token-file or $` + tokenEnv + `:
a --token value is visible to other users in the process list.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, asJSON, err := loadWithOutput(cmd, flags.load)
			if err != nil {
				return err
			}
			tok, err := enrollToken(cmd, token, tokenFile)
			if err != nil {
				return err
			}
			var bundle []byte
			if cfg.CABundle != "" {
				if bundle, err = os.ReadFile(cfg.CABundle); err != nil {
					return fmt.Errorf("CA bundle: %w", err)
				}
			}
			enr, err := agent.New(agent.Config{
				Server:      cfg.Server,
				TPM:         cfg.TPM,
				StateDir:    cfg.StateDir,
				CABundle:    bundle,
				ServerName:  cfg.ServerName,
				Token:       tok,
				RenewBefore: cfg.RenewBefore.Std(),
				Force:       force,
				Logger:      newLogger(logLevel),
				Progress:    func(s agent.Step) { step(cmd, "%s", s.Message) },
			})
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			res, err := enr.Enroll(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			verb := "enrolled"
			switch {
			case res.AlreadyEnrolled:
				verb = "already enrolled"
			case res.Renewed:
				verb = "re-enrolled"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: device %s, certificate valid until %s (%s left)\n",
				verb, res.DeviceID, res.NotAfter.Local().Format(time.RFC3339), time.Until(res.NotAfter).Round(time.Second))
			return nil
		},
	}
	flags.register(cmd, true)
	fl := cmd.Flags()
	fl.StringVar(&token, "token", "", "one-time enrollment token (visible in the process list: prefer --token-file or $"+tokenEnv+")")
	fl.StringVar(&tokenFile, "token-file", "", "file holding the one-time enrollment token")
	fl.BoolVar(&force, "force", false, "re-enroll even if the certificate is still valid")
	fl.DurationVar(&timeout, "timeout", 5*time.Minute, "give up after this long, including retries while the server is unreachable and time waiting for approval (0: no limit)")
	fl.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	return cmd
}

// enrollToken returns the token from --token-file, --token or the
// environment, in that order; giving both flags is an error.
func enrollToken(cmd *cobra.Command, token, file string) (string, error) {
	tokenSet, fileSet := cmd.Flags().Changed("token"), cmd.Flags().Changed("token-file")
	switch {
	case tokenSet && fileSet:
		return "", errors.New("give --token or --token-file, not both")
	case fileSet:
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token file %s is empty", file)
		}
		return t, nil
	case tokenSet:
		return token, nil
	}
	return strings.TrimSpace(os.Getenv(tokenEnv)), nil
}

// Exit statuses of `rootgate agent status` when the device is not healthy
// (1 is any other error: bad flags, an unreadable state directory).
const (
	exitNotEnrolled    = 2
	exitExpired        = 3
	exitKeyNotVerified = 4
)

// statusExit is an unhealthy `agent status`: main prints it and exits with
// its code.
type statusExit struct {
	code int
	err  error
}

func (e *statusExit) Error() string { return e.err.Error() }
func (e *statusExit) Unwrap() error { return e.err }
func (e *statusExit) ExitCode() int { return e.code }

// agentStatus is what `rootgate agent status -o json` prints.
type agentStatus struct {
	Enrolled  bool      `json:"enrolled"`
	DeviceID  string    `json:"device_id,omitempty"`
	SPIFFEID  string    `json:"spiffe_id,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	Server    string    `json:"server,omitempty"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	Remaining string    `json:"remaining,omitempty"`
	Expired   bool      `json:"expired,omitempty"`
	CertPath  string    `json:"cert_path,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	// Key is the device key check (--verify-key); KeyError is why it
	// failed.
	Key      *agent.KeyReport `json:"key,omitempty"`
	KeyError string           `json:"key_error,omitempty"`
}

// verifyKeyTimeout bounds connecting to the TPM for --verify-key.
const verifyKeyTimeout = 30 * time.Second

func newAgentStatusCmd() *cobra.Command {
	var (
		flags     agentFlags
		verifyKey bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this device's enrollment; exits non-zero unless enrolled and valid (a health check)",
		Long: `Status shows the enrollment recorded in the state directory: device ID,
certificate serial and expiry. It reads only the state directory, unless
--verify-key is given.

--verify-key also proves that the certificate's key is held by the TPM: it
loads key.blob into the TPM (--tpm), checks that the loaded key is the
certificate's, has the TPM sign a fresh random challenge and verifies the
signature with the certificate's public key, and reports the key's TPM
attributes (fixedTPM and sensitiveDataOrigin are required: the key was
created in the TPM and cannot leave it). It changes nothing.

The status is printed in every case. Exit status, for health checks:
  0  enrolled, certificate valid (and with --verify-key, the key verified)
  1  error: bad flags or configuration, unreadable state directory
  2  not enrolled
  3  certificate expired
  4  --verify-key: the TPM does not hold the certificate's key, or the TPM
     could not be used
When several apply, the highest is used.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, asJSON, err := loadWithOutput(cmd, flags.load)
			if err != nil {
				return err
			}
			if verifyKey {
				if _, err := agent.ParseTPMDevice(cfg.TPM); err != nil {
					return err
				}
			}
			var st agentStatus
			var unhealthy *statusExit
			e, err := agent.ReadEnrollment(cfg.StateDir)
			switch {
			case errors.Is(err, agent.ErrNotEnrolled):
				st.Reason = err.Error()
				if err == agent.ErrNotEnrolled {
					err = fmt.Errorf("%w: no %s in %s", err, agent.StateFile, cfg.StateDir)
				}
				unhealthy = &statusExit{exitNotEnrolled, err}
			case err != nil:
				return err
			default:
				left := time.Until(e.Certificate.NotAfter)
				st = agentStatus{
					Enrolled:  true,
					DeviceID:  e.State.DeviceID,
					SPIFFEID:  e.State.SPIFFEID,
					Serial:    e.State.Serial,
					Server:    e.State.Server,
					NotAfter:  e.Certificate.NotAfter,
					Remaining: max(left, 0).Round(time.Second).String(),
					Expired:   left <= 0,
					CertPath:  filepath.Join(cfg.StateDir, agent.CertFile),
				}
				if st.Expired {
					unhealthy = &statusExit{exitExpired, fmt.Errorf("certificate expired at %s", st.NotAfter.Local().Format(time.RFC3339))}
				}
				if verifyKey {
					ctx, cancel := context.WithTimeout(cmd.Context(), verifyKeyTimeout)
					st.Key, err = agent.VerifyKey(ctx, cfg.TPM, cfg.StateDir)
					cancel()
					if err != nil {
						st.KeyError = strings.TrimPrefix(err.Error(), "agent: ")
						unhealthy = &statusExit{exitKeyNotVerified, err}
					}
				}
			}
			if err := printStatus(cmd, cfg.StateDir, st, asJSON); err != nil {
				return err
			}
			if unhealthy != nil {
				return unhealthy
			}
			return nil
		},
	}
	flags.register(cmd, false)
	fl := cmd.Flags()
	fl.BoolVar(&verifyKey, "verify-key", false, "also prove with the TPM that it holds the certificate's key (opens the TPM)")
	fl.StringVar(&flags.tpm, "tpm", "", "TPM for --verify-key: /dev/tpmrm0, tcp://HOST:PORT (swtpm socket) or unix:///PATH [default /dev/tpmrm0]")
	return cmd
}

// printStatus prints st as JSON or as a table.
func printStatus(cmd *cobra.Command, stateDir string, st agentStatus, asJSON bool) error {
	out := cmd.OutOrStdout()
	if asJSON {
		return printJSON(out, st)
	}
	if !st.Enrolled {
		fmt.Fprintf(out, "not enrolled (%s)\n", stateDir)
		return nil
	}
	tw := newTable(out)
	fmt.Fprintf(tw, "device ID\t%s\n", st.DeviceID)
	if st.SPIFFEID != "" {
		fmt.Fprintf(tw, "SPIFFE ID\t%s\n", st.SPIFFEID)
	}
	fmt.Fprintf(tw, "serial\t%s\n", st.Serial)
	fmt.Fprintf(tw, "server\t%s\n", st.Server)
	fmt.Fprintf(tw, "expires\t%s\n", st.NotAfter.Local().Format(time.RFC3339))
	if st.Expired {
		fmt.Fprintf(tw, "time left\texpired\n")
	} else {
		fmt.Fprintf(tw, "time left\t%s\n", st.Remaining)
	}
	fmt.Fprintf(tw, "certificate\t%s\n", st.CertPath)
	switch {
	case st.KeyError != "":
		fmt.Fprintf(tw, "device key\tNOT VERIFIED: %s\n", st.KeyError)
	case st.Key != nil:
		fmt.Fprintf(tw, "device key\t%s\n", st.Key.Summary())
	}
	return tw.Flush()
}
