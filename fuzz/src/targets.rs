//! The fuzz targets' bodies, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`, nightly,
//! libFuzzer) and the stable corpus replay in `tests/fuzz_corpus.rs`, which runs every committed
//! corpus file through them on each CI run. Each must return on any input: errors are fine,
//! panics, hangs and unbounded memory are the bugs.

use std::io::Cursor;
use std::time::Duration;
use unet_edge::io::camera::{
    negotiate, CamFormat, FormatInfo, FourCc, Request, Sizes, StreamFormat,
};
use unet_edge::io::source::{decode_mjpeg, FrameBuf, FrameSource, Next, PixFmt, RawSource};

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/corpus/<name>/` names them.
pub const TARGETS: [(&str, Target); 7] = [
    ("mjpeg", mjpeg),
    ("raw_frames", raw_frames),
    ("camera_negotiate", camera_negotiate),
    ("preview_request", preview_request),
    ("image_decode", image_decode),
    ("eval_labels", eval_labels),
    ("model_load", model_load),
];

/// One MJPEG frame from a camera or a pipe.
pub fn mjpeg(data: &[u8]) {
    let mut out = FrameBuf::default();
    let _ = decode_mjpeg(data, &mut out);
}

/// Raw stdin frames: the first three bytes choose the pixel format and a size up to 64x64, the
/// rest is the stream (whole frames, then a partial one).
pub fn raw_frames(data: &[u8]) {
    let [f, w, h, rest @ ..] = data else { return };
    let fmt = PixFmt::NAMES[*f as usize % PixFmt::NAMES.len()].1;
    let (w, h) = (*w as usize % 64 + 1, *h as usize % 64 + 1);
    let Ok(mut src) = RawSource::new(Cursor::new(rest), fmt, w, h, 1 << 20) else {
        return;
    };
    let mut out = FrameBuf::default();
    for _ in 0..64 {
        match src.next_into(&mut out, Duration::ZERO) {
            Ok(Next::Frame) => assert_eq!(out.data.len(), w * h),
            _ => break,
        }
    }
}

/// Bytes as a little reader of numbers.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u32 {
        u32::from(self.u8()) | u32::from(self.u8()) << 8
    }
    fn u32(&mut self) -> u32 {
        self.u16() | self.u16() << 16
    }
}

const FOURCCS: [&[u8; 4]; 9] = [
    b"GREY", b"Y16 ", b"Y10 ", b"Y12 ", b"YUYV", b"MJPG", b"JPEG", b"RGGB", b"NV12",
];

/// V4L2 negotiation from a device description (formats, sizes, the request), then converting a
/// buffer in the chosen layout with a stride the "driver" confirmed.
pub fn camera_negotiate(data: &[u8]) {
    let mut b = Bytes(data);
    let n = b.u8() % 5;
    let mut formats = vec![];
    for _ in 0..n {
        let code = b.u8();
        let fourcc = if code < 200 {
            FourCc::new(FOURCCS[code as usize % FOURCCS.len()])
        } else {
            FourCc(b.u32())
        };
        let sizes = if b.u8() % 2 == 0 {
            let k = b.u8() % 6;
            Sizes::Discrete((0..k).map(|_| (b.u16(), b.u16())).collect())
        } else {
            let min = (b.u16(), b.u16());
            let max = (b.u16(), b.u16());
            // Drivers report min <= max; negotiate relies on what V4L2 guarantees.
            let max = (max.0.max(min.0), max.1.max(min.1));
            Sizes::Stepwise {
                min,
                max,
                step: (b.u16(), b.u16()),
            }
        };
        formats.push(FormatInfo {
            fourcc,
            description: String::new(),
            compressed: false,
            sizes,
        });
    }
    let flags = b.u8();
    let req = Request {
        format: (flags & 1 == 1).then(|| CamFormat::PREFERENCE[b.u8() as usize % 6]),
        width: (flags & 2 == 2).then(|| b.u16()),
        height: (flags & 4 == 4).then(|| b.u16()),
        fps: (flags & 8 == 8).then(|| f32::from(b.u8())),
    };
    let Ok(choice) = negotiate("/dev/fuzz", &formats, &req) else {
        return;
    };
    // Converting is fuzzed on small frames only: the size the driver confirms is its own.
    let (width, height) = (
        choice.width as usize % 128 + 1,
        choice.height as usize % 128 + 1,
    );
    let stride = width * 2 + b.u8() as usize;
    let fmt = StreamFormat {
        format: choice.format,
        width,
        height,
        stride,
    };
    let mut out = FrameBuf::default();
    let _ = fmt.convert(b.0, &mut out);
}

/// The preview server's request parsing.
pub fn preview_request(data: &[u8]) {
    if let Ok(Some(path)) = unet_edge::io::preview::parse_request(Cursor::new(data)) {
        assert!(!path.contains(['?', '#']), "{path}");
    }
}

/// A scratch file of this process for decoders that read paths.
fn scratch(name: &str, data: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("unet-edge-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let p = dir.join(name);
    std::fs::write(&p, data).expect("scratch file");
    p
}

/// An image file through `imageio`, with a 1 Mpx limit (so a header that declares a huge image
/// must be refused before decoding).
pub fn image_decode(data: &[u8]) {
    let p = scratch("in.img", data);
    if let Ok(img) = unet_edge::io::imageio::load_gray_limited(&p, 1 << 20) {
        assert!(img.width * img.height <= 1 << 20);
        assert_eq!(img.data.len(), img.width * img.height);
    }
}

/// `eval`'s ground-truth label reading (a 16-bit label image named by stem).
pub fn eval_labels(data: &[u8]) {
    let p = scratch("x.png", data);
    if let Ok(Some((w, h, labels))) = unet_edge::io::imageio::find_truth(p.parent().unwrap(), "x") {
        assert_eq!(labels.len(), w * h);
    }
}

/// Model loading and the contract check (metadata, shapes), as `--model` does.
pub fn model_load(data: &[u8]) {
    let _ = unet_edge::engine::model::Model::from_bytes(data, "fuzz");
}
