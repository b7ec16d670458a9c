#!/usr/bin/env bash
# Installs what Rootgate's build, tests and demo need, only when missing.
# Idempotent and quiet when everything is there.
set -euo pipefail

# command -> Debian package
declare -A want=(
  [softhsm2-util]=softhsm2
  [swtpm]=swtpm
  [swtpm_setup]=swtpm-tools
  [tpm2_pcrread]=tpm2-tools
  [pkcs11-tool]=opensc
  [protoc]=protobuf-compiler
  [openssl]=openssl
  [curl]=curl
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
# protoc's well-known types
[ -e /usr/include/google/protobuf/timestamp.proto ] || missing+=(libprotobuf-dev)

if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null 2>&1 || { echo "deps: Go 1.26 is required (https://go.dev/doc/install)" >&2; exit 1; }
go mod download
