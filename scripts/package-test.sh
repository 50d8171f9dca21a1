#!/usr/bin/env bash
# scripts/package-test.sh DEB: install the package on this machine (root), check it, run the
# service's command as the service user, ask it, stop it, remove the package, and check that
# nothing is left running or installed. Bounded; every process stopped by PID.
#
# With systemd as init (a normal machine) the package's postinst starts edgevm.service and the
# test asks it; without (containers, CI) it runs the unit's ExecStart itself as user edgevm.
set -euo pipefail
deb=$1
[ "$(id -u)" -eq 0 ] || { echo "package-test: needs root (dpkg -i)" >&2; exit 1; }
if dpkg -s edgevm >/dev/null 2>&1; then
	echo "package-test: edgevm is installed already; not touching it" >&2
	exit 1
fi
port=${EDGEVM_TEST_PORT:-18080}
pid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	dpkg -P edgevm >/dev/null 2>&1 || true
}
trap cleanup EXIT
dpkg -i "$deb" >/dev/null
test -x /usr/bin/edgevm
test -f /etc/edgevm/edgevm.json
id edgevm | grep -q '(kvm)'
test "$(stat -c %U /var/lib/edgevm/programs/hello)" = edgevm
if command -v systemd-analyze >/dev/null; then
	# The unit parses (systemd's own checker) and its sandboxing rates "OK" or better.
	problems=$(systemd-analyze verify /lib/systemd/system/edgevm.service 2>&1 | grep -v "^$" | grep -vi "not booted\|Failed to connect\|bus" || true)
	[ -z "$problems" ] || { echo "package-test: systemd-analyze verify: $problems" >&2; exit 1; }
	exposure=$(systemd-analyze security --offline=true /lib/systemd/system/edgevm.service 2>/dev/null | sed -n 's/.*Overall exposure level for edgevm.service: \([0-9.]*\).*/\1/p')
	echo "package-test: systemd-analyze security: exposure ${exposure:-?} (0 best, 10 worst)"
	awk -v e="${exposure:-10}" 'BEGIN { exit !(e < 4) }' || { echo "package-test: unit exposure ${exposure:-?} >= 4" >&2; exit 1; }
fi
/usr/bin/edgevm check --config /etc/edgevm/edgevm.json >/dev/null
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/edgevm.service)
if [ -d /run/systemd/system ]; then
	systemctl is-active --quiet edgevm
	url=http://127.0.0.1:8080
else
	# What the unit runs, as the unit's user, with what of its sandbox works without systemd:
	# NoNewPrivileges, no capabilities (bounding, inheritable, ambient), ProtectSystem=strict
	# (a private mount namespace whose root is read-only but /var/lib/edgevm, the unit's
	# ReadWritePaths); /dev/kvm must be usable by group kvm.
	log=$(mktemp)
	unshare --mount --propagation private -- sh -c '
		mount --bind /var/lib/edgevm /var/lib/edgevm &&
		mount -o remount,bind,ro / &&
		exec setpriv --reuid=edgevm --regid=edgevm --init-groups --no-new-privs \
			--bounding-set=-all --inh-caps=-all --ambient-caps=-all -- "$@"' \
		sh $exec_start --listen 127.0.0.1:$port >"$log" 2>&1 &
	pid=$!
	url=http://127.0.0.1:$port
fi
ok=""
for _ in $(seq 1 100); do
	if [ "$(curl -s "$url/_edgevm/health")" = ready ]; then ok=1; break; fi
	sleep 0.1
done
[ -n "$ok" ] || { echo "package-test: the service did not become ready" >&2; cat "${log:-/dev/null}" >&2; exit 1; }
body=$(curl -sf "$url/hello/")
[ "$body" = "Hello World!" ] || { echo "package-test: /hello/ answered '$body'" >&2; exit 1; }
if [ -n "$pid" ]; then
	# The unit's MemoryDenyWriteExecute: the serving process holds no writable and executable
	# mapping (systemd would refuse to create one).
	if grep -q ' rwx' "/proc/$pid/maps"; then
		echo "package-test: W+X mapping in the server:" >&2; grep ' rwx' "/proc/$pid/maps" >&2; exit 1
	fi
	# ProtectSystem=strict as emulated above: the server's root is read-only.
	grep -q ' / / ro,' "/proc/$pid/mountinfo" || { echo "package-test: the root is not read-only for the server" >&2; exit 1; }
	kill -TERM "$pid"
	for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then echo "package-test: no exit after SIGTERM" >&2; exit 1; fi
	wait "$pid" || { echo "package-test: exit status $?" >&2; cat "$log" >&2; exit 1; }
	pid=""
	rm -f "$log"
fi
dpkg -r edgevm >/dev/null
if pgrep -u edgevm >/dev/null 2>&1; then
	echo "package-test: edgevm still running after dpkg -r" >&2; exit 1
fi
test ! -e /usr/bin/edgevm
dpkg -P edgevm >/dev/null
test ! -e /etc/edgevm/edgevm.json
! getent passwd edgevm >/dev/null
echo "package-test: ok (installed, served, stopped, removed)"
