package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/server"
)

func newServerCmd() *cobra.Command {
	var (
		sf            serverFlags
		listen        string
		ekRoots       string
		mode          string
		metricsListen string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the CA, the device enrollment service and the inventory in one process",
		Long: `server serves the device-facing EnrollmentService (gRPC over server-authenticated
TLS 1.3, with a certificate the CA issues to itself and renews) and, when
metrics_listen is set, /metrics, /healthz and /readyz over plain HTTP.

The CA must exist: run 'rootgate ca init' first. The trust domain is the one
'ca init' recorded in the data directory; a different --trust-domain or
trust_domain is refused. One server runs per data directory
(<data-dir>/server.lock). The store is
<data-dir>/rootgate.db; EK manufacturer roots are the PEM or DER files in
--ek-roots.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, asJSON, err := loadWithOutput(cmd, sf.load)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("listen") {
				cfg.Enroll.Listen = listen
			}
			if f.Changed("ek-roots") {
				cfg.Enroll.EKRoots = ekRoots
			}
			if f.Changed("mode") {
				cfg.Enroll.Mode = mode
			}
			if f.Changed("metrics-listen") {
				cfg.MetricsListen = metricsListen
			}
			return runServer(cmd, cfg, asJSON)
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&listen, "listen", "", "enrollment listener HOST:PORT [default 127.0.0.1:8443]")
	cmd.Flags().StringVar(&ekRoots, "ek-roots", "", "directory of TPM manufacturer root and intermediate certificates (PEM or DER)")
	cmd.Flags().StringVar(&mode, "mode", "", "admission mode: preregistered, token or approval [default token]")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "HOST:PORT for /metrics, /healthz, /readyz; empty disables [default 127.0.0.1:9443]")
	return cmd
}

// serverStarted is the startup line in -o json.
type serverStarted struct {
	Listen        string `json:"listen"`
	MetricsListen string `json:"metrics_listen,omitempty"`
	Mode          string `json:"mode"`
	TrustDomain   string `json:"trust_domain"`
	CASubject     string `json:"ca_subject"`
	ServerCert    string `json:"server_certificate_serial"`
}

func runServer(cmd *cobra.Command, cfg config.Server, asJSON bool) error {
	ctx := cmd.Context()
	srv, err := server.New(ctx, cfg, newLogger(cfg.LogLevel))
	if err != nil {
		return err
	}
	started := serverStarted{
		Listen:        srv.Addr(),
		MetricsListen: srv.MetricsAddr(),
		Mode:          string(srv.Mode()),
		TrustDomain:   srv.TrustDomain(),
		CASubject:     srv.CA().Subject.String(),
		ServerCert:    srv.ServingCertificate().SerialNumber.Text(16),
	}
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), started); err != nil {
			srv.Close()
			return err
		}
	} else {
		metrics := "metrics off"
		if started.MetricsListen != "" {
			metrics = "metrics on http://" + started.MetricsListen
		}
		fmt.Fprintf(cmd.OutOrStdout(), "rootgate server: enrollment on %s (mode %s, trust domain %s), CA %q, %s\n",
			started.Listen, started.Mode, started.TrustDomain, started.CASubject, metrics)
	}
	return srv.Run(ctx)
}
