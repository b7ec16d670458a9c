#!/usr/bin/env bash
# Enrollment benchmarks, whole system: the real `rootgate server` binary,
# 8 swtpm processes enrolling at once over gRPC/TLS on loopback, a SoftHSM
# CA key and the SQLite store; and the server's CPU per enrollment in
# process, next to the bare issuance. See docs/benchmarks.md, "Enrollment".
#
# Usage: bench/enroll.sh [RUNS [ENROLLMENTS]]   (defaults 5 and 400)
#
# Each run builds nothing: the test binaries are compiled once, then run
# RUNS times back to back; every run sets up its own fleet (manufactures 8
# TPMs, starts 8 swtpm and the server) and measures the baseline and the
# enrollments side by side. The raw lines go to stdout, medians over the
# runs at the end. Needs `make deps` (swtpm, swtpm-tools, softhsm2).
set -euo pipefail

runs=${1:-5}
n=${2:-400}
root=$(cd "$(dirname "$0")/.." && pwd)
export GOFLAGS=${GOFLAGS:--mod=mod}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "# machine"
echo "nproc: $(nproc)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "mem: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel: $(uname -r)"
echo "go: $(go version)"
echo "swtpm: $(swtpm --version 2>&1 | head -1)"
echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD -- 2>/dev/null || echo ' (dirty tree)')"
echo "date: $(date -u +%FT%TZ)"
echo

(cd "$root" && go test -c -o "$work/enroll.test" ./enroll && go test -c -o "$work/swtpm.test" ./swtpm-tests)

out="$work/raw.txt"
for i in $(seq 1 "$runs"); do
	echo "# run $i, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
	# The swtpm-tests binary builds cmd/rootgate from the module at start
	# (TestMain), so it runs in its package directory.
	(cd "$root/swtpm-tests" && "$work/swtpm.test" -test.run '^$' -test.bench 'EnrollFleet' \
		-test.benchtime "${n}x" -test.timeout 30m) | grep '^Benchmark' | tee -a "$out"
	(cd "$root/enroll" && "$work/enroll.test" -test.run '^$' -test.bench 'EnrollServerCPU' \
		-test.benchtime 2s -test.timeout 10m) | grep '^Benchmark' | tee -a "$out"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "# medians over $runs runs"
# Each line: name N value unit value unit ...; print "name unit value",
# then the median per (name, unit).
awk '{ for (i = 3; i < NF; i += 2) print $1, $(i+1), $i }' "$out" |
	sort -k1,1 -k2,2 -k3,3g |
	awk '
	function flush() { if (cnt) printf "%-40s %-18s %s\n", key1, key2, v[int((cnt+1)/2)] }
	{ k = $1 " " $2
	  if (k != last) { flush(); last = k; key1 = $1; key2 = $2; cnt = 0 }
	  v[++cnt] = $3 }
	END { flush() }'
