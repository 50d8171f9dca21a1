#!/usr/bin/env bash
# scripts/run-unprivileged.sh [--user NAME] [--low-ports] [--setup-only] serve ARGS...
#
# Run `edgevm serve ARGS...` as an unprivileged system user whose only extra right is
# /dev/kvm (docs/SECURITY.md, "Least privilege").
#
# As root, once (idempotent):
#   * the system group `kvm` exists, and /dev/kvm belongs to it with mode 0660 (what Debian's
#     udev rule does; a container without udev may have root:root 0600);
#   * the system user NAME (default `edgevm`) exists: no home, no login shell, its own group,
#     member of `kvm`.
# Then it starts the server with setpriv: NAME's uid and gid, supplementary groups = kvm only,
# no capabilities (empty bounding, inheritable and ambient sets) and no_new_privs, so nothing
# the process runs can gain privileges. `--low-ports` keeps CAP_NET_BIND_SERVICE (and only
# it) for a port below 1024. `--setup-only` does the setup and exits.
#
# Not root: runs the server directly (you already are unprivileged; you need /dev/kvm access).
#
# The binary is $EDGEVM_BIN, else `edgevm` on PATH, else target/release/edgevm. NAME must be
# able to read the binary, the configuration and the program files, and to write where
# programs are downloaded (`filename` of `uri` programs) and where their state files go
# (`<filename>.state`).
set -euo pipefail

USER_NAME=edgevm
LOW_PORTS=0
SETUP_ONLY=0
while [ $# -gt 0 ]; do
	case "$1" in
	--user) USER_NAME="$2"; shift 2 ;;
	--low-ports) LOW_PORTS=1; shift ;;
	--setup-only) SETUP_ONLY=1; shift ;;
	-h|--help) sed -n '2,26p' "$0"; exit 0 ;;
	*) break ;;
	esac
done

BIN="${EDGEVM_BIN:-}"
if [ -z "$BIN" ]; then
	if command -v edgevm >/dev/null 2>&1; then
		BIN="$(command -v edgevm)"
	else
		BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/edgevm"
	fi
fi

if [ "$(id -u)" -ne 0 ]; then
	[ "$SETUP_ONLY" -eq 1 ] && { echo "run-unprivileged.sh: --setup-only needs root" >&2; exit 1; }
	exec "$BIN" "$@"
fi

if [ ! -c /dev/kvm ]; then
	echo "run-unprivileged.sh: /dev/kvm does not exist (load kvm_intel or kvm_amd)" >&2
	exit 1
fi
getent group kvm >/dev/null || groupadd --system kvm
if [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
	chgrp kvm /dev/kvm
	chmod 0660 /dev/kvm
fi
if ! id "$USER_NAME" >/dev/null 2>&1; then
	useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --groups kvm "$USER_NAME"
elif ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx kvm; then
	usermod -a -G kvm "$USER_NAME"
fi
[ "$SETUP_ONLY" -eq 1 ] && exit 0

if [ ! -x "$BIN" ]; then
	echo "run-unprivileged.sh: no edgevm binary at $BIN (set EDGEVM_BIN, or cargo build --release)" >&2
	exit 1
fi
CAPS=(--inh-caps=-all --ambient-caps=-all --bounding-set=-all)
if [ "$LOW_PORTS" -eq 1 ]; then
	CAPS=(--inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service
		--bounding-set=-all,+net_bind_service)
fi
exec setpriv --reuid="$(id -u "$USER_NAME")" --regid="$(id -g "$USER_NAME")" \
	--groups="$(getent group kvm | cut -d: -f3)" "${CAPS[@]}" --no-new-privs \
	-- "$BIN" "$@"
