//! End-to-end tests of the real `unet-quantize` binary, and of the shipped int8 model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unet_edge::contract::ModelMeta;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::io::imageio::load_gray;
use unet_edge::onnx_writer::{self, Dim, ElemType, GraphBuilder};
use unet_edge::unet::UNetSpec;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unet-quantize"))
        .args(args)
        .output()
        .expect("runs unet-quantize")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn small_unet(dir: &Path) -> String {
    let spec = UNetSpec {
        base: 4,
        depth: 2,
        outputs: 1,
    };
    let bytes = onnx_writer::encode(
        &spec
            .random_weights(5)
            .to_onnx(&ModelMeta::default())
            .unwrap(),
    );
    let p = dir.join("f32.onnx");
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn tile_output(model: &Model, tile: &[f32]) -> Vec<f32> {
    let plan = model.plan(1, 32).unwrap();
    let mut r = plan.runner().unwrap();
    r.input_mut().copy_from_slice(tile);
    r.run().unwrap().to_vec()
}

#[test]
fn quantizes_a_unet_onto_integer_kernels_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = small_unet(dir.path());
    let out = dir.path().join("sub/q.onnx");
    let report = dir.path().join("r.json");
    let o = run(&[
        "--model",
        &f32_path,
        "--out",
        out.to_str().unwrap(),
        "--calib",
        "synth:2",
        "--eval",
        "synth:1",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = Model::from_path(Path::new(&f32_path)).unwrap();
    let q = Model::from_path(&out).unwrap();
    let (int, float) = q.plan(1, 32).unwrap().kernel_precision();
    assert!(float.is_empty(), "float kernels left: {float:?}");
    assert_eq!(int.len(), 11, "one integer kernel per convolution: {int:?}");
    assert!(q.meta.props["unet_edge.quantization"].contains("11 QLinearConv"));
    assert_eq!(q.meta.normalization, f.meta.normalization);
    // Same function, within int8's resolution.
    let tile: Vec<f32> = (0..32 * 32)
        .map(|i| ((i * 37) % 101) as f32 / 100.0)
        .collect();
    let (a, b) = (tile_output(&f, &tile), tile_output(&q, &tile));
    let mean: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean < 0.02, "int8 differs from f32 by {mean} on average");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(j["candidates"].as_array().unwrap().len(), 3, "{j}");
    assert!(j["size_ratio"].as_f64().unwrap() < 0.5, "{j}");
    let chosen = j["chosen_method"].as_str().unwrap();
    assert!(["minmax", "percentile:99.99", "mse"].contains(&chosen));
}

#[test]
fn keep_f32_leaves_the_named_layers_in_float() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = small_unet(dir.path());
    let layers = run(&["--model", &f32_path, "--list-layers"]);
    let names = String::from_utf8(layers.stdout).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 11, "{names:?}");
    let out = dir.path().join("q.onnx");
    let o = run(&[
        "--model",
        &f32_path,
        "--out",
        out.to_str().unwrap(),
        "--calib",
        "synth:1",
        "--eval",
        "synth:1",
        "--method",
        "percentile:99.9",
        "--keep-f32",
        "first,last",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = Model::from_path(&out).unwrap();
    let (int, float) = q.plan(1, 32).unwrap().kernel_precision();
    assert_eq!((int.len(), float.len()), (9, 2), "{int:?} {float:?}");
    let meta = &q.meta.props["unet_edge.quantization"];
    assert!(
        meta.contains(names[0]) && meta.contains(names[10]),
        "{meta}"
    );
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = small_unet(dir.path());
    let out = dir.path().join("q.onnx");
    let out = out.to_str().unwrap();

    // Not an ONNX file.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let o = run(&["--model", junk.to_str().unwrap(), "--out", out]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not an ONNX model"), "{}", stderr(&o));

    // An ONNX model that is not a U-Net of the contract.
    let mut g = GraphBuilder::new("add");
    let shape = [Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8)];
    let x = g.input("input", ElemType::F32, &shape);
    let y = g.add(&x, &x);
    g.output(&y, ElemType::F32, &shape);
    let add = dir.path().join("add.onnx");
    std::fs::write(&add, onnx_writer::encode(&g.finish())).unwrap();
    let o = run(&["--model", add.to_str().unwrap(), "--out", out]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("Add operator") && e.contains("Conv, Relu"),
        "{e}"
    );

    // An empty calibration folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = run(&[
        "--model",
        &f32_path,
        "--out",
        out,
        "--calib",
        empty.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("holds no PNG"), "{}", stderr(&o));

    // Files of the wrong kind.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("x.png"), b"text, not pixels").unwrap();
    let o = run(&[
        "--model",
        &f32_path,
        "--out",
        out,
        "--calib",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("x.png"), "{}", stderr(&o));

    // A layer the model does not have.
    let o = run(&["--model", &f32_path, "--out", out, "--keep-f32", "decoder9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("its layers are"), "{}", stderr(&o));

    // A method that does not exist.
    let o = run(&["--model", &f32_path, "--out", out, "--method", "kl"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("minmax, percentile"), "{}", stderr(&o));
    assert!(!Path::new(out).exists(), "nothing written on failure");
}

/// The shipped int8 model: every convolution on integer kernels, and its masks within the
/// accuracy budget of the float model's on the shipped synthetic sample.
#[test]
fn shipped_int8_model_is_integer_and_agrees_with_float() {
    let q = Model::from_path(&repo("models/unet-nuclei.int8.onnx")).unwrap();
    let f = Model::from_path(&repo("models/unet-nuclei.onnx")).unwrap();
    let (int, float) = q.plan(1, 128).unwrap().kernel_precision();
    assert!(float.is_empty(), "float kernels: {float:?}");
    assert_eq!(int.len(), 19);
    let img = load_gray(&repo("samples/synthetic-512.png")).unwrap();
    let masks: Vec<Vec<u8>> = [&f, &q]
        .iter()
        .map(|m| {
            let mut s = Segmenter::new(m, SegmentConfig::for_model(m)).unwrap();
            s.segment(&img.data, img.width, img.height).unwrap();
            s.mask().to_vec()
        })
        .collect();
    let both = masks[0]
        .iter()
        .zip(&masks[1])
        .filter(|(a, b)| **a > 0 && **b > 0)
        .count();
    let sum = masks.iter().flatten().filter(|v| **v > 0).count();
    let dice = 2.0 * both as f64 / sum as f64;
    assert!(dice >= 0.98, "f32/int8 mask agreement Dice {dice}");
}
