//! End-to-end tests of the real `unet-edge` binary.

mod util;

use std::path::Path;
use unet_edge::contract::ModelMeta;
use unet_edge::io::imageio::save_gray16;
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

fn seed_unet_bytes() -> Vec<u8> {
    let spec = unet_edge::unet::UNetSpec {
        base: 4,
        depth: 2,
        outputs: 1,
    };
    unet_edge::onnx_writer::encode(
        &spec
            .random_weights(3)
            .to_onnx(&ModelMeta::default())
            .unwrap(),
    )
}

/// `segment INPUT --out OUT --model MODEL --tile 32`, which must succeed; its stdout.
fn segment_in_32px_tiles(input: &Path, out: &Path, model: &str) -> String {
    util::run_ok(&[
        "segment",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        model,
        "--tile",
        "32",
    ])
}

#[test]
fn segment_writes_outputs_and_json_and_reports_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let imgs = dir.path().join("in");
    std::fs::create_dir(&imgs).unwrap();
    let s = generate(&mut Rng::new(4), 150, 97, &SynthConfig::default());
    save_gray16(
        &imgs.join("cells.png"),
        150,
        97,
        s.image.iter().map(|v| *v as u16).collect(),
    )
    .unwrap();
    std::fs::write(imgs.join("broken.png"), b"garbage").unwrap();
    let out = dir.path().join("out");
    let o = util::run(&[
        "segment",
        imgs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        &model,
        "--tile",
        "32",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a bad input makes the exit code non-zero"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("broken.png"), "{stderr}");
    let stdout = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let j = &lines[0];
    assert_eq!(j["width"], 150);
    assert_eq!(j["height"], 97);
    assert!(j["tiles"].as_u64().unwrap() >= 12, "{j}");
    assert!(j["ms_per_tile"].as_f64().unwrap() > 0.0);
    let ff = j["foreground_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ff));
    for suffix in ["mask", "prob", "overlay"] {
        let p = out.join(format!("cells.{suffix}.png"));
        let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!((img.width(), img.height()), (150, 97));
    }
    let mask = image::open(out.join("cells.mask.png")).unwrap().to_luma8();
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
}

#[test]
fn bench_json_has_the_contracted_fields() {
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let out = util::run_ok(&[
        "bench",
        "--model",
        &model,
        "--tiles",
        "6",
        "--batch",
        "2",
        "--threads",
        "2",
        "--json",
        "--tile",
        "64",
    ]);
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["threads"], 2);
    assert_eq!(j["batch"], 2);
    for k in ["p50", "p90", "p99", "mean"] {
        assert!(j["ms_per_tile"][k].as_f64().unwrap() > 0.0, "{k}: {j}");
    }
    assert!(j["tiles_per_second"].as_f64().unwrap() > 0.0);
    assert!(j["model"].as_str().unwrap().ends_with("m.onnx"));
}

#[test]
fn info_lists_shapes_cost_and_operators() {
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let out = util::run_ok(&["info", "--model", &model, "--tile", "64"]);
    assert!(out.contains("input:       f32 [1, 1, 64, 64]"), "{out}");
    assert!(out.contains("MACs/tile:"), "{out}");
    assert!(out.contains("unet_edge.normalization"), "{out}");
    assert!(
        out.contains("F32"),
        "operators with their datum type: {out}"
    );
    // 11 convolutions, and each of the 2 decoder levels' first one runs as two (upsample fold).
    assert!(
        out.contains("kernels:     0 convolution/matmul nodes on integer kernels, 13 in float"),
        "{out}"
    );
}

#[test]
fn bench_profile_attributes_the_time_to_operators() {
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let out = util::run_ok(&[
        "bench",
        "--model",
        &model,
        "--tile",
        "64",
        "--tiles",
        "3",
        "--profile",
    ]);
    assert!(out.contains("profile over 5 runs"), "{out}");
    let total: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("profile over 5 runs: "))
        .and_then(|l| l.split(" ms").next())
        .and_then(|v| v.parse().ok())
        .expect("total time line");
    assert!(total > 0.0, "{out}");
    // Every operator type gets a row with its time; the convolutions' matmuls are among them.
    // (Which row comes first is not asserted: on a loaded machine one preempted node of a
    // 1-ms model can outweigh the rest.)
    let rows: Vec<(f64, &str)> = out
        .lines()
        .skip_while(|l| !l.contains("operator (output type)"))
        .skip(1)
        .take_while(|l| !l.contains("slowest nodes"))
        .filter_map(|l| {
            let ms = l.split_whitespace().next()?.parse().ok()?;
            Some((ms, l))
        })
        .collect();
    assert!(
        rows.iter()
            .any(|(ms, l)| l.contains("OptMatMul") && *ms > 0.0),
        "{out}"
    );
    let sum: f64 = rows.iter().map(|r| r.0).sum();
    assert!(
        (sum - total).abs() <= 0.01 * total + 0.01,
        "{sum} vs {total}: {out}"
    );
    assert!(out.contains("slowest nodes:"), "{out}");
}

/// Regression: `unet-edge info | head -1` panicked ("failed printing to stdout") when the
/// reader closed the pipe; now the process ends quietly like other Unix filters.
#[cfg(target_os = "linux")]
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let mut child = util::command()
        .args(["info", "--model", &model, "--tile", "64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the report is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE: {:?}",
        out.status
    );
}

#[test]
fn bad_models_and_options_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.onnx");
    let o = util::run(&["info", "--model", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.onnx"));

    let junk = util::write(dir.path(), "junk.onnx", b"\x08\x01junk");
    let o = util::run(&["info", "--model", &junk]);
    assert_eq!(o.status.code(), Some(2));

    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let o = util::run(&["bench", "--model", &model, "--tile", "64", "--margin", "32"]);
    assert_eq!(o.status.code(), Some(2));
    let o = util::run(&[
        "segment",
        "x.png",
        "--out",
        dir.path().to_str().unwrap(),
        "--model",
        &model,
        "--threshold",
        "3",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threshold"));
}

#[test]
fn segment_writes_labels_and_table_and_eval_scores_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "m.onnx", &seed_unet_bytes());
    let input = dir.path().join("in");
    let truth = dir.path().join("truth");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&truth).unwrap();
    let s = generate(&mut Rng::new(8), 96, 80, &SynthConfig::default());
    save_gray16(
        &input.join("a.png"),
        96,
        80,
        s.image.iter().map(|v| *v as u16).collect(),
    )
    .unwrap();
    save_gray16(&truth.join("a.png"), 96, 80, s.labels.clone()).unwrap();
    let out = dir.path().join("out");
    let stdout = segment_in_32px_tiles(&input, &out, &model);
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // A foreground-only model has no core map to write.
    assert!(!out.join("a.core.png").exists());
    let n = j["nuclei"].as_u64().unwrap() as usize;
    assert!(j["nuclei_whole"].as_u64().unwrap() as usize <= n);
    assert!(j["mean_area_px"].as_f64().unwrap() >= 0.0);
    let csv = std::fs::read_to_string(out.join("a.nuclei.csv")).unwrap();
    assert!(csv.starts_with("id,centroid_x,centroid_y,area_px,mean_intensity,bbox_x0"));
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with(",major_axis_px,minor_axis_px,orientation_deg,eccentricity"));
    assert_eq!(csv.lines().count(), n + 1, "one row per nucleus");
    for row in csv.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), 14, "{row}");
        let (major, minor): (f32, f32) = (f[10].parse().unwrap(), f[11].parse().unwrap());
        assert!(major >= minor && minor > 0.0, "{row}");
    }
    let labels = image::open(out.join("a.labels.png")).unwrap().to_luma16();
    assert_eq!(*labels.pixels().map(|p| &p.0[0]).max().unwrap() as usize, n);

    // Scoring the truth against itself is perfect; the random-weight model is not.
    let perfect = dir.path().join("perfect");
    std::fs::create_dir_all(&perfect).unwrap();
    save_gray16(&perfect.join("a.labels.png"), 96, 80, s.labels.clone()).unwrap();
    let e = util::eval_json(&perfect, &truth);
    assert_eq!(e["overall"]["pixel_dice"], 1.0);
    assert_eq!(e["overall"]["dsb2018_score"], 1.0);
    assert_eq!(e["images"][0]["name"], "a");
    let e = util::eval_json(&out, &truth);
    for k in ["pixel_dice", "pixel_iou", "f1_at_0.5", "dsb2018_score"] {
        let v = e["overall"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    // One image: the mean over images is that image's score.
    assert_eq!(e["image_mean"]["images"], 1);
    for k in ["pixel_dice", "f1_at_0.5", "dsb2018_score"] {
        assert_eq!(e["image_mean"][k], e["images"][0][k], "{k}");
    }

    // A prediction without ground truth is an error naming it; the others are still scored.
    save_gray16(&perfect.join("orphan.labels.png"), 4, 4, vec![0; 16]).unwrap();
    let o = util::run(&[
        "eval",
        "--pred",
        perfect.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("orphan"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("OVERALL"));
    assert!(out.contains("unmatched true nuclei: "), "{out}");
}

#[test]
fn eval_scores_a_missing_prediction_as_all_misses_and_says_so() {
    // Regression: images without a prediction were left out, so a run that skipped them scored 1.0.
    let dir = tempfile::tempdir().unwrap();
    let (pred, truth) = (dir.path().join("pred"), dir.path().join("truth"));
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&truth).unwrap();
    let mut l = vec![0u16; 8 * 8];
    l[9] = 1;
    l[10] = 1;
    save_gray16(&truth.join("done.png"), 8, 8, l.clone()).unwrap();
    save_gray16(&truth.join("skipped.png"), 8, 8, l.clone()).unwrap();
    save_gray16(&pred.join("done.labels.png"), 8, 8, l).unwrap();
    let o = util::eval(&pred, &truth);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipped") && err.contains("all misses"),
        "{err}"
    );
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["overall"]["n_true"], 2);
    assert_eq!(e["overall"]["fn_"], 1);
    assert_eq!(e["image_mean"]["f1_at_0.5"], 0.5);
    assert_eq!(e["images"][1]["missing_prediction"], true);
    // The skipped image's nucleus is missed; the done one is matched at its own size.
    assert_eq!(e["overall"]["errors"]["missed"], 1);
    assert_eq!(e["overall"]["errors"]["matched"], 1);
    assert_eq!(e["overall"]["errors"]["matched_area_ratio"], 1.0);
}

#[test]
fn eval_reads_dsb2018_mask_folders() {
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred");
    let masks = dir.path().join("truth/img1/masks");
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    let (w, h) = (10, 4);
    let mut a = vec![0u8; w * h];
    let mut b = vec![0u8; w * h];
    let mut labels = vec![0u16; w * h];
    for y in 0..4 {
        for x in 0..4 {
            a[y * w + x] = 255;
            labels[y * w + x] = 5;
            b[y * w + x + 6] = 255;
            labels[y * w + x + 6] = 9;
        }
    }
    unet_edge::io::imageio::save_gray8(&masks.join("m1.png"), w, h, a).unwrap();
    unet_edge::io::imageio::save_gray8(&masks.join("m2.png"), w, h, b).unwrap();
    save_gray16(&pred.join("img1.labels.png"), w, h, labels).unwrap();
    let e = util::eval_json(&pred, &dir.path().join("truth"));
    assert_eq!(e["overall"]["tp"], 2);
    assert_eq!(e["overall"]["f1_at_0.5"], 1.0);
}

/// A PNG file that is only a header declaring `w` x `h` grey pixels and an empty image stream.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        v.extend_from_slice(&body);
        v.extend_from_slice(&crc(&body).to_be_bytes());
        v
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn images_and_raw_frames_over_the_pixel_limit_are_refused_before_allocating() {
    // Regression: a 279 KB PNG declaring 16000x16000 took 3.3 GB; raw stdin sizes allocated up
    // front (and 4294967295 panicked on capacity overflow).
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    std::fs::write(&big, png_header_only(16_000, 16_000)).unwrap();
    let out = dir.path().join("out");
    let o = util::run(&[
        "segment",
        big.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("16000x16000") && err.contains("--max-pixels"),
        "{err}"
    );
    // Raising the limit lets the header through; the (empty) pixel data is then the error.
    let o = util::run(&[
        "segment",
        big.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-pixels",
        "300000000",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("--max-pixels") && !err.contains("panicked"),
        "{err}"
    );
    for size in ["100000", "4294967295"] {
        let o = util::command()
            .args(["--input", "-", "--width", size, "--height", size])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--max-pixels") && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn segment_refuses_a_second_input_with_the_same_output_name() {
    // Regression: a/x.png and b/x.png both wrote out/x.*, the last one winning silently.
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        save_gray16(
            &dir.path().join(sub).join("x.png"),
            32,
            32,
            vec![100; 32 * 32],
        )
        .unwrap();
    }
    let out = dir.path().join("out");
    let (a, b) = (dir.path().join("a/x.png"), dir.path().join("b/x.png"));
    let o = util::run(&[
        "segment",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("b/x.png") && err.contains("a/x.png") && err.contains("overwrite"),
        "{err}"
    );
    assert!(
        out.join("x.mask.png").is_file(),
        "the first input is still segmented"
    );
}

#[test]
fn subfolders_are_reported_or_walked_with_recursive() {
    // Regression: the images in subfolders of an input folder were skipped silently.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    for sub in ["", "a", "a/deep"] {
        std::fs::create_dir_all(input.join(sub)).unwrap();
        save_gray16(&input.join(sub).join("x.png"), 32, 32, vec![100; 32 * 32]).unwrap();
    }
    let out = dir.path().join("out");
    let o = util::run(&[
        "segment",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("skipped subfolder") && err.contains("--recursive"),
        "{err}"
    );
    assert!(out.join("x.mask.png").is_file() && !out.join("a").exists());

    let out = dir.path().join("out-r");
    let o = util::run(&[
        "segment",
        input.to_str().unwrap(),
        "--recursive",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // Same stem in three folders: each keeps its own results, under its relative path.
    for sub in ["", "a", "a/deep"] {
        assert!(out.join(sub).join("x.labels.png").is_file(), "{sub}: {err}");
    }
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
}

#[cfg(unix)]
#[test]
fn a_folder_with_a_broken_link_names_it_and_still_segments_the_rest() {
    // Regression: a folder of links whose targets had moved was reported as holding no images.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    save_gray16(&input.join("x.png"), 32, 32, vec![100; 32 * 32]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("moved.png"), input.join("y.png")).unwrap();
    let out = dir.path().join("out");
    let o = util::run(&[
        "segment",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("y.png") && err.contains("moved.png") && err.contains("does not exist"),
        "{err}"
    );
    assert!(out.join("x.mask.png").is_file(), "{err}");
}

#[test]
fn a_negative_frame_rate_is_refused() {
    let o = util::run(&["--input", "synth:64x64", "--fps=-1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--fps -1"), "{err}");
}

#[test]
fn a_growth_beyond_the_contract_is_refused_with_the_accepted_range() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let img = root.join("samples/synthetic-512.png");
    let dir = tempfile::tempdir().unwrap();
    let segment = [
        "segment",
        img.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--grow",
        "9",
    ];
    for args in [&segment[..], &["--input", "synth:64x64", "--grow", "9"]] {
        let o = util::run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--grow") && err.contains("0..=8"), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn batch_tile_and_thread_counts_beyond_any_use_are_refused_by_name() {
    // Regression: --batch 100000 on a 4-tile image grew to 17.6 GB; --tile 1000000 panicked in tract.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let img = root.join("samples/synthetic-512.png");
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--batch", "100000"),
        ("--tile", "1000000"),
        ("--threads", "5000"),
        ("--tta", "3"),
    ] {
        let o = util::run(&[
            "segment",
            img.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
            flag,
            value,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!("{flag} {value}")) && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn tta_runs_mirrored_passes_and_keeps_the_segmentation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let img = root.join("samples/synthetic-512.png");
    let dir = tempfile::tempdir().unwrap();
    let mut nuclei = Vec::new();
    for tta in ["1", "4"] {
        let out = dir.path().join(tta);
        let stdout = util::run_ok(&[
            "segment",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tta",
            tta,
        ]);
        let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        nuclei.push(j["nuclei"].as_u64().unwrap() as f64);
    }
    // Averaging mirrored passes smooths outlines; it must not change what is found.
    assert!(nuclei[0] > 20.0, "{nuclei:?}");
    assert!((nuclei[1] / nuclei[0] - 1.0).abs() < 0.1, "{nuclei:?}");
    // bench times single model runs: it says so instead of ignoring the option.
    let o = util::run(&["bench", "--tiles", "1", "--tta", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--tta 2") && err.contains("single model runs"),
        "{err}"
    );
}

#[test]
fn a_log_that_cannot_be_written_is_reported_at_once_and_fails_the_run() {
    // Regression: --log on a full disk lost lines, exited 0 and said only "N write errors" at the end.
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let o = util::run(&[
        "--input",
        "synth:64x64",
        "--max-frames",
        "3",
        "--log",
        "/dev/full",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--log /dev/full"), "{err}");
    assert_eq!(
        err.matches("not being saved").count(),
        1,
        "reported once: {err}"
    );
    assert!(err.contains("3 write errors"), "{err}");
}

#[test]
fn bad_tiling_metadata_is_blamed_on_the_model_not_on_a_flag() {
    // Regression: metadata tile=1000000000 was reported as a --tile the user never passed.
    let dir = tempfile::tempdir().unwrap();
    let mut proto = unet_edge::onnx_writer::decode(&util::three_conv_onnx(3)).unwrap();
    proto.metadata_props.retain(|p| p.key != "unet_edge.tile");
    proto
        .metadata_props
        .push(tract_onnx::pb::StringStringEntryProto {
            key: "unet_edge.tile".into(),
            value: "1000000000".into(),
        });
    let model = util::write(
        dir.path(),
        "m.onnx",
        &unet_edge::onnx_writer::encode(&proto),
    );
    let img = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/synthetic-512.png");
    let out = dir.path().join("out");
    let o = util::run(&[
        "segment",
        img.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        &model,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unet_edge.tile") && err.contains("m.onnx"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn segment_removes_temporaries_a_killed_run_left_and_writes_all_its_outputs() {
    // Regression: a SIGKILL between writing and renaming left `.x.mask.png.tmp-PID` files for
    // good. A later run removes those of processes that no longer exist.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.png");
    save_gray16(&input, 32, 32, vec![100; 32 * 32]).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let stale = out.join(".x.mask.png.tmp-99999999");
    std::fs::write(&stale, b"half a png").unwrap();
    let o = util::run(&[
        "segment",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!stale.exists(), "the stale temporary is still there");
    assert!(
        err.contains(".x.mask.png.tmp-99999999"),
        "not reported: {err}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "x.core.png",
            "x.labels.png",
            "x.mask.png",
            "x.nuclei.csv",
            "x.overlay.png",
            "x.prob.png"
        ]
    );
    // The embedded model has a core channel; its map is written at the frame's size.
    let core = image::open(out.join("x.core.png")).unwrap().to_luma8();
    assert_eq!(core.dimensions(), (32, 32));
}

#[test]
fn the_int8_kernels_give_the_references_results_byte_for_byte() {
    // The project's ConvI8 on the shipped int8 model against the same plan with every
    // convolution on the scalar reference (`UNET_EDGE_CONV=reference`): probabilities, mask and
    // labels byte-identical. Against tract's own lowering (`UNET_EDGE_CONV=tract`) masks and
    // labels must agree (the aarch64 CI step compares those); its probabilities differ from both
    // at a few pixels (32 of 262,144 on samples/synthetic-512.png with the session-7 model, in one
    // 11x11 patch, the same on x86 and aarch64): the difference is in tract's path.
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/unet-nuclei.int8.onnx");
    let frame = generate(&mut Rng::new(2026), 200, 180, &SynthConfig::default());
    let input = dir.path().join("x.png");
    let pixels: Vec<u16> = frame.image.iter().map(|&v| (v * 4000.0) as u16).collect();
    save_gray16(&input, 200, 180, pixels).unwrap();
    let mut outs = vec![];
    for (name, conv) in [
        ("ours", None),
        ("reference", Some("reference")),
        ("tract", Some("tract")),
    ] {
        let out = dir.path().join(name);
        let mut c = util::command();
        c.args(["segment", input.to_str().unwrap()]).args([
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        if let Some(conv) = conv {
            c.env("UNET_EDGE_CONV", conv);
            // tract 0.23.9's AMX int8 matmul crashes (README, "Known issue").
            if cfg!(target_arch = "x86_64") {
                c.env("TRACT_CPU_ISA", "-amx-int8");
            }
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(out);
    }
    let same = |a: &Path, b: &Path, file: &str| {
        std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap()
    };
    // Without a kernel of the project's (no AVX-512 VNNI) the default plan is tract's, which is
    // not held to the reference's probabilities (above).
    if unet_graph::conv::KernelPath::detect_int8().is_some() {
        for file in ["x.prob.png", "x.mask.png", "x.labels.png"] {
            assert!(
                same(&outs[0], &outs[1], file),
                "{file}: ConvI8 differs from the reference"
            );
        }
    }
    for file in ["x.mask.png", "x.labels.png"] {
        assert!(
            same(&outs[0], &outs[2], file),
            "{file}: ConvI8 differs from tract's"
        );
    }
}

#[test]
fn a_star_model_segments_through_its_polygons_and_refuses_mirroring() {
    let spec = unet_edge::unet::UNetSpec {
        base: 4,
        depth: 2,
        outputs: 2 + 16,
    };
    let bytes = unet_edge::onnx_writer::encode(
        &spec
            .random_weights(5)
            .to_onnx(&ModelMeta::default())
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let model = util::write(dir.path(), "star.onnx", &bytes);
    let info = util::run_ok(&["info", "--model", &model]);
    assert!(info.contains("foreground, core and 16 star rays"), "{info}");
    let img = dir.path().join("cells.png");
    let s = generate(&mut Rng::new(8), 120, 90, &SynthConfig::default());
    save_gray16(&img, 120, 90, s.image.iter().map(|v| *v as u16).collect()).unwrap();
    let out = dir.path().join("out");
    let stdout = segment_in_32px_tiles(&img, &out, &model);
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(120), Some(90))
    );
    let labels = image::open(out.join("cells.labels.png"))
        .unwrap()
        .to_luma16();
    let ids: std::collections::BTreeSet<u16> = labels.pixels().map(|p| p.0[0]).collect();
    // Whatever random weights find, the label image numbers exactly the nuclei reported.
    assert_eq!(
        ids.iter().filter(|&&l| l > 0).count() as u64,
        j["nuclei"].as_u64().unwrap(),
        "{j}"
    );
    util::fails_with(
        &[
            "segment",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            &model,
            "--tta",
            "4",
        ],
        &["--tta 4", "star-convex rays"],
    );
}
