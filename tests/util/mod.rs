//! Shared helpers for the integration tests: small models written with the project's ONNX writer,
//! a whole-frame reference run, and a harness that drives the real binary.
#![allow(dead_code)]

pub mod counting;
pub mod fakes;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unet_edge::contract::ModelMeta;
use unet_edge::engine::model::Model;
use unet_edge::engine::normalize::Normalization;
use unet_edge::onnx_writer::{self, ConvSpec, Dim, ElemType, GraphBuilder};
use unet_edge::rng::Rng;

/// Three 3x3 convolutions (receptive radius 3) with relu and a final sigmoid; identity
/// normalization so tiling is tested apart from it; dynamic spatial size.
pub fn three_conv_onnx(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut g = GraphBuilder::new("three_conv");
    let shape = [
        Dim::Symbol("N".into()),
        Dim::Fixed(1),
        Dim::Symbol("H".into()),
        Dim::Symbol("W".into()),
    ];
    let mut x = g.input("input", ElemType::F32, &shape);
    for (i, (cin, cout)) in [(1, 4), (4, 4), (4, 1)].into_iter().enumerate() {
        let w: Vec<f32> = (0..cout * cin * 9).map(|_| rng.normal() * 0.5).collect();
        let b: Vec<f32> = (0..cout).map(|_| rng.normal() * 0.1).collect();
        let w = g.init_f32("w", &[cout, cin, 3, 3], &w).unwrap();
        let b = g.init_f32("b", &[cout], &b).unwrap();
        x = g.conv(&x, &w, Some(&b), ConvSpec::same(3));
        if i < 2 {
            x = g.relu(&x);
        }
    }
    let y = g.sigmoid(&x);
    g.output(&y, ElemType::F32, &shape);
    let meta = ModelMeta {
        normalization: Normalization::Affine {
            offset: 0.0,
            scale: 1.0,
        },
        ..Default::default()
    };
    for (k, v) in meta.to_props() {
        g.metadata(&k, &v);
    }
    onnx_writer::encode(&g.finish())
}

/// Whole-frame reference run (see `Model::run_whole`).
pub fn whole_frame(
    model: &Model,
    frame: &[f32],
    w: usize,
    h: usize,
    pad: usize,
    multiple: usize,
) -> Vec<f32> {
    model.run_whole(frame, w, h, pad, multiple).unwrap()
}

/// The compiled `unet-edge` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unet-edge"))
}

/// The runner for the target the tests were built for, from `CARGO_TARGET_<TRIPLE>_RUNNER` in the
/// environment (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`; cargo reads `.cargo/config.toml`
/// to start the test binary but does not pass its runner on, so `.ci/run` exports it), split
/// into words; empty for native runs.
pub fn cross_runner() -> Vec<String> {
    let target = env!("UNET_EDGE_TARGET").to_uppercase().replace('-', "_");
    std::env::var(format!("CARGO_TARGET_{target}_RUNNER"))
        .map(|r| r.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// A command that runs the binary, through the cross runner when there is one, like ripgrep's
/// test harness: the CLI suite runs under qemu for the boards.
pub fn command() -> Command {
    let runner = cross_runner();
    match runner.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(bin());
            c
        }
        None => Command::new(bin()),
    }
}

/// Runs the binary with `args`.
pub fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("binary runs")
}

/// Runs the binary and returns stdout, failing the test with stderr when it exits non-zero.
pub fn run_ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "unet-edge {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs the binary expecting it to fail: exit code 2 or 1 (never a panic's 101 or a signal),
/// with every one of `want` in its stderr; returns the stderr.
pub fn fails_with(args: &[&str], want: &[&str]) -> String {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "unet-edge {args:?} should fail with a message, got {:?}: {stderr}",
        o.status
    );
    assert!(
        !stderr.contains("panicked"),
        "unet-edge {args:?} panicked: {stderr}"
    );
    for w in want {
        assert!(
            stderr.contains(w),
            "unet-edge {args:?}: {w:?} not in stderr: {stderr}"
        );
    }
    stderr
}

/// Runs `eval --json` on a predictions and a truth directory.
pub fn eval(pred: &Path, truth: &Path) -> Output {
    run(&[
        "eval",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--json",
    ])
}

/// Runs `eval --json`, requires success and returns its parsed object.
pub fn eval_json(pred: &Path, truth: &Path) -> serde_json::Value {
    let o = eval(pred, truth);
    assert!(
        o.status.success(),
        "unet-edge eval failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("eval --json prints one JSON object")
}

/// Writes a file and returns its path as a String.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}
