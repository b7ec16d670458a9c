// Package server is the control-plane daemon behind `rootgate server`: it
// opens the CA key in the HSM, the inventory store and the EK trust
// anchors, and serves the device-facing enrollment service and the
// metrics/health endpoints. A Server is built from its configuration by
// New, serves until its context is cancelled, and then stops gracefully.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/rootgate/rootgate/ca"
	"github.com/rootgate/rootgate/enroll"
	"github.com/rootgate/rootgate/hsm"
	"github.com/rootgate/rootgate/internal/config"
	"github.com/rootgate/rootgate/inventory"
)

// StoreFile is the SQLite store inside the data directory.
const StoreFile = "rootgate.db"

// StorePath returns the store's path in dataDir.
func StorePath(dataDir string) string { return filepath.Join(dataDir, StoreFile) }

// ShutdownGrace bounds how long in-flight requests may run after the
// server is asked to stop.
const ShutdownGrace = 10 * time.Second

// ErrNoCA reports a data directory without a CA: run `rootgate ca init`.
var ErrNoCA = ca.ErrNoCA

// Server is a running control plane: listeners are bound by New, served by
// Run.
type Server struct {
	log     *slog.Logger
	mode    enroll.Mode
	trust   string
	chain   []*x509.Certificate
	token   *hsm.Token
	store   *inventory.Store
	serving *enroll.ServingCert
	grpc    *grpc.Server
	lis     net.Listener
	http    *http.Server
	mlis    net.Listener
	lock    *os.File // <data-dir>/server.lock, flocked
}

// New checks the data directory (a CA, its recorded trust domain, no other
// server on it: <data-dir>/server.lock), binds the listeners, then opens the
// CA key, the store and the EK trust anchors named by cfg and issues the
// serving certificate: a listener that cannot be bound fails New before
// anything is signed. An empty cfg.TrustDomain means the one recorded in
// the data directory (else the default); a different one is refused
// (ca.ErrTrustDomain). On error everything opened is released. The caller
// must call Run or Close.
func New(ctx context.Context, cfg config.Server, log *slog.Logger) (_ *Server, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.mode, err = enroll.ParseMode(cfg.Enroll.Mode); err != nil {
		return nil, err
	}
	if has, err := ca.HasCA(cfg.DataDir); err != nil {
		return nil, err
	} else if !has {
		return nil, fmt.Errorf("no Rootgate CA in %s: run 'rootgate ca init' or check the data directory: %w", cfg.DataDir, ca.ErrNoCA)
	}
	if s.chain, err = ca.LoadChain(cfg.DataDir); err != nil {
		if errors.Is(err, ca.ErrNoCA) {
			return nil, fmt.Errorf("no CA in %s: run 'rootgate ca init' first: %w", ca.Dir(cfg.DataDir), err)
		}
		return nil, fmt.Errorf("load the CA chain: %w", err)
	}
	if s.trust, err = ca.ResolveTrustDomain(cfg.DataDir, cfg.TrustDomain, "the server's configuration"); err != nil {
		return nil, err
	}
	if s.trust == "" {
		s.trust = config.DefaultServer().TrustDomain
	}
	if err := ca.ValidateTrustDomain(s.trust); err != nil {
		return nil, err
	}
	if s.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}

	// Both listeners before anything is signed: a bad or busy address
	// must not cost a journaled serving certificate.
	var lc net.ListenConfig
	if s.lis, err = lc.Listen(ctx, "tcp", cfg.Enroll.Listen); err != nil {
		return nil, fmt.Errorf("enrollment listener: %w", err)
	}
	if cfg.MetricsListen != "" {
		if s.mlis, err = lc.Listen(ctx, "tcp", cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
	}

	u, err := hsm.ParseURI(cfg.HSM.URI)
	if err != nil {
		return nil, fmt.Errorf("HSM URI: %w", err)
	}
	if s.token, err = hsm.Open(ctx, u, hsm.Options{Logger: log}); err != nil {
		return nil, fmt.Errorf("open HSM token for %s: %w", u, err)
	}
	signer, err := s.token.SignerFromURI(ctx)
	if err != nil {
		return nil, fmt.Errorf("CA key in %s: %w", u, err)
	}
	if s.store, err = inventory.Open(ctx, StorePath(cfg.DataDir)); err != nil {
		return nil, fmt.Errorf("open the store: %w", err)
	}
	issuer, err := ca.New(signer, s.chain, s.store, ca.Config{
		TrustDomain:     s.trust,
		DefaultLifetime: cfg.CA.DefaultLifetime.Std(),
		MaxLifetime:     cfg.CA.MaxLifetime.Std(),
	})
	if err != nil {
		return nil, err
	}
	ekv, err := enroll.LoadEKVerifier(cfg.Enroll.EKRoots, cfg.Enroll.EKAllowlist)
	if err != nil {
		return nil, err
	}
	if cfg.Enroll.EKRoots == "" && len(cfg.Enroll.EKAllowlist) == 0 {
		log.Warn("no EK roots (ek_roots) and no EK allowlist: every device will be refused")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc, err := enroll.New(enroll.Config{
		Mode:         s.mode,
		TrustDomain:  s.trust,
		EKVerifier:   ekv,
		Store:        s.store,
		Issuer:       issuer,
		PendingTTL:   cfg.Enroll.PendingTTL.Std(),
		MaxPending:   cfg.Enroll.MaxPending,
		PollInterval: cfg.Enroll.PollInterval.Std(),
		Logger:       log,
		Metrics:      reg,
	})
	if err != nil {
		return nil, err
	}
	if s.serving, err = enroll.NewServingCert(ctx, issuer, cfg.Enroll.ServerNames, 0, log); err != nil {
		return nil, fmt.Errorf("enrollment listener certificate: %w", err)
	}
	s.grpc = enroll.NewGRPCServer(svc, s.serving.TLSConfig())
	if s.mlis != nil {
		s.http = &http.Server{
			Handler:           s.healthMux(reg),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}
	return s, nil
}

// TrustDomain is the SPIFFE trust domain the server issues for.
func (s *Server) TrustDomain() string { return s.trust }

// Addr is the enrollment listener's address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// MetricsAddr is the metrics listener's address, or "" when disabled.
func (s *Server) MetricsAddr() string {
	if s.mlis == nil {
		return ""
	}
	return s.mlis.Addr().String()
}

// Mode is the admission mode in force.
func (s *Server) Mode() enroll.Mode { return s.mode }

// CA is the issuing CA certificate.
func (s *Server) CA() *x509.Certificate { return s.chain[0] }

// ServingCertificate is the enrollment listener's current certificate.
func (s *Server) ServingCertificate() *x509.Certificate { return s.serving.Leaf() }

// Run serves until ctx is cancelled or a listener fails, then stops
// gracefully (in-flight requests get ShutdownGrace) and releases
// everything. It returns the failure, or nil after a cancellation.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() {
		if err := s.grpc.Serve(s.lis); err != nil {
			errc <- fmt.Errorf("enrollment listener: %w", err)
		}
	}()
	go func() {
		if err := s.serving.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			errc <- err
		}
	}()
	if s.http != nil {
		go func() {
			if err := s.http.Serve(s.mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
	}
	s.log.Info("rootgate server started", "listen", s.Addr(), "metrics_listen", s.MetricsAddr(),
		"mode", string(s.mode), "trust_domain", s.trust, "ca_subject", s.CA().Subject.String())

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("rootgate server stopping")
	case runErr = <-errc:
		s.log.Error("rootgate server failed", "error", runErr.Error())
	}
	cancel()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(ShutdownGrace)
	select {
	case <-stopped:
		timer.Stop()
	case <-timer.C:
		s.grpc.Stop()
		<-stopped
	}
	if s.http != nil {
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
		_ = s.http.Shutdown(sctx)
		scancel()
	}
	s.log.Info("rootgate server stopped")
	return runErr
}

// Close releases the listeners, the store, the HSM token and the data
// directory's lock. Run calls it;
// call it directly only when Run is never called.
func (s *Server) Close() error {
	var errs []error
	if s.grpc != nil {
		s.grpc.Stop()
	}
	if s.lis != nil {
		s.lis.Close()
	}
	if s.mlis != nil {
		s.mlis.Close()
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
		s.store = nil
	}
	if s.token != nil {
		errs = append(errs, s.token.Close())
		s.token = nil
	}
	if s.lock != nil {
		// Closing the file releases the flock.
		errs = append(errs, s.lock.Close())
		s.lock = nil
	}
	return errors.Join(errs...)
}

// healthMux serves /metrics from reg, /healthz (the process is up) and
// /readyz (the HSM answers and the store reads).
func (s *Server) healthMux(reg *prometheus.Registry) *http.ServeMux {
	token, store := s.token, s.store
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := token.Health(ctx); err != nil {
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
