//! Frame sources for the live loop: image files played as a stream, raw frames on a pipe, and
//! the pixel-format conversions they share. Each source converts into a caller-owned
//! [`FrameBuf`], so steady-state capture allocates nothing (image-file decoding aside).

use crate::io::imageio::{is_image_path, list_images, load_gray};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A greyscale frame of raw intensities, reused from frame to frame.
#[derive(Clone, Debug, Default)]
pub struct FrameBuf {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major intensities.
    pub data: Vec<f32>,
    /// Sequence number from the source.
    pub index: u64,
    /// When the source delivered it, for end-to-end latency.
    pub captured: Option<Instant>,
}

impl FrameBuf {
    /// Sets the size, growing the buffer only when it must.
    pub fn resize(&mut self, width: usize, height: usize) {
        self.width = width;
        self.height = height;
        self.data.resize(width * height, 0.0);
    }
}

/// Why a source could not deliver a frame; the live loop branches on it.
#[derive(Debug)]
pub enum SourceError {
    /// Nothing arrived within the timeout; try again.
    Timeout,
    /// The device went away (unplug, ENODEV, EIO); retry with backoff.
    Disconnected(String),
    /// This frame was damaged (e.g. truncated MJPEG); skip and count it.
    Corrupt(String),
    /// Cannot continue (bad format, unreadable input).
    Fatal(anyhow::Error),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Timeout => write!(f, "no frame within the timeout"),
            SourceError::Disconnected(s) => write!(f, "source disconnected: {s}"),
            SourceError::Corrupt(s) => write!(f, "corrupt frame: {s}"),
            SourceError::Fatal(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for SourceError {}

/// What a source returns per call.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// `out` holds a new frame.
    Frame,
    /// The stream ended (last file played, pipe closed).
    End,
}

/// Something that produces frames.
pub trait FrameSource: Send {
    /// Waits up to `timeout` for the next frame and converts it into `out`.
    fn next_into(&mut self, out: &mut FrameBuf, timeout: Duration) -> Result<Next, SourceError>;

    /// A live source (a camera) keeps running and the loop takes its latest frame, dropping the
    /// rest; a recording played as fast as possible waits for the loop instead, so every frame is
    /// processed.
    fn is_live(&self) -> bool {
        true
    }
}

impl FrameSource for Box<dyn FrameSource> {
    fn next_into(&mut self, out: &mut FrameBuf, timeout: Duration) -> Result<Next, SourceError> {
        (**self).next_into(out, timeout)
    }
    fn is_live(&self) -> bool {
        (**self).is_live()
    }
}

impl std::str::FromStr for PixFmt {
    type Err = String;

    fn from_str(s: &str) -> Result<PixFmt, String> {
        PixFmt::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = PixFmt::NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown pixel format {s:?}; expected {}", names.join(", "))
            })
    }
}

/// Pixel layouts of raw frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixFmt {
    /// 8-bit grey, one byte per pixel.
    Gray8,
    /// 16-bit grey, little-endian.
    Gray16le,
    /// YUV 4:2:2 packed (Y0 U Y1 V); only luma is used.
    Yuyv,
    /// YUV 4:2:0 planar (I420, NV12: the luma plane first, as `rpicam-vid --codec yuv420` sends
    /// it); only luma is used.
    Yuv420,
}

impl PixFmt {
    /// Every format with its name on the command line and in config files.
    pub const NAMES: [(&'static str, PixFmt); 4] = [
        ("gray8", PixFmt::Gray8),
        ("gray16le", PixFmt::Gray16le),
        ("yuyv", PixFmt::Yuyv),
        ("yuv420", PixFmt::Yuv420),
    ];

    /// Bytes of one `width`x`height` frame.
    pub fn frame_bytes(self, width: usize, height: usize) -> usize {
        match self {
            PixFmt::Gray8 => width * height,
            PixFmt::Gray16le | PixFmt::Yuyv => 2 * width * height,
            PixFmt::Yuv420 => width * height + 2 * width.div_ceil(2) * height.div_ceil(2),
        }
    }

    /// Converts one raw frame into intensities; `raw` must hold exactly one frame.
    pub fn convert(self, raw: &[u8], out: &mut [f32]) {
        match self {
            // The luma plane leads the frame; the chroma planes after it are ignored.
            PixFmt::Gray8 | PixFmt::Yuv420 => {
                out.iter_mut().zip(raw).for_each(|(o, &b)| *o = b as f32)
            }
            PixFmt::Gray16le => out
                .iter_mut()
                .zip(raw.chunks_exact(2))
                .for_each(|(o, b)| *o = u16::from_le_bytes([b[0], b[1]]) as f32),
            // Luma is every other byte: fluorescence is monochrome, chroma carries nothing.
            PixFmt::Yuyv => out
                .iter_mut()
                .zip(raw.iter().step_by(2))
                .for_each(|(o, &y)| *o = y as f32),
        }
    }
}

/// Decodes one MJPEG (JPEG) frame to luma; a damaged frame is [`SourceError::Corrupt`].
pub fn decode_mjpeg(jpeg: &[u8], out: &mut FrameBuf) -> Result<(), SourceError> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| SourceError::Corrupt(e.to_string()))?
        .into_luma8();
    out.resize(img.width() as usize, img.height() as usize);
    out.data
        .iter_mut()
        .zip(img.as_raw())
        .for_each(|(o, &v)| *o = v as f32);
    Ok(())
}

/// Paces a source to a frame rate (no pacing when `fps` is 0).
struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    fn new(fps: f32) -> Pacer {
        Pacer {
            period: (fps > 0.0).then(|| Duration::from_secs_f32(1.0 / fps)),
            next: None,
        }
    }

    fn wait(&mut self) {
        let Some(p) = self.period else { return };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        // Late frames do not accumulate debt: the schedule restarts from now.
        self.next = Some(due.max(now) + p);
    }
}

/// Image files played as a stream, in name order, at `fps` (0 = as fast as they decode).
pub struct FileSource {
    files: Vec<PathBuf>,
    at: usize,
    pacer: Pacer,
}

impl FileSource {
    /// A directory of images, a single file, or a pattern with `*` in its file name (`dir/frame*.png`).
    pub fn open(spec: &Path, fps: f32) -> anyhow::Result<FileSource> {
        let files = expand_frames(spec)?;
        Ok(FileSource {
            files,
            at: 0,
            pacer: Pacer::new(fps),
        })
    }

    /// Number of frames in the stream.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when the stream has no frames (never, after a successful open).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, rest)) => {
            if !name.starts_with(pre) {
                return false;
            }
            let tail = &name[pre.len()..];
            if !rest.contains('*') {
                return tail.ends_with(rest);
            }
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && matches(rest, &tail[i..]))
        }
    }
}

/// The frames named by a directory, a file, or a `*` pattern, sorted by name.
pub fn expand_frames(spec: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = spec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut files: Vec<PathBuf> = if spec.is_dir() {
        list_images(spec)?
    } else if name.contains('*') {
        let dir = spec
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::read_dir(dir)
            .map_err(|e| {
                anyhow::anyhow!(
                    "--input {}: cannot list {}: {e}",
                    spec.display(),
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && is_image_path(p)
                    && p.file_name()
                        .is_some_and(|n| matches(&name, &n.to_string_lossy()))
            })
            .collect()
    } else if spec.is_file() {
        vec![spec.to_path_buf()]
    } else {
        anyhow::bail!("--input {}: no such file or directory", spec.display());
    };
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "--input {}: no .png, .tif, .tiff, .jpg or .jpeg frames",
            spec.display()
        );
    }
    Ok(files)
}

impl FrameSource for FileSource {
    fn next_into(&mut self, out: &mut FrameBuf, _timeout: Duration) -> Result<Next, SourceError> {
        let Some(path) = self.files.get(self.at) else {
            return Ok(Next::End);
        };
        self.at += 1;
        self.pacer.wait();
        let img = load_gray(path).map_err(|e| SourceError::Corrupt(format!("{e:#}")))?;
        out.resize(img.width, img.height);
        out.data.copy_from_slice(&img.data);
        out.index = self.at as u64 - 1;
        Ok(Next::Frame)
    }

    fn is_live(&self) -> bool {
        self.pacer.period.is_some()
    }
}

/// Raw frames of a fixed size and pixel format from a byte stream (stdin, a pipe from ffmpeg or
/// GStreamer).
pub struct RawSource<R: Read + Send> {
    reader: R,
    fmt: PixFmt,
    width: usize,
    height: usize,
    raw: Vec<u8>,
    count: u64,
}

impl<R: Read + Send> RawSource<R> {
    /// Frames of `width`x`height` in `fmt` from `reader`; frames over `max_pixels` are refused
    /// before the frame buffer is allocated.
    pub fn new(
        reader: R,
        fmt: PixFmt,
        width: usize,
        height: usize,
        max_pixels: usize,
    ) -> anyhow::Result<RawSource<R>> {
        if width == 0 || height == 0 {
            anyhow::bail!("raw input needs --width and --height (got {width}x{height})");
        }
        crate::limits::check_frame(width, height, max_pixels, "raw input --width x --height")?;
        if fmt == PixFmt::Yuyv && !width.is_multiple_of(2) {
            anyhow::bail!("--pixfmt yuyv needs an even --width (got {width})");
        }
        Ok(RawSource {
            reader,
            fmt,
            width,
            height,
            raw: vec![0; fmt.frame_bytes(width, height)],
            count: 0,
        })
    }
}

impl<R: Read + Send> FrameSource for RawSource<R> {
    fn next_into(&mut self, out: &mut FrameBuf, _timeout: Duration) -> Result<Next, SourceError> {
        let mut filled = 0;
        while filled < self.raw.len() {
            match self.reader.read(&mut self.raw[filled..]) {
                Ok(0) if filled == 0 => return Ok(Next::End),
                Ok(0) => {
                    return Err(SourceError::Corrupt(format!(
                        "stream ended inside a frame ({filled} of {} bytes)",
                        self.raw.len()
                    )))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(SourceError::Fatal(anyhow::anyhow!(
                        "reading raw frames: {e}"
                    )))
                }
            }
        }
        out.resize(self.width, self.height);
        self.fmt.convert(&self.raw, &mut out.data);
        out.index = self.count;
        self.count += 1;
        Ok(Next::Frame)
    }
}

/// A fake camera on the synthetic nuclei generator: a cycle of distinct frames generated once at
/// start, replayed at `fps` for as long as asked. For demonstrations, soak runs and tests on
/// machines without a camera (`--input synth:512x512`).
pub struct SynthSource {
    frames: Vec<Vec<f32>>,
    width: usize,
    height: usize,
    count: u64,
    pacer: Pacer,
}

impl SynthSource {
    /// Frames in the replayed cycle.
    pub const CYCLE: usize = 8;

    /// Parses `synth` or `synth:WxH` (default 512x512); `None` when `spec` is not a synth spec.
    pub fn parse_spec(spec: &str) -> Option<anyhow::Result<(usize, usize)>> {
        let rest = spec.strip_prefix("synth")?;
        if rest.is_empty() {
            return Some(Ok((512, 512)));
        }
        let size = rest.strip_prefix(':')?;
        Some(
            size.split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .filter(|&(w, h): &(usize, usize)| w > 0 && h > 0 && w * h <= 1 << 26)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--input {spec}: expected synth or synth:WxH, e.g. synth:512x512"
                    )
                }),
        )
    }

    /// `width`x`height` frames from generator seeds `seed..seed + CYCLE`.
    pub fn new(width: usize, height: usize, seed: u64, fps: f32) -> SynthSource {
        let cfg = crate::synth::SynthConfig::default();
        let frames = (0..Self::CYCLE as u64)
            .map(|i| {
                crate::synth::generate(&mut crate::rng::Rng::new(seed + i), width, height, &cfg)
                    .image
            })
            .collect();
        SynthSource {
            frames,
            width,
            height,
            count: 0,
            pacer: Pacer::new(fps),
        }
    }
}

impl FrameSource for SynthSource {
    fn next_into(&mut self, out: &mut FrameBuf, _timeout: Duration) -> Result<Next, SourceError> {
        self.pacer.wait();
        out.resize(self.width, self.height);
        out.data
            .copy_from_slice(&self.frames[self.count as usize % self.frames.len()]);
        out.index = self.count;
        self.count += 1;
        Ok(Next::Frame)
    }

    fn is_live(&self) -> bool {
        self.pacer.period.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_of_recorded_frames() {
        let mut out = vec![0.0; 4];
        PixFmt::Gray8.convert(&[0, 1, 128, 255], &mut out);
        assert_eq!(out, vec![0.0, 1.0, 128.0, 255.0]);
        PixFmt::Gray16le.convert(&[0x34, 0x12, 0xff, 0xff, 0, 0, 1, 0], &mut out);
        assert_eq!(out, vec![4660.0, 65535.0, 0.0, 1.0]);
        // Y0 U Y1 V Y2 U Y3 V
        PixFmt::Yuyv.convert(&[10, 128, 20, 128, 30, 99, 40, 99], &mut out);
        assert_eq!(out, vec![10.0, 20.0, 30.0, 40.0]);
        // 2x2 I420: four luma bytes, then one U and one V.
        assert_eq!(PixFmt::Yuv420.frame_bytes(2, 2), 6);
        assert_eq!(PixFmt::Yuv420.frame_bytes(3, 3), 9 + 8);
        PixFmt::Yuv420.convert(&[5, 6, 7, 8, 128, 128], &mut out);
        assert_eq!(out, vec![5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn mjpeg_decodes_and_corrupt_frames_are_typed() {
        let mut jpeg = Vec::new();
        let img = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
        img.write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let mut f = FrameBuf::default();
        decode_mjpeg(&jpeg, &mut f).unwrap();
        assert_eq!((f.width, f.height), (16, 8));
        assert!(f.data[15] > f.data[0] + 150.0);
        let truncated = &jpeg[..jpeg.len() / 3];
        assert!(matches!(
            decode_mjpeg(truncated, &mut f),
            Err(SourceError::Corrupt(_))
        ));
    }

    #[test]
    fn raw_source_reads_frames_and_flags_a_torn_tail() {
        let bytes: Vec<u8> = (0..2 * 6 + 3).map(|i| i as u8).collect();
        let mut src = RawSource::new(&bytes[..], PixFmt::Gray8, 3, 2, 6).unwrap();
        let mut f = FrameBuf::default();
        assert_eq!(src.next_into(&mut f, Duration::ZERO).unwrap(), Next::Frame);
        assert_eq!(f.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(src.next_into(&mut f, Duration::ZERO).unwrap(), Next::Frame);
        assert_eq!(f.index, 1);
        assert!(matches!(
            src.next_into(&mut f, Duration::ZERO),
            Err(SourceError::Corrupt(_))
        ));
        assert!(RawSource::new(&bytes[..], PixFmt::Yuyv, 3, 2, 6).is_err());
        let e = RawSource::new(&bytes[..], PixFmt::Gray8, usize::MAX, usize::MAX, 6)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--max-pixels"), "refused before allocating: {e}");
    }

    #[test]
    fn synth_specs() {
        assert_eq!(
            SynthSource::parse_spec("synth").unwrap().unwrap(),
            (512, 512)
        );
        assert_eq!(
            SynthSource::parse_spec("synth:64x32").unwrap().unwrap(),
            (64, 32)
        );
        assert!(SynthSource::parse_spec("synth:64").unwrap().is_err());
        assert!(SynthSource::parse_spec("synth:0x5").unwrap().is_err());
        assert!(SynthSource::parse_spec("frames/").is_none());
        let mut s = SynthSource::new(24, 16, 1, 0.0);
        let mut f = FrameBuf::default();
        for i in 0..SynthSource::CYCLE as u64 + 1 {
            assert_eq!(s.next_into(&mut f, Duration::ZERO).unwrap(), Next::Frame);
            assert_eq!((f.index, f.width, f.height), (i, 24, 16));
        }
    }

    #[test]
    fn patterns_match_like_a_shell() {
        assert!(matches("frame*.png", "frame001.png"));
        assert!(!matches("frame*.png", "frame001.tif"));
        assert!(matches("*a*b", "xaxxb"));
        assert!(!matches("*a*b", "xbxa"));
    }
}
