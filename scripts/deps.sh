#!/usr/bin/env bash
# Install what edgevm's build, guests and tests need on Debian 12 (idempotent, quiet when done).
set -euo pipefail
pkgs=(gcc g++ make musl-tools liblzma-dev pkg-config curl wrk gdb varnish python3 liblua5.4-dev libpython3.11-dev golang-go openssl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
	echo "deps: cargo not found: install Rust (https://rustup.rs)" >&2
	exit 1
fi
if [ ! -e /dev/kvm ]; then
	echo "deps: WARNING: /dev/kvm is missing: edgevm needs KVM (load kvm_intel/kvm_amd, or run on a machine with virtualization)" >&2
fi
