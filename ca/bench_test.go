//go:build unix

package ca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rootgate/rootgate/ca"
)

// Run both side by side (see docs/benchmarks.md):
//
//	go test -run '^$' -bench 'IssueDevice$|CreateCertificateBare' -benchtime 2s ./ca
//
// Both sign with the same SoftHSM P-256 key (label bench-ca) through
// hsm.Signer and run b.RunParallel with benchParallelism*GOMAXPROCS
// goroutines: a server issues for many concurrent enrollments, and the
// journal group-commits what arrives together.

// benchParallelism multiplies GOMAXPROCS into the number of goroutines.
const benchParallelism = 32

// benchCA is a SoftHSM-backed root shared by one benchmark.
func benchCA(b *testing.B, label string) (crypto.Signer, []*x509.Certificate, crypto.PublicKey) {
	b.Helper()
	signer, chain := hsmRoot(b, label)
	_, devPub := deviceCSR(b)
	return signer, chain, devPub
}

// reportRate reports certificates per second and the process CPU time
// (all threads: signing, journal committer, GC) per certificate since
// cpu0. On a shared machine the rate swings with the other load; the CPU
// per certificate much less.
func reportRate(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/cert")
}

// processCPU returns the user plus system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIssueDevice measures the whole issuance path: device template
// and SAN, random serial, signature in SoftHSM through hsm.Signer, parse
// and sanity check, journal committed durably into the real SQLite
// inventory store.
func BenchmarkIssueDevice(b *testing.B) {
	signer, chain, devPub := benchCA(b, "bench-ca")
	is, err := ca.New(signer, chain, openStore(b), ca.Config{TrustDomain: "bench.example"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := ca.DeviceRequest{PublicKey: devPub, DeviceID: "bench-" + big.NewInt(n.Add(1)).Text(36), EKFingerprint: ekFP}
			if _, err := is.IssueDevice(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, cpu0)
}

// BenchmarkCreateCertificateBare is the baseline: x509.CreateCertificate
// alone with an equivalent device template on the same SoftHSM key,
// nothing else (no serial generation, no journal, no parse).
func BenchmarkCreateCertificateBare(b *testing.B) {
	signer, chain, devPub := benchCA(b, "bench-ca")
	spiffe, _ := url.Parse("spiffe://bench.example/device/bench-1")
	now := time.Now()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "bench-1"},
			NotBefore:             now.Add(-time.Minute),
			NotAfter:              now.Add(24 * time.Hour),
			URIs:                  []*url.URL{spiffe},
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}
		for pb.Next() {
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, chain[0], devPub, signer); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, cpu0)
}
