#!/usr/bin/env bash
# Installs the amd64 package in a fresh Debian bookworm chroot (debootstrap, minbase + systemd)
# and checks what a lab does with it:
#   packaging/chroot-check.sh DEBDIR     (DEBDIR: unet-edge_<v>_amd64.deb and a newer _<v>+ci2_)
# - dpkg installs it; the service user exists in the video and gpio groups;
# - `systemd-analyze verify` passes on the installed unit;
# - the unit's own ExecStart, as the service user in its WorkingDirectory, with the packaged
#   config pointed at the synthetic camera, processes frames and exits 0 on SIGTERM;
# - an upgrade keeps the edited config; remove keeps config and results; purge removes them.
# Needs root, debootstrap and the Debian mirror.
set -euo pipefail
debs=$(cd "${1:?DEBDIR}" && pwd)
old=$(ls "$debs"/unet-edge_*_amd64.deb | grep -v '+ci2' | head -1)
new=$(ls "$debs"/unet-edge_*+ci2_amd64.deb | head -1)
work=$(mktemp -d)
root=$work/root
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
in_root() { chroot "$root" "$@"; }
fail() { echo "chroot check: $*" >&2; exit 1; }

debootstrap --variant=minbase --include=systemd bookworm "$root" http://deb.debian.org/debian \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; fail "debootstrap failed"; }
mount -t proc proc "$root/proc"

cp "$old" "$root/tmp/old.deb"
cp "$new" "$root/tmp/new.deb"
in_root dpkg -i /tmp/old.deb
groups=$(in_root id -nG unet-edge)
for g in video gpio; do [[ " $groups " == *" $g "* ]] || fail "unet-edge is not in $g ($groups)"; done
in_root systemd-analyze verify /lib/systemd/system/unet-edge.service

# The unit's command line, exactly as systemd would run it.
unit=$root/lib/systemd/system/unet-edge.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
sed -i 's|^camera = .*|input = "synth:96x80"|' "$root/etc/unet-edge/config.toml"
in_root unet-edge check-config /etc/unet-edge/config.toml
chroot --userspec=unet-edge:unet-edge --groups=video,gpio "$root" \
  sh -c "cd $workdir && exec $exec_start" >"$work/records" 2>"$work/stderr" &
pid=$!
for _ in $(seq 1 120); do
  [ "$(wc -l <"$work/records")" -ge 3 ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
kill -TERM "$pid" 2>/dev/null || true
rc=0
wait "$pid" || rc=$?
frames=$(wc -l <"$work/records")
echo "service command: $frames records, exit code $rc after SIGTERM; $(tail -1 "$work/stderr")"
[ "$rc" -eq 0 ] || { cat "$work/stderr"; fail "exit code $rc after SIGTERM"; }
[ "$frames" -ge 3 ] || { cat "$work/stderr"; fail "only $frames records"; }
head -1 "$work/records" | grep -q '"nuclei"' || fail "records are not the frame JSON"

# Upgrade: the edited conffile stays.
in_root dpkg -i --force-confold /tmp/new.deb
grep -q 'synth:96x80' "$root/etc/unet-edge/config.toml" || fail "the upgrade replaced the config"
in_root dpkg-query -W -f='${Version}\n' unet-edge | grep -q '+ci2' || fail "not upgraded"
# Remove keeps the config and the user's results; purge takes both.
touch "$root/var/lib/unet-edge/result.png"
in_root dpkg -r unet-edge
[ ! -e "$root/usr/bin/unet-edge" ] || fail "binary left after remove"
[ -e "$root/etc/unet-edge/config.toml" ] || fail "remove deleted the config"
[ -e "$root/var/lib/unet-edge/result.png" ] || fail "remove deleted results"
in_root dpkg -P unet-edge
[ ! -e "$root/etc/unet-edge/config.toml" ] || fail "purge left the config"
[ ! -e "$root/var/lib/unet-edge" ] || fail "purge left /var/lib/unet-edge"
! in_root id unet-edge >/dev/null 2>&1 || fail "purge left the user"
echo "chroot check: install, service command, upgrade, remove and purge all passed"
