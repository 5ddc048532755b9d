#!/usr/bin/env bash
# Builds the Debian package of unet-edge for one architecture from an already built binary:
#   packaging/build-deb.sh amd64|arm64|armhf BINARY OUTDIR
# Contents: /usr/bin/unet-edge (the default model embedded), both models under
# /usr/share/unet-edge/models, the systemd unit, /etc/unet-edge/config.toml (a conffile: kept,
# or offered for merge, on upgrade), the README and the model card. Needs dpkg-deb and the
# architecture's strip (binutils).
set -euo pipefail
arch=${1:?arch: amd64, arm64 or armhf}
bin=${2:?path of the unet-edge binary for that architecture}
out=${3:?output directory}
case "$arch" in amd64|arm64|armhf) ;; *) echo "unknown arch $arch (amd64, arm64, armhf)" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
version=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/unet-edge"
# Debug info stays on the build machine (as dh_strip does): the binutils of the package's
# architecture come with the cross gcc packages .ci/run installs.
case "$arch" in
  amd64) strip_tool=strip ;;
  arm64) strip_tool=aarch64-linux-gnu-strip ;;
  armhf) strip_tool=arm-linux-gnueabihf-strip ;;
esac
command -v "$strip_tool" >/dev/null || { echo "build-deb: $strip_tool not found (binutils for $arch)" >&2; exit 2; }
"$strip_tool" --strip-unneeded "$stage/usr/bin/unet-edge"
install -D -m 0644 "$root/models/unet-nuclei.onnx" "$stage/usr/share/unet-edge/models/unet-nuclei.onnx"
install -D -m 0644 "$root/models/unet-nuclei.int8.onnx" "$stage/usr/share/unet-edge/models/unet-nuclei.int8.onnx"
install -D -m 0644 "$root/packaging/unet-edge.service" "$stage/lib/systemd/system/unet-edge.service"
install -D -m 0644 "$root/packaging/config.toml" "$stage/etc/unet-edge/config.toml"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/unet-edge/README.md"
install -D -m 0644 "$root/models/README.md" "$stage/usr/share/doc/unet-edge/MODEL-CARD.md"
install -d "$stage/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "$root/packaging/debian/$s" "$stage/DEBIAN/$s"; done
echo /etc/unet-edge/config.toml > "$stage/DEBIAN/conffiles"
size=$(du -sk "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: unet-edge
Version: $version
Architecture: $arch
Maintainer: unet-edge developers <unet-edge@localhost>
Installed-Size: $size
Depends: passwd
Section: science
Priority: optional
Description: live U-Net nuclei segmentation for microscope cameras
 Segments cell nuclei in every camera frame with an overlap-tile U-Net on tract,
 reporting masks, per-nucleus counts and statistics and the latency per tile.
 Runs as the systemd service unet-edge with /etc/unet-edge/config.toml.
CONTROL
mkdir -p "$out"
dpkg-deb --build --root-owner-group "$stage" "$out/unet-edge_${version}_${arch}.deb" >/dev/null
echo "$out/unet-edge_${version}_${arch}.deb"
