//go:build linux

package swtpmtests

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
	"github.com/rootgate/rootgate/attestor"
	"github.com/rootgate/rootgate/internal/testenv"
)

// benchDevices is how many swtpm devices enroll at once.
const benchDevices = 8

// BenchmarkEnrollFleet: 8 swtpm devices (each its own swtpm process with
// its own manufactured EK, on loopback) enroll at once against the real
// `rootgate server` binary (preregistered mode, SoftHSM CA key, SQLite
// store), each over its own TLS connection, repeatedly: one op is one
// enrollment of one device, b.N enrollments shared by the 8 devices. The
// devices are driven by testenv.Device with an ECDSA P-256 AK and device
// key, the TPM work the agent does (activation, key creation certified by
// the AK over the nonce, CSR signed by the TPM key, quote, PCR read).
//
// Sub-benchmarks, side by side in the same run on the same devices:
//
//   - tpm-only: the baseline, the devices' TPM work alone with a challenge
//     made locally (no server): the rate the devices could reach if the
//     server took no time;
//   - enroll: BeginEnrollment over gRPC/TLS, the TPM work, FinishEnrollment.
//
// Metrics: enroll/s (whole run), p50/p90/p99-ms (one enrollment's latency,
// TPM work included), rpc-p50/p99-ms (Begin plus Finish round trips only),
// server-cpu-ms/op (user+system CPU of the server process from
// /proc/PID/stat, before and after, divided by the enrollments: the
// device's TPM time is in other processes and not counted),
// swtpm-cpu-ms/op (the 8 swtpm processes) and client-cpu-ms/op (this
// process: gRPC client and go-attestation's marshalling).
//
// Use a fixed count: -benchtime 200x.
func BenchmarkEnrollFleet(b *testing.B) {
	f := newBenchFleet(b)
	b.Run("tpm-only", func(b *testing.B) { f.run(b, false) })
	b.Run("enroll", func(b *testing.B) { f.run(b, true) })
}

type benchFleet struct {
	srv       *testenv.Rootgate
	serverPID int
	swtpmPIDs []int
	devs      []*testenv.Device
	ekPubs    []any
	clients   []rootgatev1.EnrollmentServiceClient
}

func newBenchFleet(b *testing.B) *benchFleet {
	b.Helper()
	ekca := testenv.NewEKCA(b)
	tpms := ekca.ManufactureN(b, benchDevices)
	srv := testenv.StartServer(b, rootgateBin, testenv.SoftHSM(b), testenv.ServerOptions{
		Mode: "preregistered", EKRoots: ekca.RootsDir(b),
	})
	f := &benchFleet{srv: srv}
	f.serverPID = findPID(b, rootgateBin, "server", "--config", srv.ConfigPath)

	pool := x509.NewCertPool()
	bundle, err := os.ReadFile(srv.CABundle)
	if err != nil || !pool.AppendCertsFromPEM(bundle) {
		b.Fatalf("CA bundle %s: %v", srv.CABundle, err)
	}
	for _, st := range tpms {
		c, err := attestor.ParseEKCertificate(st.EKCert)
		if err != nil {
			b.Fatal(err)
		}
		fp, err := attestor.EKFingerprint(c.Certificate.PublicKey)
		if err != nil {
			b.Fatal(err)
		}
		if out, err := srv.Admin("devices", "register", "--ek-fingerprint", fp); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}

		sw := testenv.StartSwtpm(b, st)
		f.swtpmPIDs = append(f.swtpmPIDs, findPID(b, "--tpmstate", "dir="+st.Dir))
		tpm := sw.OpenTPM(b)
		ekDER, err := x509.MarshalPKIXPublicKey(c.Certificate.PublicKey)
		if err != nil {
			b.Fatal(err)
		}
		// The agent's AK: ECDSA P-256 (agent.loadOrCreateAK).
		ak, err := tpm.NewAK(&attest.AKConfig{Algorithm: attest.ECDSA})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ak.Close(tpm) })
		f.devs = append(f.devs, &testenv.Device{TPM: tpm, EKPublic: ekDER, EKCert: st.EKCert, AK: ak})
		f.ekPubs = append(f.ekPubs, c.Certificate.PublicKey)

		// One TLS connection per device, as one agent has.
		conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13,
		})))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		f.clients = append(f.clients, rootgatev1.NewEnrollmentServiceClient(conn))
	}
	// Warm up: every device enrolls once (first enrollment of a registered
	// device; every measured one is a re-enrollment of an active device),
	// and every connection is established.
	if _, err := f.work(b, benchDevices, true); err != nil {
		b.Fatal(err)
	}
	return f
}

// run does b.N enrollments (or only their TPM work) across the devices
// and reports the figures.
func (f *benchFleet) run(b *testing.B, withServer bool) {
	srv0, sw0 := procCPU(b, f.serverPID), procCPU(b, f.swtpmPIDs...)
	self0 := selfCPU()
	b.ResetTimer()
	start := time.Now()
	lat, err := f.work(b, b.N, withServer)
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	srvCPU, swCPU := procCPU(b, f.serverPID)-srv0, procCPU(b, f.swtpmPIDs...)-sw0
	selfCPU := selfCPU() - self0

	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(n/elapsed.Seconds(), "enroll/s")
	b.ReportMetric(ms(pct(lat.total, 50)), "p50-ms")
	b.ReportMetric(ms(pct(lat.total, 90)), "p90-ms")
	b.ReportMetric(ms(pct(lat.total, 99)), "p99-ms")
	if withServer {
		b.ReportMetric(ms(pct(lat.rpc, 50)), "rpc-p50-ms")
		b.ReportMetric(ms(pct(lat.rpc, 99)), "rpc-p99-ms")
		b.ReportMetric(ms(srvCPU)/n, "server-cpu-ms/op")
	}
	b.ReportMetric(ms(swCPU)/n, "swtpm-cpu-ms/op")
	b.ReportMetric(ms(selfCPU)/n, "client-cpu-ms/op")
}

type latencies struct{ total, rpc []time.Duration }

// work runs n enrollments (withServer) or their TPM work alone, taken one
// at a time by the devices' goroutines, and returns each one's latency.
func (f *benchFleet) work(b *testing.B, n int, withServer bool) (latencies, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var next atomic.Int64
	var mu sync.Mutex
	var all latencies
	errs := make([]error, len(f.devs))
	var wg sync.WaitGroup
	for i := range f.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tb := &workerTB{TB: b, err: &errs[i]}
			var mine latencies
			defer func() {
				mu.Lock()
				all.total = append(all.total, mine.total...)
				all.rpc = append(all.rpc, mine.rpc...)
				mu.Unlock()
			}()
			for next.Add(1) <= int64(n) {
				total, rpc, err := f.once(ctx, tb, i, withServer)
				if err != nil {
					errs[i] = err
					return
				}
				mine.total = append(mine.total, total)
				mine.rpc = append(mine.rpc, rpc)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return all, fmt.Errorf("device %d: %w", i, err)
		}
	}
	return all, nil
}

// once is one enrollment by device i, or its TPM work alone.
func (f *benchFleet) once(ctx context.Context, tb testing.TB, i int, withServer bool) (total, rpc time.Duration, err error) {
	d := f.devs[i]
	if !withServer {
		// The server's part done here, untimed: a challenge for the AK
		// sealed to the EK, and a nonce.
		ap := attest.ActivationParameters{EK: f.ekPubs[i], AK: d.AK.AttestationParameters()}
		_, ec, err := ap.Generate()
		if err != nil {
			return 0, 0, err
		}
		nonce := make([]byte, 32)
		rand.Read(nonce)
		ch := &rootgatev1.BeginEnrollmentResponse{
			Status:     rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE,
			Credential: &rootgatev1.EncryptedCredential{Credential: ec.Credential, Secret: ec.Secret},
			Nonce:      nonce,
		}
		t0 := time.Now()
		d.Answer(tb, ch)
		return time.Since(t0), 0, nil
	}
	c := f.clients[i]
	t0 := time.Now()
	begin, err := c.BeginEnrollment(ctx, d.Begin(""))
	if err != nil {
		return 0, 0, fmt.Errorf("BeginEnrollment: %w", err)
	}
	if begin.Status != rootgatev1.EnrollmentStatus_ENROLLMENT_STATUS_CHALLENGE {
		return 0, 0, fmt.Errorf("BeginEnrollment: status %v", begin.Status)
	}
	rpc = time.Since(t0)
	req, _ := d.Answer(tb, begin)
	t1 := time.Now()
	fin, err := c.FinishEnrollment(ctx, req)
	if err != nil {
		return 0, 0, fmt.Errorf("FinishEnrollment: %w", err)
	}
	if len(fin.Certificate) == 0 {
		return 0, 0, fmt.Errorf("FinishEnrollment: no certificate")
	}
	end := time.Now()
	return end.Sub(t0), rpc + end.Sub(t1), nil
}

// workerTB lets testenv.Device's helpers, which fail through tb.Fatalf, run
// on a worker goroutine: a failure is recorded and ends the goroutine.
type workerTB struct {
	testing.TB
	err *error
}

func (w *workerTB) Helper() {}
func (w *workerTB) Fatal(args ...any) {
	*w.err = fmt.Errorf("%s", strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
	runtime.Goexit()
}
func (w *workerTB) Fatalf(format string, args ...any) {
	*w.err = fmt.Errorf(format, args...)
	runtime.Goexit()
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// findPID returns the one process whose command line contains every one of
// args, in order (unique temporary paths make it unambiguous).
func findPID(tb testing.TB, args ...string) int {
	tb.Helper()
	want := []byte(strings.Join(args, "\x00"))
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	var found []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cl, want) {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		tb.Fatalf("processes with %q in their command line: %v, want one", args, found)
	}
	return found[0]
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the user+system CPU time of the processes (all threads)
// from /proc/PID/stat.
func procCPU(tb testing.TB, pids ...int) time.Duration {
	tb.Helper()
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			tb.Fatal(err)
		}
		// Fields after the command name, which is in parentheses and may
		// hold spaces: state is field 3, utime 14, stime 15.
		rest := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		for _, idx := range []int{14 - 3, 15 - 3} {
			v, err := strconv.ParseInt(rest[idx], 10, 64)
			if err != nil {
				tb.Fatalf("/proc/%d/stat: %v", pid, err)
			}
			ticks += v
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
