#!/usr/bin/env bash
# MQTT publishing benchmark: the release binary's live loop at full speed on the synthetic camera
# publishes to a local Mosquitto; a subscriber stamps each record's arrival. Reports the records/s
# that reached the broker and the publish latency (arrival minus the record's own timestamp, taken
# when the frame's record is written: queue + publisher thread + rumqttc + broker + subscriber).
#
#   bash scripts/mqtt-bench.sh [FRAMES] [SIZE]      # defaults: 2000 frames of 64x64 (one tile each)
set -euo pipefail
FRAMES=${1:-2000}
SIZE=${2:-64x64}
BIN=${BIN:-target/release/unet-edge}
[ -x "$BIN" ] || { echo "mqtt-bench: $BIN not built (cargo build --release)" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "mqtt-bench: needs mosquitto and mosquitto-clients" >&2; exit 2; }
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\npersistence false\nallow_anonymous true\nuser root\n' "$PORT" > "$WORK/m.conf"
mosquitto -c "$WORK/m.conf" >/dev/null 2>&1 &
BROKER=$!
trap 'kill $BROKER $SUB 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep 0.5
mosquitto_sub -p "$PORT" -q 1 -t 'unet-edge/bench/frames' -F '%U %p' > "$WORK/recv.txt" &
SUB=$!
sleep 0.5
"$BIN" --input "synth:$SIZE" --max-frames "$FRAMES" --threads 1 --log "$WORK/frames.jsonl" \
  --mqtt "mqtt://127.0.0.1:$PORT" --device-id bench --quiet 2> "$WORK/err.log" || { cat "$WORK/err.log"; exit 1; }
sleep 1
python3 - "$WORK" "$FRAMES" "$SIZE" <<'PY'
import json, sys
work, frames, size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
recv = []
for line in open(f"{work}/recv.txt"):
    t, p = line.split(" ", 1)
    recv.append((float(t), json.loads(p)))
log = [json.loads(l) for l in open(f"{work}/frames.jsonl")]
lat = sorted((t - r["timestamp"]) * 1e3 for t, r in recv)
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
span = recv[-1][0] - recv[0][0]
loop = (log[-1]["timestamp"] - log[0]["timestamp"])
print(f"{size}: {len(recv)} of {frames} records arrived, in order: {[r['frame'] for _, r in recv] == sorted(r['frame'] for _, r in recv)}")
print(f"loop {len(log) / loop:.0f} frames/s; broker received {len(recv) / span:.0f} records/s; mqtt_dropped {log[-1].get('mqtt_dropped')}")
print(f"publish latency ms: p50 {q(0.5):.2f}, p90 {q(0.9):.2f}, p99 {q(0.99):.2f}, max {lat[-1]:.2f}")
PY
