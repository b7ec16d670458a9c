#!/usr/bin/env bash
# Rootgate demo: a CA whose key lives in a fresh SoftHSM token, a software
# TPM (swtpm) with an EK certificate from a private manufacturer CA, the
# device enrolling over gRPC, and the results checked with openssl and
# pkcs11-tool. Everything lives under ./demo-data and listens on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-./bin/rootgate}
DEMO=${DEMO:-$PWD/demo-data}
MODULE=/usr/lib/softhsm/libsofthsm2.so

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { # a loopback port the kernel just handed out
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$DEMO"
mkdir -p "$DEMO"/{softhsm/tokens,server,ekca/localca,tpm/state,tpm/ekcerts,agent}
chmod 700 "$DEMO"

bold "1. A fresh SoftHSM token for the CA key"
export SOFTHSM2_CONF="$DEMO/softhsm/softhsm2.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$DEMO/softhsm/tokens" >"$SOFTHSM2_CONF"
PIN=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
umask 077
printf '%s\n' "$PIN" >"$DEMO/hsm-pin"
softhsm2-util --init-token --free --label rootgate-demo --pin "$PIN" --so-pin "$PIN$PIN" >/dev/null
echo "token rootgate-demo initialised; the PIN is in $DEMO/hsm-pin (0600), never on a command line of rootgate"
HSM="pkcs11:token=rootgate-demo;object=rootgate-ca?module-path=$MODULE&pin-source=file:$DEMO/hsm-pin"
SRV=(--data-dir "$DEMO/server" --hsm "$HSM" --trust-domain demo.rootgate.test)
# ca init logs at info level by default; its step list already says what the
# log line would, so the demo's ca init runs with log_level: warn.
printf 'log_level: warn\n' >"$DEMO/ca-init.yaml"

bold "2. rootgate ca init: a root CA whose key is generated inside the HSM"
$BIN ca init "${SRV[@]}" --config "$DEMO/ca-init.yaml" --common-name "Rootgate Demo CA"

bold "3. The CA key as the token reports it: sensitive, never extractable"
objs=$(pkcs11-tool --module "$MODULE" --token-label rootgate-demo --login --pin "$PIN" --list-objects --type privkey 2>/dev/null)
echo "$objs"
access=$(echo "$objs" | sed -n 's/^ *Access: *//p')
case "$access" in
  *sensitive*"never extractable"*) echo "=> the CA private key is sensitive and never extractable: it cannot leave the HSM" ;;
  *) echo "UNEXPECTED key attributes: $access" >&2; exit 1 ;;
esac

bold "4. Run again: rootgate finds the existing key by label and keeps it"
again=$($BIN ca init "${SRV[@]}" --config "$DEMO/ca-init.yaml" -o json)
status=$(printf '%s\n' "$again" | sed -n 's/^  "status": "\([^"]*\)".*/\1/p')
created=$(printf '%s\n' "$again" | sed -n 's/^  "key_created": \([a-z]*\).*/\1/p')
if [ "$status" != exists ] || [ "$created" != false ] || ! printf '%s\n' "$again" | grep -q '"matches_certificate": true'; then
  echo "UNEXPECTED ca init re-run: $again" >&2; exit 1
fi
echo "ca init again: status \"$status\", key_created $created: the CA and its HSM key rootgate-ca were kept"
$BIN ca show "${SRV[@]}"

bold "5. A manufacturer: swtpm with an EK certificate from a private EK CA"
cat >"$DEMO/ekca/swtpm-localca.conf" <<CONF
statedir = $DEMO/ekca/localca
signingkey = $DEMO/ekca/localca/signkey.pem
issuercert = $DEMO/ekca/localca/issuercert.pem
certserial = $DEMO/ekca/localca/certserial
CONF
printf -- '--platform-manufacturer Rootgate\n--platform-version 2.1\n--platform-model swtpm-demo\n' >"$DEMO/ekca/swtpm-localca.options"
cat >"$DEMO/ekca/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $DEMO/ekca/swtpm-localca.conf
create_certs_tool_options = $DEMO/ekca/swtpm-localca.options
active_pcr_banks = sha256
CONF
XDG_CONFIG_HOME="$DEMO/ekca" HOME="$DEMO/ekca" swtpm_setup --tpm2 --tpmstate "$DEMO/tpm/state" \
  --config "$DEMO/ekca/swtpm_setup.conf" --pcr-banks sha256 --create-ek-cert \
  --write-ek-cert-files "$DEMO/tpm/ekcerts" --logfile "$DEMO/tpm/setup.log" >/dev/null
mkdir -p "$DEMO/ekroots"
cp "$DEMO/ekca/localca/swtpm-localca-rootca-cert.pem" "$DEMO/ekca/localca/issuercert.pem" "$DEMO/ekroots/"
openssl x509 -in "$DEMO/tpm/ekcerts/ek-rsa2048.crt" -inform DER -noout -issuer -serial 2>/dev/null | sed 's/^/EK certificate /'
TPM_PORT=$(free_port)
swtpm socket --tpm2 --tpmstate dir="$DEMO/tpm/state" \
  --server type=tcp,port="$TPM_PORT",bindaddr=127.0.0.1 --ctrl type=unixio,path="$DEMO/tpm/ctrl.sock" \
  --flags not-need-init,startup-clear --log file="$DEMO/tpm/swtpm.log" &
pids+=($!)
echo "swtpm listening on 127.0.0.1:$TPM_PORT"

bold "6. rootgate server: CA + enrollment + inventory (token mode)"
LISTEN=127.0.0.1:$(free_port)
METRICS=127.0.0.1:$(free_port)
$BIN server "${SRV[@]}" --listen "$LISTEN" --metrics-listen "$METRICS" --ek-roots "$DEMO/ekroots" --mode token \
  >"$DEMO/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS "http://$METRICS/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://$METRICS/readyz" >/dev/null || { echo "server not ready:" >&2; cat "$DEMO/server.log" >&2; exit 1; }
echo "server ready on $LISTEN (log: $DEMO/server.log)"

bold "7. An admin creates a one-time enrollment token"
$BIN tokens create "${SRV[@]}" --ttl 15m -o json >"$DEMO/token.json"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"])' "$DEMO/token.json" >"$DEMO/agent/token" 2>/dev/null \
  || sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p' "$DEMO/token.json" >"$DEMO/agent/token"
echo "token written to $DEMO/agent/token"

bold "8. rootgate agent enroll: the device proves itself with its TPM"
$BIN agent enroll --server "$LISTEN" --server-name localhost --tpm "tcp://127.0.0.1:$TPM_PORT" \
  --state-dir "$DEMO/agent/state" --token-file "$DEMO/agent/token" --ca-bundle "$DEMO/server/ca/chain.pem"

bold "9. The device certificate, checked with openssl"
CERT="$DEMO/agent/state/cert.pem"
openssl x509 -in "$CERT" -noout -subject -issuer -dates -ext subjectAltName,extendedKeyUsage
openssl verify -CAfile "$DEMO/server/ca/chain.pem" "$CERT"

bold "10. The certificate's key is in the TPM: loaded from its blob, compared, and made to sign"
$BIN agent status --state-dir "$DEMO/agent/state" --verify-key --tpm "tcp://127.0.0.1:$TPM_PORT"

bold "11. Run again: the agent is idempotent"
$BIN agent enroll --server "$LISTEN" --server-name localhost --tpm "tcp://127.0.0.1:$TPM_PORT" \
  --state-dir "$DEMO/agent/state" --ca-bundle "$DEMO/server/ca/chain.pem"

bold "12. The inventory"
$BIN devices list "${SRV[@]}"

bold "13. The audit trail: every step recorded, hash-chained"
$BIN audit list "${SRV[@]}" --limit 5
$BIN audit verify "${SRV[@]}"
echo
echo "Demo complete. Everything is in $DEMO."
