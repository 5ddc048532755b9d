#!/usr/bin/env bash
# Soak test of the live loop: runs the release binary for HOURS on the synthetic camera with
# injected faults (corrupt frames, stalls, disconnects), a --save-every disk that fills and frees,
# and preview clients that come, go and stall; samples the loop's RSS every 30 s.
#
#   sudo bash scripts/soak.sh 2 /tmp/soak      # hours, work directory (needs root for the tmpfs)
#   FPS=2 BIN=/tmp/unet-edge bash scripts/soak.sh 2.2 /tmp/soak   # pace, a copy of the binary
#
# Writes WORKDIR/rss.csv (seconds,rss_kb), WORKDIR/stderr.log (the loop's summaries),
# WORKDIR/frames.jsonl and WORKDIR/report.txt (fault counts, RSS after warm-up: first, min, max,
# last). Exits non-zero when the loop died, exited with an error other than the write errors the
# full disk causes, or its RSS grew by more than 5 % after the first 10 minutes.
set -euo pipefail
HOURS=${1:-2}
WORK=${2:-/tmp/soak}
BIN=${BIN:-target/release/unet-edge}
PORT=${PORT:-18089}
FPS=${FPS:-4}
FAULTS=${FAULTS:-corrupt=0.01,stall=0.0005,disconnect=0.001,stall-secs=8}
[ -x "$BIN" ] || { echo "soak: $BIN not built (cargo build --release)" >&2; exit 2; }
END=$(( $(date +%s) + $(awk "BEGIN{print int($HOURS*3600)}") ))

mkdir -p "$WORK/disk"
# A small disk for --save-every, so filling it takes one dd.
mountpoint -q "$WORK/disk" || mount -t tmpfs -o size=8m tmpfs "$WORK/disk"
rm -rf "${WORK:?}"/disk/* "$WORK"/rss.csv "$WORK"/*.log "$WORK"/frames.jsonl

"$BIN" --input synth:256x256 --fps "$FPS" --threads 1 --inject-faults "$FAULTS" \
  --preview "127.0.0.1:$PORT" --save-every 20 --out "$WORK/disk" \
  --log "$WORK/frames.jsonl" 2> "$WORK/stderr.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
sleep 3

fills=0; viewers=0; stalled=0; snapshots=0
# Preview clients: a snapshot every 2 s, a viewer of /stream for 20 s every minute, and a client
# that opens /stream and never reads it (the server must drop it, not block the loop).
( while kill -0 $PID 2>/dev/null; do
    curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$PORT/snapshot.jpg" && echo snap >> "$WORK/clients.log"
    sleep 2
  done ) &
( while kill -0 $PID 2>/dev/null; do
    # curl ends the endless stream by its --max-time (exit 28): that is the viewer leaving.
    curl -s -o /dev/null --max-time 20 "http://127.0.0.1:$PORT/stream" || true
    echo viewer >> "$WORK/clients.log"
    sleep 40
  done ) &
( while kill -0 $PID 2>/dev/null; do
    python3 - "$PORT" <<'EOF' && echo stalled >> "$WORK/clients.log"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
time.sleep(60)  # never reads
s.close()
EOF
  done ) &

t0=$(date +%s)
echo "seconds,rss_kb" > "$WORK/rss.csv"
next_fill=$(( t0 + 300 ))
while [ "$(date +%s)" -lt "$END" ]; do
  kill -0 $PID 2>/dev/null || { echo "soak: the loop died" >&2; break; }
  now=$(date +%s)
  echo "$(( now - t0 )),$(awk '/VmRSS/{print $2}' /proc/$PID/status)" >> "$WORK/rss.csv"
  # Every 10 minutes the save disk fills for 2 minutes, then frees.
  if [ "$now" -ge "$next_fill" ]; then
    dd if=/dev/zero of="$WORK/disk/filler" bs=64k 2>/dev/null || true
    fills=$(( fills + 1 ))
    sleep 120
    rm -f "$WORK/disk/filler"
    find "$WORK/disk" -name '*.png' -delete
    next_fill=$(( now + 600 ))
    continue
  fi
  sleep 30
done

alive=0; kill -0 $PID 2>/dev/null && alive=1
kill -TERM $PID 2>/dev/null || true
rc=0; wait $PID || rc=$?
snapshots=$(grep -c snap "$WORK/clients.log" || true)
viewers=$(grep -c viewer "$WORK/clients.log" || true)
stalled=$(grep -c stalled "$WORK/clients.log" || true)
summary=$(grep '^processed' "$WORK/stderr.log" | tail -1)
python3 - "$WORK" "$HOURS" "$fills" "$snapshots" "$viewers" "$stalled" "$rc" "$alive" "$summary" <<'EOF' | tee "$WORK/report.txt"
import csv, sys
work, hours, fills, snaps, viewers, stalled, rc, alive, summary = sys.argv[1:]
rows = [(int(s), int(r)) for s, r in csv.reader(open(f"{work}/rss.csv")) if s.isdigit() and r]
warm = [r for s, r in rows if s >= 600] or [r for _, r in rows]
err = open(f"{work}/stderr.log").read()
stalls, downs = err.count("injected fault: a stall"), err.count("unavailable (injected fault)")
print(f"soak {hours} h: {summary}")
print(f"injected: {stalls} stalls, {downs} failed reads from {downs // 3} disconnects (corrupt frames: above)")
print(f"faults: disk filled {fills}x; preview: {snaps} snapshots, {viewers} /stream viewers, {stalled} stalled /stream readers")
print(f"RSS after 10 min (kB): first {warm[0]}, min {min(warm)}, max {max(warm)}, last {warm[-1]}; growth {100 * (warm[-1] - warm[0]) / warm[0]:+.2f} %")
print(f"loop alive at the end: {alive == '1'}, exit code {rc} (1 = write errors on the full disk)")
ok = alive == "1" and rc in ("0", "1") and warm[-1] <= warm[0] * 1.05
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
