//go:build unix

package enroll

import (
	"context"
	"crypto/x509"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/rootgate/rootgate/ca"
)

// BenchmarkEnrollServerCPU measures the server's cost of one enrollment,
// BeginEnrollment plus FinishEnrollment called directly on the Service
// (EK chain, AK parameters, credential challenge, pending table, secret,
// CSR, certification and quote checks, HSM signature, issuance journal,
// device activation and audit events in the real SQLite store), with the
// device's TPM work (activation, key creation and certification, CSR
// signature, quote, PCR read) done while the timer and the CPU counter are
// stopped. The device re-enrolls each iteration, with an ECDSA P-256 AK as
// the agent creates.
//
// Two figures per sub-benchmark: ns/op is wall time (it includes waiting
// for fsync of the SQLite commits), cpu-ns/op is the process's user+system
// CPU time (getrusage) counted only around the server calls.
//
//   - enroll: Begin + Finish;
//   - issue-only: the baseline, (*ca.Issuer).IssueDevice alone on the
//     same issuer, store and CSR: the HSM signature and the issuance
//     journal that every enrollment ends with. enroll minus issue-only is
//     what the enrollment protocol and its checks add.
func BenchmarkEnrollServerCPU(b *testing.B) {
	ctx := context.Background()
	e := newRealEnv(b, ModePreregistered)
	// The agent's AK is ECDSA P-256 (agent.loadOrCreateAK); testenv's
	// default is RSA. A swtpm holds three transient objects: unload that
	// one first (its cleanup closing it again is harmless).
	if err := e.dev.AK.Close(e.dev.TPM); err != nil {
		b.Fatal(err)
	}
	ak, err := e.dev.TPM.NewAK(&attest.AKConfig{Algorithm: attest.ECDSA})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ak.Close(e.dev.TPM) })
	e.dev.AK = ak
	fp := mustFingerprint(b, e.dev.EKPublic)
	if _, err := e.store.RegisterDevice(ctx, fp, nil, "bench"); err != nil {
		b.Fatal(err)
	}
	// One enrollment first: the device is active from then on, as in every
	// measured iteration, and the CSR serves issue-only.
	begin, err := e.svc.BeginEnrollment(ctx, e.dev.Begin(""))
	if err != nil {
		b.Fatal(err)
	}
	req, _ := e.dev.Answer(b, begin)
	fin, err := e.svc.FinishEnrollment(ctx, req)
	if err != nil {
		b.Fatal(err)
	}

	b.Run("enroll", func(b *testing.B) {
		var cpu time.Duration
		for b.Loop() {
			c0 := processCPU()
			resp, err := e.svc.BeginEnrollment(ctx, e.dev.Begin(""))
			cpu += processCPU() - c0
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			req, _ := e.dev.Answer(b, resp)
			b.StartTimer()
			c0 = processCPU()
			_, err = e.svc.FinishEnrollment(ctx, req)
			cpu += processCPU() - c0
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	})

	b.Run("issue-only", func(b *testing.B) {
		csr, err := x509.ParseCertificateRequest(req.Csr)
		if err != nil {
			b.Fatal(err)
		}
		dreq := ca.DeviceRequest{PublicKey: csr.PublicKey, DeviceID: fin.DeviceId, EKFingerprint: fp}
		var cpu time.Duration
		for b.Loop() {
			c0 := processCPU()
			_, err := e.issuer.IssueDevice(ctx, dreq)
			cpu += processCPU() - c0
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	})
}

// processCPU returns the user plus system CPU time of this process so far,
// all threads included.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
