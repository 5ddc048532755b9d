//! The live loop with fake sources: camera faults, the stop flag, and the real binary on a frame
//! directory and on raw frames from stdin. (Its allocation count is in tests/live_alloc.rs.)

mod util;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use util::fakes::{camera, no_pins, segmenter};

use unet_edge::contract::ModelMeta;
use unet_edge::io::source::SourceError;
use unet_edge::live::{self, LiveConfig};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

#[test]
fn unplug_corrupt_frames_and_fatal_errors() {
    let mut seg = segmenter();
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = LiveConfig {
        summary_every: None,
        ..Default::default()
    };
    // Faults pop from the back: timeout, a corrupt frame, an unplug, then frames resume.
    let faults = vec![
        SourceError::Disconnected("ENODEV".into()),
        SourceError::Corrupt("truncated MJPEG".into()),
        SourceError::Timeout,
    ];
    let stats = live::run(
        &mut seg,
        camera(5, faults),
        live::Sinks {
            pins: &mut no_pins(),
            log: &mut Vec::new(),
        },
        &cfg,
        &stop,
        |_| {},
    )
    .unwrap();
    assert_eq!(stats.reconnects, 1);
    assert_eq!(stats.corrupt, 1);
    assert!(
        stats.processed >= 1 && stats.processed + stats.dropped == 5,
        "{stats:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let fatal = vec![SourceError::Fatal(anyhow::anyhow!(
        "device has no capture formats"
    ))];
    let e = live::run(
        &mut seg,
        camera(5, fatal),
        live::Sinks {
            pins: &mut no_pins(),
            log: &mut Vec::new(),
        },
        &cfg,
        &stop,
        |_| {},
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("no capture formats"), "{e:#}");
}

#[test]
fn every_frame_processes_each_frame_of_a_live_source() {
    // A fake camera is a live source: without --every-frame frames that arrive during inference
    // replace each other; with it capture waits, so all 30 are processed and none dropped.
    let mut seg = segmenter();
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = LiveConfig {
        summary_every: None,
        every_frame: true,
        ..Default::default()
    };
    let mut log = Vec::new();
    let stats = live::run(
        &mut seg,
        camera(30, vec![]),
        live::Sinks {
            pins: &mut no_pins(),
            log: &mut log,
        },
        &cfg,
        &stop,
        |_| {},
    )
    .unwrap();
    assert_eq!((stats.processed, stats.dropped), (30, 0), "{stats:?}");
    let frames: Vec<u64> = String::from_utf8(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(frames, (0..30).collect::<Vec<u64>>());
}

#[test]
fn stop_flag_ends_the_loop_after_the_current_frame() {
    let mut seg = segmenter();
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = LiveConfig {
        summary_every: None,
        ..Default::default()
    };
    let s2 = stop.clone();
    let stats = live::run(
        &mut seg,
        camera(100_000, vec![]),
        live::Sinks {
            pins: &mut no_pins(),
            log: &mut Vec::new(),
        },
        &cfg,
        &stop,
        move |n| {
            if n == 3 {
                s2.store(true, Relaxed);
            }
        },
    )
    .unwrap();
    assert_eq!(stats.processed, 3);
}

fn tiny_model(dir: &std::path::Path) -> String {
    let spec = unet_edge::unet::UNetSpec {
        base: 4,
        depth: 2,
        outputs: 1,
    };
    let bytes = unet_edge::onnx_writer::encode(
        &spec
            .random_weights(3)
            .to_onnx(&ModelMeta::default())
            .unwrap(),
    );
    util::write(dir, "m.onnx", &bytes)
}

#[test]
fn binary_plays_a_frame_directory_and_raw_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..4 {
        let s = generate(&mut Rng::new(i), 80, 64, &SynthConfig::default());
        unet_edge::io::imageio::save_gray16(
            &frames.join(format!("f{i}.png")),
            80,
            64,
            s.image.iter().map(|v| *v as u16).collect(),
        )
        .unwrap();
    }
    let saved = dir.path().join("saved");
    let out = util::run_ok(&[
        "--input",
        frames.to_str().unwrap(),
        "--model",
        &model,
        "--tile",
        "32",
        "--fps",
        "50",
        "--save-every",
        "2",
        "--out",
        saved.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines.len() <= 4, "{out}");
    assert_eq!(lines[0]["width"], 80);
    assert!(
        std::fs::read_dir(&saved).unwrap().count() >= 2,
        "mask and overlay of a saved frame"
    );

    // Raw 8-bit frames on stdin, as `ffmpeg ... -f rawvideo -pix_fmt gray -` sends them.
    use std::io::Write;
    let mut child = util::command()
        .args([
            "--input", "-", "--width", "40", "--height", "30", "--pixfmt", "gray8", "--model",
            &model, "--tile", "32",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let raw: Vec<u8> = (0..3 * 40 * 30).map(|i| (i % 251) as u8).collect();
    child.stdin.take().unwrap().write_all(&raw).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = String::from_utf8(o.stdout).unwrap().lines().count();
    assert!((1..=3).contains(&n), "{n}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("processed"));

    // Regression (issue 19): a recording piped faster than it is segmented lost frames to
    // latest-frame-wins; --every-frame keeps all of them, in order.
    let mut child = util::command()
        .args([
            "--input",
            "-",
            "--width",
            "96",
            "--height",
            "80",
            "--pixfmt",
            "gray8",
            "--model",
            &model,
            "--tile",
            "32",
            "--every-frame",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let raw: Vec<u8> = (0..25 * 96 * 80).map(|i| (i % 253) as u8).collect();
    child.stdin.take().unwrap().write_all(&raw).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let frames: Vec<u64> = records
        .iter()
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, (0..25).collect::<Vec<u64>>());
    assert!(records.iter().all(|r| r["dropped"] == 0), "{records:?}");
}

#[test]
fn binary_exits_cleanly_on_sigint_and_rejects_bad_live_options() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..50 {
        unet_edge::io::imageio::save_gray8(
            &frames.join(format!("f{i:02}.png")),
            32,
            32,
            vec![(i * 5) as u8; 1024],
        )
        .unwrap();
    }
    let log = dir.path().join("live.jsonl");
    let child = util::command()
        .args([
            "--input",
            frames.to_str().unwrap(),
            "--fps",
            "5",
            "--model",
            &model,
            "--tile",
            "32",
            "--log",
            log.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signal only once the loop is running (its first line is in the log), however slow the machine.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |s| s.lines().count() == 0) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no frame processed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(
        written.lines().count() >= 1 && written.lines().count() < 50,
        "{written}"
    );
    assert!(written.ends_with('\n'), "log flushed whole lines");

    let o = util::run(&["--input", "-", "--model", &model]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--width"));
    // A node that is not a camera is a clear error, not a retry loop.
    let o = util::run(&["--camera", "/dev/null", "--model", &model]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/dev/null is not a V4L2 video device"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = util::run(&["--camera", "/dev/null", "--format", "bayer"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("grey, y16"));
    let o = util::run(&[
        "--input",
        "synth:64x64",
        "--roi",
        "0,0,100,10",
        "--model",
        &model,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("outside the 64x64 frame"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = util::run(&[
        "--input",
        dir.path().join("none").to_str().unwrap(),
        "--model",
        &model,
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("none"));
    // The live loop takes segment's instance options, checked before anything starts.
    let o = util::run(&["--input", "synth:64x64", "--split-px=-1", "--model", &model]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--split-px -1 is outside 0..100 px"));
}

#[test]
fn binary_crops_scales_and_serves_the_preview_while_running() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // ROI 60x40 of a 100x80 synthetic frame, halved: the network sees 30x20.
    let out = util::run_ok(&[
        "--input",
        "synth:100x80",
        "--roi",
        "10,20,60,40",
        "--scale",
        "0.5",
        "--max-frames",
        "3",
        "--model",
        &model,
        "--tile",
        "32",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    // A recording played as fast as possible is not a live camera: every frame is processed.
    assert_eq!(lines[2]["frame"], 2);
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(30), Some(20))
    );

    let mut child = util::command()
        .args([
            "--input",
            "synth:96x64",
            "--fps",
            "20",
            "--preview",
            "0",
            "--model",
            &model,
            "--tile",
            "32",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no preview line");
        if let Some(rest) = line.strip_prefix("preview: http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    assert!(
        addr.starts_with("127.0.0.1:"),
        "a bare port binds to loopback: {addr}"
    );
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(c, "GET /snapshot.jpg HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    let body = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        reply.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&reply[..body])
    );
    let jpeg = image::load_from_memory(&reply[body..]).unwrap();
    assert_eq!((jpeg.width(), jpeg.height()), (96, 64));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn list_cameras_reports_the_devices_or_their_absence() {
    let o = util::run(&["--list-cameras"]);
    let has_nodes = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false);
    if has_nodes {
        assert_eq!(o.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&o.stdout).contains("/dev/video"));
    } else {
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no V4L2 devices"), "{err}");
    }
}
