#!/usr/bin/env bash
# scripts/package.sh [BINARY] [OUTDIR]: the Debian package of edgevm, built with dpkg-deb from
# the files in deploy/debian (no extra tools: dpkg-deb is on every Debian system).
#   BINARY  the edgevm binary to package (default: target/release/edgevm, built if missing)
#   OUTDIR  where edgevm_<version>_amd64.deb goes (default: target/deb)
# Contents: /usr/bin/edgevm; /lib/systemd/system/edgevm.service (its own user `edgevm` in
# group kvm, hardened, logs to the journal); /etc/edgevm/edgevm.json (conffile); the hello
# example in /usr/lib/edgevm/programs (copied to /var/lib/edgevm/programs at install); the
# VCL in /usr/share/edgevm/varnish; docs in /usr/share/doc/edgevm. Tested by
# scripts/package-test.sh (tests/all/package.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/edgevm}
out=${2:-target/deb}
if [ ! -x "$bin" ]; then
	cargo build --release -q -p edgevm
fi
export EDGEVM_GUESTS="${EDGEVM_GUESTS:-$PWD/target/guests}"
[ -e "$EDGEVM_GUESTS/example_hello" ] || guest/build.sh "$EDGEVM_GUESTS" >/dev/null
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
install -D -m 0755 "$bin" "$root/usr/bin/edgevm"
install -D -m 0644 deploy/debian/edgevm.service "$root/lib/systemd/system/edgevm.service"
install -D -m 0644 deploy/debian/edgevm.json "$root/etc/edgevm/edgevm.json"
install -D -m 0644 "$EDGEVM_GUESTS/example_hello" "$root/usr/lib/edgevm/programs/hello"
install -D -m 0644 deploy/varnish/edgevm.vcl "$root/usr/share/edgevm/varnish/edgevm.vcl"
install -D -m 0644 deploy/varnish/edgevm-nodes.vcl "$root/usr/share/edgevm/varnish/edgevm-nodes.vcl"
install -D -m 0644 guest/kvm_api.h "$root/usr/include/edgevm/kvm_api.h"
for d in README.md docs/DEPLOY.md docs/CONFIG.md; do
	install -D -m 0644 "$d" "$root/usr/share/doc/edgevm/$(basename "$d")"
done
install -d "$root/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "deploy/debian/$s" "$root/DEBIAN/$s"
done
echo /etc/edgevm/edgevm.json > "$root/DEBIAN/conffiles"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: edgevm
Version: $version
Architecture: amd64
Maintainer: edgevm developers <edgevm@localhost>
Installed-Size: $size
Depends: adduser, libc6, init-system-helpers
Suggests: varnish
Section: web
Priority: optional
Homepage: https://github.com/edgevm/edgevm
Description: HTTP edge-compute server running native programs in per-request KVM VMs
 edgevm runs static x86_64 Linux programs inside tiny KVM virtual machines, one isolated
 VM per request, behind HTTP. The package runs it as a systemd service (user edgevm,
 group kvm) configured in /etc/edgevm/edgevm.json.
CONTROL
mkdir -p "$out"
deb="$out/edgevm_${version}_amd64.deb"
# EDGEVM_DEB_COMPRESS=gzip for a quick test build (default xz).
dpkg-deb --root-owner-group -Z"${EDGEVM_DEB_COMPRESS:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
