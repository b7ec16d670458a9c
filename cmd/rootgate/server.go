package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/enroll"
	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/inventory"
)

// shutdownGrace bounds how long in-flight RPCs may run after the server is
// asked to stop.
const shutdownGrace = 10 * time.Second

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

The CA must exist: run 'rootgate ca init' first. The store is
<data-dir>/rootgate.db; EK manufacturer roots are the PEM or DER files in
--ek-roots.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := sf.load(cmd)
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
			return runServer(cmd, cfg)
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

func runServer(cmd *cobra.Command, cfg config.Server) error {
	ctx := cmd.Context()
	asJSON, err := jsonOutput(cmd)
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel)
	mode, err := enroll.ParseMode(cfg.Enroll.Mode)
	if err != nil {
		return err
	}

	chain, err := ca.LoadChain(cfg.DataDir)
	if err != nil {
		if errors.Is(err, ca.ErrNoCA) {
			return fmt.Errorf("no CA in %s: run 'rootgate ca init' first: %w", ca.Dir(cfg.DataDir), err)
		}
		return fmt.Errorf("load the CA chain: %w", err)
	}
	key, err := openCAKey(ctx, cfg)
	if err != nil {
		return err
	}
	defer key.Close()
	signer, err := key.find(ctx)
	if err != nil {
		return err
	}
	store, err := inventory.Open(ctx, filepath.Join(cfg.DataDir, storeFile))
	if err != nil {
		return fmt.Errorf("open the store: %w", err)
	}
	defer store.Close()
	issuer, err := ca.New(signer, chain, store, ca.Config{
		TrustDomain:     cfg.TrustDomain,
		DefaultLifetime: cfg.CA.DefaultLifetime.Std(),
		MaxLifetime:     cfg.CA.MaxLifetime.Std(),
	})
	if err != nil {
		return err
	}
	ekv, err := enroll.LoadEKVerifier(cfg.Enroll.EKRoots, cfg.Enroll.EKAllowlist)
	if err != nil {
		return err
	}
	if cfg.Enroll.EKRoots == "" && len(cfg.Enroll.EKAllowlist) == 0 {
		log.Warn("no EK roots (--ek-roots) and no EK allowlist: every device will be refused")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc, err := enroll.New(enroll.Config{
		Mode:         mode,
		TrustDomain:  cfg.TrustDomain,
		EKVerifier:   ekv,
		Store:        store,
		Issuer:       issuer,
		PendingTTL:   cfg.Enroll.PendingTTL.Std(),
		MaxPending:   cfg.Enroll.MaxPending,
		PollInterval: cfg.Enroll.PollInterval.Std(),
		Logger:       log,
		Metrics:      reg,
	})
	if err != nil {
		return err
	}
	serving, err := enroll.NewServingCert(ctx, issuer, cfg.Enroll.ServerNames, 0, log)
	if err != nil {
		return fmt.Errorf("enrollment listener certificate: %w", err)
	}

	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", cfg.Enroll.Listen)
	if err != nil {
		return fmt.Errorf("enrollment listener: %w", err)
	}
	gs := enroll.NewGRPCServer(svc, serving.TLSConfig())

	var hs *http.Server
	var mlis net.Listener
	if cfg.MetricsListen != "" {
		mlis, err = lc.Listen(ctx, "tcp", cfg.MetricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
		hs = &http.Server{
			Handler:           healthMux(reg, key, store),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}

	started := serverStarted{
		Listen:      lis.Addr().String(),
		Mode:        string(mode),
		TrustDomain: cfg.TrustDomain,
		CASubject:   chain[0].Subject.String(),
		ServerCert:  serving.Leaf().SerialNumber.Text(16),
	}
	if mlis != nil {
		started.MetricsListen = mlis.Addr().String()
	}
	log.Info("rootgate server started", "listen", started.Listen, "metrics_listen", started.MetricsListen,
		"mode", started.Mode, "trust_domain", started.TrustDomain, "ca_subject", started.CASubject)
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), started); err != nil {
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

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() {
		if err := gs.Serve(lis); err != nil {
			errc <- fmt.Errorf("enrollment listener: %w", err)
		}
	}()
	go func() {
		if err := serving.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			errc <- err
		}
	}()
	if hs != nil {
		go func() {
			if err := hs.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("rootgate server stopping")
	case runErr = <-errc:
		log.Error("rootgate server failed", "error", runErr.Error())
	}
	cancel()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(shutdownGrace)
	select {
	case <-stopped:
		timer.Stop()
	case <-timer.C:
		gs.Stop()
		<-stopped
	}
	if hs != nil {
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		_ = hs.Shutdown(sctx)
		scancel()
	}
	log.Info("rootgate server stopped")
	return runErr
}

// healthMux serves /metrics from reg, /healthz (the process is up) and
// /readyz (the HSM answers and the store reads).
func healthMux(reg *prometheus.Registry, key *caKey, store *inventory.Store) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := key.token.Health(ctx); err != nil {
			http.Error(w, "hsm: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if _, _, err := store.AuditHead(ctx); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
