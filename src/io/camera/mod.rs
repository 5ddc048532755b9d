//! Camera capture: what a V4L2 device offers, which of it unet-edge takes (negotiation), and how
//! captured buffers become frames. Everything here is platform-neutral and tested against
//! simulated device descriptions; the thin ioctl layer lives in [`v4l2`] (Linux only).

#[cfg(target_os = "linux")]
pub mod v4l2;

use crate::io::source::{FrameBuf, PixFmt, SourceError};
use std::fmt;

/// A V4L2 pixel format code (`v4l2_fourcc`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl FourCc {
    /// The code of four ASCII characters, e.g. `b"YUYV"`.
    pub const fn new(c: &[u8; 4]) -> FourCc {
        FourCc(u32::from_le_bytes(*c))
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_le_bytes();
        let s: String = b
            .iter()
            .map(|&c| if c.is_ascii_graphic() { c as char } else { ' ' })
            .collect();
        write!(f, "{}", s.trim_end())
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCc({self})")
    }
}

/// The capture formats unet-edge decodes, in order of preference: monochrome first (what a
/// fluorescence camera really measures), then luma of YUYV, then decoded MJPEG (lossy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CamFormat {
    /// 8-bit grey (`GREY`).
    Grey,
    /// 16-bit grey (`Y16 `).
    Y16,
    /// 10-bit grey in 16-bit words (`Y10 `).
    Y10,
    /// 12-bit grey in 16-bit words (`Y12 `).
    Y12,
    /// YUV 4:2:2 (`YUYV`); luma only.
    Yuyv,
    /// Motion JPEG (`MJPG` or `JPEG`), decoded to luma.
    Mjpeg,
}

impl std::str::FromStr for CamFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<CamFormat, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "grey" => CamFormat::Grey,
            "y16" => CamFormat::Y16,
            "y10" => CamFormat::Y10,
            "y12" => CamFormat::Y12,
            "yuyv" => CamFormat::Yuyv,
            "mjpeg" => CamFormat::Mjpeg,
            _ => {
                return Err(format!(
                    "unknown camera format {s:?}; expected grey, y16, y10, y12, yuyv or mjpeg"
                ))
            }
        })
    }
}

impl CamFormat {
    /// All formats, most preferred first.
    pub const PREFERENCE: [CamFormat; 6] = [
        CamFormat::Grey,
        CamFormat::Y16,
        CamFormat::Y12,
        CamFormat::Y10,
        CamFormat::Yuyv,
        CamFormat::Mjpeg,
    ];

    /// The format of a fourcc, if unet-edge can decode it.
    pub fn from_fourcc(f: FourCc) -> Option<CamFormat> {
        Some(match &f.0.to_le_bytes() {
            b"GREY" => CamFormat::Grey,
            b"Y16 " => CamFormat::Y16,
            b"Y10 " => CamFormat::Y10,
            b"Y12 " => CamFormat::Y12,
            b"YUYV" => CamFormat::Yuyv,
            b"MJPG" | b"JPEG" => CamFormat::Mjpeg,
            _ => return None,
        })
    }

    /// The raw layout of an uncompressed format (`None` for MJPEG).
    pub fn pixfmt(self) -> Option<PixFmt> {
        match self {
            CamFormat::Grey => Some(PixFmt::Gray8),
            // 10/12-bit samples sit in the low bits of little-endian words; normalization is
            // per-frame percentiles, so the range needs no rescaling.
            CamFormat::Y16 | CamFormat::Y10 | CamFormat::Y12 => Some(PixFmt::Gray16le),
            CamFormat::Yuyv => Some(PixFmt::Yuyv),
            CamFormat::Mjpeg => None,
        }
    }
}

/// Why a fourcc is not decoded, for `--list-cameras`; `None` when it is supported.
pub fn unsupported_reason(f: FourCc) -> Option<&'static str> {
    if CamFormat::from_fourcc(f).is_some() {
        return None;
    }
    let b = f.0.to_le_bytes();
    Some(
        if matches!(
            &b[..2],
            b"BA" | b"BG" | b"GB" | b"GR" | b"RG" | b"pB" | b"pG" | b"pR"
        ) || matches!(&b, b"BYR2" | b"RGGB" | b"GRBG" | b"GBRG" | b"BGGR")
        {
            "raw Bayer: not supported; use libcamera (e.g. `rpicam-vid ... -o -`) and pipe with --input -"
        } else {
            "not supported"
        },
    )
}

/// Frame sizes a format offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// A list of exact sizes.
    Discrete(Vec<(u32, u32)>),
    /// Any size in a range on a step grid (continuous = step 1).
    Stepwise {
        /// Smallest width and height.
        min: (u32, u32),
        /// Largest width and height.
        max: (u32, u32),
        /// Width and height steps.
        step: (u32, u32),
    },
}

/// One pixel format a device offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatInfo {
    /// The V4L2 code.
    pub fourcc: FourCc,
    /// The driver's description.
    pub description: String,
    /// Whether the driver marks it compressed.
    pub compressed: bool,
    /// Sizes it offers.
    pub sizes: Sizes,
}

/// What the user asked for; `None` fields are chosen by negotiation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Request {
    /// A forced format (`--format`), or the preference order.
    pub format: Option<CamFormat>,
    /// Wanted width.
    pub width: Option<u32>,
    /// Wanted height.
    pub height: Option<u32>,
    /// Wanted frame rate.
    pub fps: Option<f32>,
}

/// The format and size negotiation settled on (the driver may still adjust the size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The decoded format.
    pub format: CamFormat,
    /// Its exact fourcc (MJPEG has two).
    pub fourcc: FourCc,
    /// Width to ask for.
    pub width: u32,
    /// Height to ask for.
    pub height: u32,
}

/// Largest frame area chosen when no size is asked for: bigger frames cost tiles (a 1080p frame
/// is ~150 tiles) and microscope fields are usually binned down anyway.
pub const DEFAULT_MAX_AREA: u64 = 1920 * 1080;

fn pick_size(sizes: &Sizes, want: (Option<u32>, Option<u32>)) -> Option<(u32, u32)> {
    let area = |(w, h): (u32, u32)| w as u64 * h as u64;
    match (sizes, want) {
        (Sizes::Discrete(list), (None, None)) => list
            .iter()
            .copied()
            .filter(|&s| area(s) <= DEFAULT_MAX_AREA)
            .max_by_key(|&s| area(s))
            .or_else(|| list.iter().copied().min_by_key(|&s| area(s))),
        (Sizes::Discrete(list), (w, h)) => list.iter().copied().min_by_key(|&(sw, sh)| {
            let dw = w.map_or(0, |w| (sw as i64 - w as i64).unsigned_abs());
            let dh = h.map_or(0, |h| (sh as i64 - h as i64).unsigned_abs());
            (dw + dh, u64::MAX - area((sw, sh)))
        }),
        (Sizes::Stepwise { min, max, step }, (w, h)) => {
            let fit = |v: u32, lo: u32, hi: u32, st: u32| {
                let st = st.max(1);
                let v = v.clamp(lo, hi);
                lo + (v - lo) / st * st
            };
            let (dw, dh) = match (w, h) {
                (None, None) => {
                    // Largest size on the grid with the default area cap, keeping the maximum's
                    // aspect ratio.
                    let s = ((DEFAULT_MAX_AREA as f64 / area(*max) as f64).sqrt()).min(1.0);
                    ((max.0 as f64 * s) as u32, (max.1 as f64 * s) as u32)
                }
                (w, h) => (w.unwrap_or(max.0), h.unwrap_or(max.1)),
            };
            Some((fit(dw, min.0, max.0, step.0), fit(dh, min.1, max.1, step.1)))
        }
    }
}

/// Chooses format and size from what a device offers: the forced format or the first of
/// [`CamFormat::PREFERENCE`] the device has, and the offered size nearest the request (without a
/// request, the largest up to [`DEFAULT_MAX_AREA`]). The error names what the device offers.
pub fn negotiate(device: &str, formats: &[FormatInfo], req: &Request) -> anyhow::Result<Choice> {
    if formats.is_empty() {
        anyhow::bail!(
            "{device} offers no capture formats (a metadata or output node? try the other \
             /dev/video* nodes, see --list-cameras)"
        );
    }
    let offered = || {
        formats
            .iter()
            .map(|f| f.fourcc.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let order: Vec<CamFormat> = match req.format {
        Some(f) => vec![f],
        None => CamFormat::PREFERENCE.to_vec(),
    };
    for want in order {
        let Some(info) = formats
            .iter()
            .find(|f| CamFormat::from_fourcc(f.fourcc) == Some(want))
        else {
            continue;
        };
        let (width, height) = pick_size(&info.sizes, (req.width, req.height)).ok_or_else(|| {
            anyhow::anyhow!("{device}: format {} offers no frame sizes", info.fourcc)
        })?;
        return Ok(Choice {
            format: want,
            fourcc: info.fourcc,
            width,
            height,
        });
    }
    match req.format {
        Some(f) => anyhow::bail!(
            "{device} does not offer --format {} (it offers: {}); try --format auto",
            format!("{f:?}").to_lowercase(),
            offered()
        ),
        None => {
            let hint = formats
                .iter()
                .find_map(|f| unsupported_reason(f.fourcc).filter(|r| r.starts_with("raw Bayer")))
                .unwrap_or("unet-edge decodes GREY, Y16, Y10, Y12, YUYV and MJPEG");
            anyhow::bail!(
                "{device} offers no format unet-edge can decode ({}): {hint}",
                offered()
            )
        }
    }
}

/// Layout of a negotiated stream, as the driver confirmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    /// Decoded format.
    pub format: CamFormat,
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Bytes from one row to the next (≥ the packed row size; drivers pad).
    pub stride: usize,
}

impl StreamFormat {
    /// Converts one captured buffer (`bytesused` bytes) into `out`; short or damaged buffers are
    /// [`SourceError::Corrupt`]. Uncompressed formats allocate nothing once `out` has its size.
    pub fn convert(&self, buf: &[u8], out: &mut FrameBuf) -> Result<(), SourceError> {
        let Some(pix) = self.format.pixfmt() else {
            crate::io::source::decode_mjpeg(buf, out)?;
            if (out.width, out.height) != (self.width, self.height) {
                return Err(SourceError::Corrupt(format!(
                    "MJPEG frame is {}x{}, the stream is {}x{}",
                    out.width, out.height, self.width, self.height
                )));
            }
            return Ok(());
        };
        let row = pix.frame_bytes(self.width, 1);
        let stride = self.stride.max(row);
        let need = stride * (self.height.saturating_sub(1)) + row;
        if buf.len() < need {
            return Err(SourceError::Corrupt(format!(
                "short frame: {} of {need} bytes",
                buf.len()
            )));
        }
        out.resize(self.width, self.height);
        for (y, dst) in out.data.chunks_exact_mut(self.width).enumerate() {
            pix.convert(&buf[y * stride..y * stride + row], dst);
        }
        Ok(())
    }
}

/// How a failed device call should be handled, from its errno.
pub fn classify_errno(device: &str, what: &str, errno: i32) -> SourceError {
    match errno {
        libc_errno::EAGAIN | libc_errno::EINTR => SourceError::Timeout,
        libc_errno::ENODEV | libc_errno::EIO | libc_errno::ENOENT | libc_errno::ENXIO => {
            SourceError::Disconnected(format!(
                "{device}: {what}: {} (unplugged?)",
                std::io::Error::from_raw_os_error(errno)
            ))
        }
        libc_errno::EBUSY => SourceError::Fatal(anyhow::anyhow!(
            "{device} is busy: another program is capturing from it (find it with `fuser -v {device}`)"
        )),
        libc_errno::EACCES | libc_errno::EPERM => SourceError::Fatal(anyhow::anyhow!(
            "{device}: permission denied; add the user to the `video` group \
             (`sudo usermod -aG video $USER`, then log in again)"
        )),
        // ENOSYS: what qemu-user answers for an ioctl it does not translate.
        libc_errno::ENOTTY | libc_errno::EINVAL | libc_errno::ENOSYS
            if what == "VIDIOC_QUERYCAP" =>
        {
            SourceError::Fatal(anyhow::anyhow!("{device} is not a V4L2 video device"))
        }
        _ => SourceError::Fatal(anyhow::anyhow!(
            "{device}: {what}: {}",
            std::io::Error::from_raw_os_error(errno)
        )),
    }
}

/// The errno values [`classify_errno`] distinguishes (Linux numbering, the same on every
/// architecture unet-edge targets), kept here so the classification is testable everywhere.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EINTR: i32 = 4;
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOTTY: i32 = 25;
    pub const ENOSYS: i32 = 38;
}

/// A frame size and the frame rates offered at it.
pub type SizeRates = ((u32, u32), Vec<f32>);

/// One capture device, as `--list-cameras` prints it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device node.
    pub path: String,
    /// Driver name.
    pub driver: String,
    /// Card (camera) name.
    pub card: String,
    /// Bus location.
    pub bus: String,
    /// Capture formats with, per discrete size, the frame rates offered.
    pub formats: Vec<(FormatInfo, Vec<SizeRates>)>,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} (driver {}, {})",
            self.path, self.card, self.driver, self.bus
        )?;
        if self.formats.is_empty() {
            writeln!(f, "  no capture formats (metadata node?)")?;
        }
        for (info, sizes) in &self.formats {
            let note = unsupported_reason(info.fourcc).unwrap_or_default();
            writeln!(
                f,
                "  {:<4}  {}{}",
                info.fourcc.to_string(),
                info.description,
                if note.is_empty() {
                    String::new()
                } else {
                    format!("  [{note}]")
                }
            )?;
            if let Sizes::Stepwise { min, max, step } = &info.sizes {
                writeln!(
                    f,
                    "        {}x{} .. {}x{} step {}x{}",
                    min.0, min.1, max.0, max.1, step.0, step.1
                )?;
            }
            for ((w, h), rates) in sizes {
                let rates: Vec<String> = rates.iter().map(|r| format!("{r:.4}")).collect();
                let rates: Vec<&str> = rates
                    .iter()
                    .map(|s| s.trim_end_matches('0').trim_end_matches('.'))
                    .collect();
                writeln!(f, "        {w}x{h}  {} fps", rates.join(", "))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(code: &[u8; 4], sizes: Sizes) -> FormatInfo {
        FormatInfo {
            fourcc: FourCc::new(code),
            description: String::from_utf8_lossy(code).into_owned(),
            compressed: code == b"MJPG",
            sizes,
        }
    }

    /// A typical UVC webcam: YUYV at small sizes, MJPEG up to 4K.
    fn webcam() -> Vec<FormatInfo> {
        vec![
            fmt(
                b"YUYV",
                Sizes::Discrete(vec![(640, 480), (320, 240), (1280, 720)]),
            ),
            fmt(
                b"MJPG",
                Sizes::Discrete(vec![(640, 480), (1920, 1080), (3840, 2160)]),
            ),
        ]
    }

    #[test]
    fn fourcc_prints_its_letters() {
        assert_eq!(FourCc::new(b"Y16 ").to_string(), "Y16");
        assert_eq!(FourCc::new(b"YUYV").0, 0x5659_5559);
        assert_eq!(
            CamFormat::from_fourcc(FourCc::new(b"JPEG")),
            Some(CamFormat::Mjpeg)
        );
    }

    #[test]
    fn monochrome_is_preferred_over_yuyv_and_mjpeg() {
        let mut dev = webcam();
        dev.push(fmt(b"GREY", Sizes::Discrete(vec![(1024, 768)])));
        let c = negotiate("cam", &dev, &Request::default()).unwrap();
        assert_eq!((c.format, c.width, c.height), (CamFormat::Grey, 1024, 768));
        dev.push(fmt(b"Y16 ", Sizes::Discrete(vec![(1024, 768)])));
        // GREY stays first: 8 bits are what most monochrome sensors deliver at full rate.
        assert_eq!(
            negotiate("cam", &dev, &Request::default()).unwrap().format,
            CamFormat::Grey
        );
    }

    #[test]
    fn webcam_gets_largest_yuyv_or_the_forced_mjpeg_size_nearest_the_request() {
        let c = negotiate("cam", &webcam(), &Request::default()).unwrap();
        assert_eq!((c.format, c.width, c.height), (CamFormat::Yuyv, 1280, 720));
        let req = Request {
            format: Some(CamFormat::Mjpeg),
            width: Some(1900),
            height: Some(1000),
            fps: None,
        };
        let c = negotiate("cam", &webcam(), &req).unwrap();
        assert_eq!(
            (c.fourcc, c.width, c.height),
            (FourCc::new(b"MJPG"), 1920, 1080)
        );
        // Without a size, MJPEG stops at the default area cap rather than 4K.
        let req = Request {
            format: Some(CamFormat::Mjpeg),
            ..Default::default()
        };
        let c = negotiate("cam", &webcam(), &req).unwrap();
        assert_eq!((c.width, c.height), (1920, 1080));
    }

    #[test]
    fn stepwise_sizes_snap_to_the_grid_and_clamp() {
        let dev = vec![fmt(
            b"Y16 ",
            Sizes::Stepwise {
                min: (64, 64),
                max: (2048, 2048),
                step: (16, 2),
            },
        )];
        let req = Request {
            width: Some(1000),
            height: Some(5000),
            ..Default::default()
        };
        let c = negotiate("cam", &dev, &req).unwrap();
        assert_eq!((c.format, c.width, c.height), (CamFormat::Y16, 992, 2048));
        let c = negotiate("cam", &dev, &Request::default()).unwrap();
        assert!(c.width as u64 * c.height as u64 <= DEFAULT_MAX_AREA);
        assert_eq!(c.width % 16, 0);
    }

    #[test]
    fn errors_name_what_the_device_offers() {
        let e = negotiate("/dev/video1", &[], &Request::default()).unwrap_err();
        assert!(e.to_string().contains("no capture formats"), "{e}");
        let bayer = vec![fmt(b"RG10", Sizes::Discrete(vec![(4056, 3040)]))];
        let e = negotiate("/dev/video0", &bayer, &Request::default()).unwrap_err();
        assert!(e.to_string().contains("raw Bayer"), "{e}");
        assert!(e.to_string().contains("RG10"), "{e}");
        let req = Request {
            format: Some(CamFormat::Y16),
            ..Default::default()
        };
        let e = negotiate("/dev/video0", &webcam(), &req).unwrap_err();
        assert!(e.to_string().contains("YUYV, MJPG"), "{e}");
    }

    #[test]
    fn padded_rows_and_short_buffers() {
        let sf = StreamFormat {
            format: CamFormat::Grey,
            width: 3,
            height: 2,
            stride: 4,
        };
        let mut out = FrameBuf::default();
        sf.convert(&[1, 2, 3, 99, 4, 5, 6], &mut out).unwrap();
        assert_eq!(out.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(matches!(
            sf.convert(&[1, 2, 3, 99, 4], &mut out),
            Err(SourceError::Corrupt(_))
        ));
        let y16 = StreamFormat {
            format: CamFormat::Y12,
            width: 2,
            height: 1,
            stride: 4,
        };
        y16.convert(&[0xff, 0x0f, 0x01, 0x00], &mut out).unwrap();
        assert_eq!(out.data, vec![4095.0, 1.0]);
    }

    #[test]
    fn errno_classes() {
        assert!(matches!(
            classify_errno("cam", "VIDIOC_DQBUF", 19),
            SourceError::Disconnected(_)
        ));
        assert!(matches!(
            classify_errno("cam", "VIDIOC_DQBUF", 5),
            SourceError::Disconnected(_)
        ));
        assert!(matches!(
            classify_errno("cam", "VIDIOC_DQBUF", 11),
            SourceError::Timeout
        ));
        let busy = classify_errno("/dev/video0", "VIDIOC_REQBUFS", 16).to_string();
        assert!(busy.contains("busy") && busy.contains("fuser"), "{busy}");
        let tty = classify_errno("/dev/null", "VIDIOC_QUERYCAP", 25).to_string();
        assert!(tty.contains("not a V4L2"), "{tty}");
    }
}
