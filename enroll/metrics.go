package enroll

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Outcomes, the "outcome" label of rootgate_enroll_requests_total.
const (
	outcomeChallenge = "challenge" // Begin answered with a challenge
	outcomePending   = "pending"   // Begin answered PENDING_APPROVAL
	outcomeAccepted  = "accepted"  // Finish issued a certificate
	outcomeRefused   = "refused"   // any error status
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	pending  prometheus.GaugeFunc
}

func newMetrics(pendingCount func() int) *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "rootgate", Subsystem: "enroll", Name: "requests_total",
			Help: "Enrollment RPCs by method, outcome (challenge, pending, accepted, refused) and gRPC code.",
		}, []string{"method", "outcome", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "rootgate", Subsystem: "enroll", Name: "duration_seconds",
			Help:    "Server-side time per enrollment RPC.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"method"}),
		pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "rootgate", Subsystem: "enroll", Name: "pending_challenges",
			Help: "Challenges issued and not yet answered (expired ones until swept).",
		}, func() float64 { return float64(pendingCount()) }),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.pending} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("enroll: register metrics: %w", err)
		}
	}
	return nil
}

func (m *metrics) observe(method, outcome string, code codes.Code, start time.Time) {
	m.requests.WithLabelValues(method, outcome, code.String()).Inc()
	m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
}
