#!/usr/bin/env python3
"""Per-tile latency of unet-edge (tract + the project's plan passes and convolution kernels)
against onnxruntime and OpenVINO, f32 and int8, on the same ONNX model, 1 thread, batch 1,
measured alternately so that machine noise hits every contender alike, with each one's ratio to
the compute floor. Not part of CI.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r benches/peers/requirements.txt
    cargo build --release
    /tmp/peers/bin/python benches/peers/peers.py            # from the repository root

onnxruntime's int8 model is made by its own static quantizer (QDQ, per-channel int8 weights,
uint8 activations) from the same f32 model, calibrated on normalized 128x128 crops of the images
in samples/; OpenVINO runs that same QDQ model (its low-precision transformations make it int8);
unet-edge's is models/unet-nuclei.int8.onnx (made by unet-quantize).

The compute floor is the model's multiply-accumulates (`unet-edge info`) over one core's peak:
`--f32-peak` in GFLOP/s (2 per FMA; `cargo run --release --example fma_peak` measures it) and
`--int8-peak` in G MAC/s (AVX-512 VNNI: 64 MACs per vpdpbusd and cycle per port).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import openvino as ov
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from PIL import Image

TILE = 128


def normalized_crops(folder, count=32, seed=0):
    """128x128 crops of every image in `folder`, each image scaled to its 1st..99.8th percentile
    (the runtime's default normalization)."""
    rng = np.random.default_rng(seed)
    crops = []
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".tif", ".tiff")))
    for f in files:
        img = np.asarray(Image.open(os.path.join(folder, f)), dtype=np.float32)
        if img.ndim == 3:
            img = img[..., :3].mean(axis=2)
        lo, hi = np.percentile(img, [1.0, 99.8])
        img = (img - lo) / max(hi - lo, 1e-6)
        for _ in range(count // max(len(files), 1)):
            y = rng.integers(0, img.shape[0] - TILE + 1)
            x = rng.integers(0, img.shape[1] - TILE + 1)
            crops.append(img[y:y + TILE, x:x + TILE][None, None].astype(np.float32))
    return crops


class Reader(CalibrationDataReader):
    def __init__(self, name, crops):
        self.items = iter([{name: c} for c in crops])

    def get_next(self):
        return next(self.items, None)


def ort_session(path):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def time_ort(sess, tiles, warmup=3):
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(1).random((1, 1, TILE, TILE), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    lat = []
    for _ in range(tiles):
        t = time.perf_counter()
        sess.run(None, {name: x})
        lat.append((time.perf_counter() - t) * 1e3)
    return statistics.median(lat)


def ort_profile(path, runs, top=12):
    """onnxruntime's own per-node profile of `runs` runs: ms per run by operator type, then the
    slowest nodes (compare with `unet-edge bench --profile`)."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        o.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(1).random((1, 1, TILE, TILE), dtype=np.float32)
        sess.run(None, {name: x})
        for _ in range(runs):
            sess.run(None, {name: x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    by_op, by_node = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"].get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3
        node = e["name"][: -len("_kernel_time")]
        by_node[(node, op)] = by_node.get((node, op), 0.0) + e["dur"] / 1e3
    # The untimed first run is in the trace too.
    n = runs + 1
    total = sum(by_op.values()) / n
    print(f"onnxruntime profile of {os.path.basename(path)}: {total:.2f} ms per run in operators")
    for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {ms / n:8.3f} {100 * ms / n / total:5.1f}%  {op}")
    print("  slowest nodes:")
    for (node, op), ms in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms / n:8.3f}  {node} [{op}]")


def ov_compiled(path):
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
    return core.compile_model(path, "CPU", cfg)


def time_ov(compiled, tiles, warmup=3):
    req = compiled.create_infer_request()
    x = np.random.default_rng(1).random((1, 1, TILE, TILE), dtype=np.float32)
    for _ in range(warmup):
        req.infer([x])
    lat = []
    for _ in range(tiles):
        t = time.perf_counter()
        req.infer([x])
        lat.append((time.perf_counter() - t) * 1e3)
    return statistics.median(lat)


def ov_profile(path, runs, top=12):
    """OpenVINO's own per-node profile (PERF_COUNT) of `runs` runs: ms per run by layer type, then
    the slowest nodes, with the kernel each ran on (exec_type)."""
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False, "PERF_COUNT": True}
    compiled = core.compile_model(path, "CPU", cfg)
    req = compiled.create_infer_request()
    x = np.random.default_rng(1).random((1, 1, TILE, TILE), dtype=np.float32)
    req.infer([x])
    by_node = {}
    for _ in range(runs):
        req.infer([x])
        for info in req.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            key = (info.node_name, info.node_type, info.exec_type)
            by_node[key] = by_node.get(key, 0.0) + info.real_time.total_seconds() * 1e3
    by_type = {}
    for (_, t, _), ms in by_node.items():
        by_type[t] = by_type.get(t, 0.0) + ms
    total = sum(by_type.values()) / runs
    print(f"OpenVINO profile of {os.path.basename(path)}: {total:.2f} ms per run in layers")
    for t, ms in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"  {ms / runs:8.3f} {100 * ms / runs / total:5.1f}%  {t}")
    print("  slowest nodes:")
    for (node, t, e), ms in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms / runs:8.3f}  {node} [{t}, {e}]")


def time_unet_edge(binary, model, tiles):
    out = subprocess.run([binary, "bench", "--model", model, "--tiles", str(tiles), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["ms_per_tile"]["p50"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/unet-nuclei.onnx")
    ap.add_argument("--int8", default="models/unet-nuclei.int8.onnx")
    ap.add_argument("--binary", default="target/release/unet-edge")
    ap.add_argument("--samples", default="samples")
    ap.add_argument("--tiles", type=int, default=60, help="timed tiles per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--macs", type=float, default=871.0, help="M MAC per tile (unet-edge info)")
    ap.add_argument("--f32-peak", type=float, default=276.0, help="GFLOP/s of one core (fma_peak)")
    ap.add_argument("--int8-peak", type=float, default=490.0, help="G int8 MAC/s of one core")
    ap.add_argument("--top", type=int, default=12, help="slowest nodes listed by --profile")
    ap.add_argument("--profile", action="store_true",
                    help="also print onnxruntime's per-operator profile of the f32 model")
    a = ap.parse_args()
    for p in (a.model, a.int8, a.binary):
        if not os.path.exists(p):
            sys.exit(f"{p}: not found (run from the repository root after `cargo build --release`)")

    with tempfile.TemporaryDirectory() as tmp:
        ort_int8 = os.path.join(tmp, "ort-int8.onnx")
        name = ort_session(a.model).get_inputs()[0].name
        quantize_static(a.model, ort_int8, Reader(name, normalized_crops(a.samples)),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        s_f32, s_int8 = ort_session(a.model), ort_session(ort_int8)
        v_f32, v_int8 = ov_compiled(a.model), ov_compiled(ort_int8)
        runs = {k: [] for k in ("ort f32", "openvino f32", "unet-edge f32",
                                "ort int8", "openvino int8", "unet-edge int8")}
        for r in range(a.rounds):
            runs["ort f32"].append(time_ort(s_f32, a.tiles))
            runs["openvino f32"].append(time_ov(v_f32, a.tiles))
            runs["unet-edge f32"].append(time_unet_edge(a.binary, a.model, a.tiles))
            runs["ort int8"].append(time_ort(s_int8, a.tiles))
            runs["openvino int8"].append(time_ov(v_int8, a.tiles))
            runs["unet-edge int8"].append(time_unet_edge(a.binary, a.int8, a.tiles))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()),
                  file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    floor = {"f32": a.macs * 2 / a.f32_peak, "int8": a.macs / a.int8_peak}
    print(f"ms per 128x128 tile, 1 thread, batch 1, median of {a.rounds} alternating rounds "
          f"(onnxruntime {ort.__version__}, OpenVINO {ov.__version__}):")
    for k, v in med.items():
        print(f"  {k:<15} {v:7.2f}   {v / floor[k.split()[-1]]:5.2f}x the compute floor")
    print(f"  compute floor   f32 {floor['f32']:.2f}, int8 {floor['int8']:.2f}")
    for dt in ("f32", "int8"):
        u = med[f"unet-edge {dt}"]
        print(f"  unet-edge {dt}: {u / med[f'ort {dt}']:.2f}x onnxruntime, "
              f"{u / med[f'openvino {dt}']:.2f}x OpenVINO")
    print(f"  int8 / f32: unet-edge {med['unet-edge int8'] / med['unet-edge f32']:.2f}x, "
          f"onnxruntime {med['ort int8'] / med['ort f32']:.2f}x, "
          f"OpenVINO {med['openvino int8'] / med['openvino f32']:.2f}x")
    if a.profile:
        ort_profile(a.model, a.tiles, top=a.top)
        ov_profile(a.model, a.tiles, top=a.top)
        subprocess.run([a.binary, "bench", "--model", a.model, "--tiles", str(a.tiles),
                        "--threads", "1", "--profile", "--top", str(a.top)], check=True)


if __name__ == "__main__":
    main()
