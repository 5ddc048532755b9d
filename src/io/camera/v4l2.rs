//! The thin V4L2 layer: the handful of `videodev2.h` structures and ioctls unet-edge needs,
//! declared here (no bindgen, so no libclang at build time), mmap streaming, and a
//! [`FrameSource`] that survives unplugs. Layouts follow the kernel UAPI; `repr(C)` with
//! `libc::timeval` and a pointer-aligned union reproduces them on 64-bit and 32-bit ARM alike,
//! and the tests pin the ioctl numbers against the values the C header gives.

use super::{classify_errno, negotiate, Choice, DeviceInfo, FormatInfo, FourCc, Request, Sizes};
use super::{CamFormat, StreamFormat};
use crate::io::source::{FrameBuf, FrameSource, Next, SourceError};
use std::ffi::CString;
use std::os::raw::{c_int, c_ulong, c_void};
use std::path::Path;
use std::time::Duration;

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const FIELD_NONE: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const CAP_TIMEPERFRAME: u32 = 0x1000;
const FMT_FLAG_COMPRESSED: u32 = 0x0001;
const BUF_FLAG_ERROR: u32 = 0x0040;
const FRMSIZE_TYPE_DISCRETE: u32 = 1;
const FRMIVAL_TYPE_DISCRETE: u32 = 1;
/// Driver buffers: enough that capture never waits on inference, few enough to stay small.
const BUFFERS: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FmtDesc {
    index: u32,
    type_: u32,
    flags: u32,
    description: [u8; 32],
    pixelformat: u32,
    mbus_code: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    priv_: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// `v4l2_format.fmt`: 200 bytes, pointer-aligned because one member (`v4l2_window`) holds
/// pointers — which is what makes the structure 208 bytes on 64-bit and 204 on 32-bit.
#[repr(C)]
#[derive(Clone, Copy)]
union FormatUnion {
    pix: PixFormat,
    raw: [u8; 200],
    _align: [usize; 0],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Format {
    type_: u32,
    fmt: FormatUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Timecode {
    type_: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
union BufferM {
    offset: u32,
    userptr: c_ulong,
    planes: *mut c_void,
    fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    m: BufferM,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Fract {
    numerator: u32,
    denominator: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CaptureParm {
    capability: u32,
    capturemode: u32,
    timeperframe: Fract,
    extendedmode: u32,
    readbuffers: u32,
    reserved: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
union ParmUnion {
    capture: CaptureParm,
    raw: [u8; 200],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct StreamParm {
    type_: u32,
    parm: ParmUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FrmSizeEnum {
    index: u32,
    pixel_format: u32,
    type_: u32,
    // discrete: width, height; stepwise: min_w, max_w, step_w, min_h, max_h, step_h
    u: [u32; 6],
    reserved: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FrmIvalEnum {
    index: u32,
    pixel_format: u32,
    width: u32,
    height: u32,
    type_: u32,
    // discrete: num, den; stepwise: min, max, step fractions
    u: [u32; 6],
    reserved: [u32; 2],
}

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}
const R: u32 = 2;
const W: u32 = 1;
const RW: u32 = 3;
const VIDIOC_QUERYCAP: u32 = ioc(R, 0, size_of::<Capability>());
const VIDIOC_ENUM_FMT: u32 = ioc(RW, 2, size_of::<FmtDesc>());
const VIDIOC_G_FMT: u32 = ioc(RW, 4, size_of::<Format>());
const VIDIOC_S_FMT: u32 = ioc(RW, 5, size_of::<Format>());
const VIDIOC_REQBUFS: u32 = ioc(RW, 8, size_of::<RequestBuffers>());
const VIDIOC_QUERYBUF: u32 = ioc(RW, 9, size_of::<Buffer>());
const VIDIOC_QBUF: u32 = ioc(RW, 15, size_of::<Buffer>());
const VIDIOC_DQBUF: u32 = ioc(RW, 17, size_of::<Buffer>());
const VIDIOC_STREAMON: u32 = ioc(W, 18, size_of::<c_int>());
const VIDIOC_STREAMOFF: u32 = ioc(W, 19, size_of::<c_int>());
const VIDIOC_G_PARM: u32 = ioc(RW, 21, size_of::<StreamParm>());
const VIDIOC_S_PARM: u32 = ioc(RW, 22, size_of::<StreamParm>());
const VIDIOC_ENUM_FRAMESIZES: u32 = ioc(RW, 74, size_of::<FrmSizeEnum>());
const VIDIOC_ENUM_FRAMEINTERVALS: u32 = ioc(RW, 75, size_of::<FrmIvalEnum>());

fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for the plain-data UAPI structures above, for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An open device node; closed on drop.
struct Fd {
    fd: c_int,
    path: String,
}

impl Fd {
    fn open(path: &str) -> Result<Fd, SourceError> {
        let c = CString::new(path)
            .map_err(|_| SourceError::Fatal(anyhow::anyhow!("bad device path {path:?}")))?;
        // Non-blocking: DQBUF must never block forever (a known failure after unplugs); poll()
        // with a timeout does the waiting.
        // SAFETY: `c` is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(match errno {
                libc::ENOENT => SourceError::Disconnected(format!(
                    "{path} not found (not plugged in? see `ls /dev/video*` or --list-cameras)"
                )),
                _ => classify_errno(path, "open", errno),
            });
        }
        Ok(Fd {
            fd,
            path: path.to_string(),
        })
    }

    /// One ioctl, retried on EINTR; errors are classified for the live loop.
    fn ioctl<T>(&self, name: &str, req: u32, arg: &mut T) -> Result<(), SourceError> {
        self.ioctl_errno(req, arg)
            .map_err(|e| classify_errno(&self.path, name, e))
    }

    fn ioctl_errno<T>(&self, req: u32, arg: &mut T) -> Result<(), i32> {
        loop {
            // SAFETY: `arg` is the structure the request number encodes (size included), and it
            // lives for the whole call.
            let r = unsafe { libc::ioctl(self.fd, req as _, arg as *mut T as *mut c_void) };
            if r >= 0 {
                return Ok(());
            }
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != libc::EINTR {
                return Err(errno);
            }
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

fn query(fd: &Fd) -> Result<Capability, SourceError> {
    let mut cap: Capability = zeroed();
    fd.ioctl("VIDIOC_QUERYCAP", VIDIOC_QUERYCAP, &mut cap)?;
    Ok(cap)
}

fn caps(cap: &Capability) -> u32 {
    if cap.capabilities & CAP_DEVICE_CAPS != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    }
}

fn enum_formats(fd: &Fd) -> Vec<FormatInfo> {
    let mut out = Vec::new();
    for index in 0..64 {
        let mut d: FmtDesc = zeroed();
        d.index = index;
        d.type_ = BUF_TYPE_VIDEO_CAPTURE;
        if fd.ioctl_errno(VIDIOC_ENUM_FMT, &mut d).is_err() {
            break;
        }
        let fourcc = FourCc(d.pixelformat);
        out.push(FormatInfo {
            fourcc,
            description: cstr(&d.description),
            compressed: d.flags & FMT_FLAG_COMPRESSED != 0,
            sizes: enum_sizes(fd, fourcc),
        });
    }
    out
}

fn enum_sizes(fd: &Fd, fourcc: FourCc) -> Sizes {
    let mut list = Vec::new();
    for index in 0..256 {
        let mut s: FrmSizeEnum = zeroed();
        s.index = index;
        s.pixel_format = fourcc.0;
        if fd.ioctl_errno(VIDIOC_ENUM_FRAMESIZES, &mut s).is_err() {
            break;
        }
        if s.type_ != FRMSIZE_TYPE_DISCRETE {
            let u = s.u;
            return Sizes::Stepwise {
                min: (u[0], u[3]),
                max: (u[1], u[4]),
                step: (u[2].max(1), u[5].max(1)),
            };
        }
        list.push((s.u[0], s.u[1]));
    }
    if list.is_empty() {
        // Drivers that cannot enumerate sizes: take what G_FMT reports as the only size.
        let mut f: Format = zeroed();
        f.type_ = BUF_TYPE_VIDEO_CAPTURE;
        if fd.ioctl_errno(VIDIOC_G_FMT, &mut f).is_ok() {
            // SAFETY: the driver filled the `pix` member for a capture buffer type.
            let p = unsafe { f.fmt.pix };
            list.push((p.width, p.height));
        }
    }
    Sizes::Discrete(list)
}

fn enum_rates(fd: &Fd, fourcc: FourCc, (width, height): (u32, u32)) -> Vec<f32> {
    let mut out = Vec::new();
    for index in 0..64 {
        let mut i: FrmIvalEnum = zeroed();
        i.index = index;
        i.pixel_format = fourcc.0;
        i.width = width;
        i.height = height;
        if fd.ioctl_errno(VIDIOC_ENUM_FRAMEINTERVALS, &mut i).is_err() {
            break;
        }
        // Stepwise intervals: report the fastest.
        if i.u[0] > 0 {
            out.push(i.u[1] as f32 / i.u[0] as f32);
        }
        if i.type_ != FRMIVAL_TYPE_DISCRETE {
            break;
        }
    }
    out
}

/// Describes one device for `--list-cameras`.
pub fn describe(path: &str) -> Result<DeviceInfo, SourceError> {
    let fd = Fd::open(path)?;
    let cap = query(&fd)?;
    let capture = caps(&cap) & CAP_VIDEO_CAPTURE != 0;
    let formats = if capture {
        enum_formats(&fd)
    } else {
        Vec::new()
    };
    let formats = formats
        .into_iter()
        .map(|f| {
            let sizes = match &f.sizes {
                Sizes::Discrete(l) => l.clone(),
                Sizes::Stepwise { .. } => Vec::new(),
            };
            let rates = sizes
                .into_iter()
                .map(|s| (s, enum_rates(&fd, f.fourcc, s)))
                .collect();
            (f, rates)
        })
        .collect();
    Ok(DeviceInfo {
        path: path.to_string(),
        driver: cstr(&cap.driver),
        card: cstr(&cap.card),
        bus: cstr(&cap.bus_info),
        formats,
    })
}

/// The `/dev/video*` nodes, in numeric order.
pub fn list_devices() -> Vec<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let n = name.strip_prefix("video")?.parse().ok()?;
                    Some((n, format!("/dev/{name}")))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// A driver buffer mapped into our memory; unmapped on drop.
struct Mapped {
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; only the capture thread touches it.
unsafe impl Send for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A device streaming into mmap buffers.
struct Stream {
    // Field order matters: buffers are unmapped before the descriptor closes.
    buffers: Vec<Mapped>,
    fd: Fd,
    format: StreamFormat,
    fps: Option<f32>,
}

impl Stream {
    fn start(path: &str, req: &Request) -> Result<(Stream, Choice), SourceError> {
        let fd = Fd::open(path)?;
        let cap = query(&fd)?;
        let c = caps(&cap);
        if c & CAP_VIDEO_CAPTURE == 0 {
            return Err(SourceError::Fatal(anyhow::anyhow!(
                "{path} ({}) is not a video capture node; see --list-cameras",
                cstr(&cap.card)
            )));
        }
        if c & CAP_STREAMING == 0 {
            return Err(SourceError::Fatal(anyhow::anyhow!(
                "{path} ({}) does not support streaming I/O, which unet-edge needs",
                cstr(&cap.card)
            )));
        }
        let choice = negotiate(path, &enum_formats(&fd), req).map_err(SourceError::Fatal)?;
        let mut f: Format = zeroed();
        f.type_ = BUF_TYPE_VIDEO_CAPTURE;
        f.fmt.pix = PixFormat {
            width: choice.width,
            height: choice.height,
            pixelformat: choice.fourcc.0,
            field: FIELD_NONE,
            ..zeroed()
        };
        fd.ioctl("VIDIOC_S_FMT", VIDIOC_S_FMT, &mut f)?;
        // SAFETY: the driver filled the `pix` member for a capture buffer type.
        let pix = unsafe { f.fmt.pix };
        if pix.pixelformat != choice.fourcc.0 {
            return Err(SourceError::Fatal(anyhow::anyhow!(
                "{path}: asked for {} but the driver set {}",
                choice.fourcc,
                FourCc(pix.pixelformat)
            )));
        }
        let format = StreamFormat {
            format: choice.format,
            width: pix.width as usize,
            height: pix.height as usize,
            stride: pix.bytesperline as usize,
        };
        let fps = req.fps.and_then(|fps| set_rate(&fd, fps));
        let mut rb = RequestBuffers {
            count: BUFFERS,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..zeroed()
        };
        fd.ioctl("VIDIOC_REQBUFS", VIDIOC_REQBUFS, &mut rb)?;
        if rb.count == 0 {
            return Err(SourceError::Fatal(anyhow::anyhow!(
                "{path}: the driver granted no capture buffers"
            )));
        }
        let mut buffers = Vec::with_capacity(rb.count as usize);
        for index in 0..rb.count {
            let mut b = new_buffer(index);
            fd.ioctl("VIDIOC_QUERYBUF", VIDIOC_QUERYBUF, &mut b)?;
            // SAFETY: offset and length come from QUERYBUF for this descriptor.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    b.length as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.fd,
                    b.m.offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(classify_errno(path, "mmap", errno));
            }
            buffers.push(Mapped {
                ptr,
                len: b.length as usize,
            });
            fd.ioctl("VIDIOC_QBUF", VIDIOC_QBUF, &mut b)?;
        }
        let mut on: c_int = BUF_TYPE_VIDEO_CAPTURE as c_int;
        fd.ioctl("VIDIOC_STREAMON", VIDIOC_STREAMON, &mut on)?;
        Ok((
            Stream {
                buffers,
                fd,
                format,
                fps,
            },
            choice,
        ))
    }

    /// Waits for a filled buffer, converts it and gives it straight back to the driver.
    fn next_into(&mut self, out: &mut FrameBuf, timeout: Duration) -> Result<u32, SourceError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(classify_errno(&self.fd.path, "poll", errno));
        }
        if r == 0 {
            return Err(SourceError::Timeout);
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && pfd.revents & libc::POLLIN == 0
        {
            return Err(SourceError::Disconnected(format!(
                "{}: the device reported an error while streaming",
                self.fd.path
            )));
        }
        let mut b = new_buffer(0);
        self.fd.ioctl("VIDIOC_DQBUF", VIDIOC_DQBUF, &mut b)?;
        let result = match self.buffers.get(b.index as usize) {
            Some(m) if b.flags & BUF_FLAG_ERROR == 0 => {
                let used = (b.bytesused as usize).min(m.len);
                // SAFETY: the driver handed this mapped buffer back to us with `used` bytes; we
                // read it before queueing it again.
                let bytes = unsafe { std::slice::from_raw_parts(m.ptr as *const u8, used) };
                self.format.convert(bytes, out)
            }
            Some(_) => Err(SourceError::Corrupt("the driver flagged the frame".into())),
            None => Err(SourceError::Corrupt(format!(
                "bad buffer index {}",
                b.index
            ))),
        };
        // Back to the driver at once: holding buffers starves capture (a known cause of
        // timeouts after hours).
        self.fd.ioctl("VIDIOC_QBUF", VIDIOC_QBUF, &mut b)?;
        result.map(|_| b.sequence)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut off: c_int = BUF_TYPE_VIDEO_CAPTURE as c_int;
        let _ = self.fd.ioctl_errno(VIDIOC_STREAMOFF, &mut off);
    }
}

fn new_buffer(index: u32) -> Buffer {
    let mut b: Buffer = zeroed();
    b.index = index;
    b.type_ = BUF_TYPE_VIDEO_CAPTURE;
    b.memory = MEMORY_MMAP;
    b
}

/// Asks for a frame rate; returns the rate the driver set, or `None` if it has no rate control.
fn set_rate(fd: &Fd, fps: f32) -> Option<f32> {
    let mut p: StreamParm = zeroed();
    p.type_ = BUF_TYPE_VIDEO_CAPTURE;
    fd.ioctl_errno(VIDIOC_G_PARM, &mut p).ok()?;
    // SAFETY: the capture member is the one a capture buffer type fills.
    if unsafe { p.parm.capture.capability } & CAP_TIMEPERFRAME == 0 {
        return None;
    }
    p.parm.capture = CaptureParm {
        timeperframe: Fract {
            numerator: 1000,
            denominator: (fps * 1000.0).round().max(1.0) as u32,
        },
        ..zeroed()
    };
    fd.ioctl_errno(VIDIOC_S_PARM, &mut p).ok()?;
    // SAFETY: as above.
    let t = unsafe { p.parm.capture.timeperframe };
    (t.numerator > 0).then(|| t.denominator as f32 / t.numerator as f32)
}

/// How many timeouts in a row mean the stream has stalled and is restarted.
const STALL_TIMEOUTS: u32 = 10;

/// A V4L2 camera as a frame source: mmap streaming, reopened after unplugs and stalls.
pub struct Camera {
    path: String,
    request: Request,
    stream: Option<Stream>,
    timeouts: u32,
    count: u64,
}

impl Camera {
    /// Opens and starts `path`. A camera that is missing or unplugged is not an error here: the
    /// live loop keeps retrying with backoff. Anything else (not a camera, busy, no format
    /// unet-edge decodes, permissions) is.
    pub fn open(path: &Path, request: Request) -> anyhow::Result<Camera> {
        let path = path.to_string_lossy().into_owned();
        let mut cam = Camera {
            path,
            request,
            stream: None,
            timeouts: 0,
            count: 0,
        };
        match cam.connect() {
            Ok(()) | Err(SourceError::Disconnected(_)) => Ok(cam),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }

    fn connect(&mut self) -> Result<(), SourceError> {
        let (stream, choice) = Stream::start(&self.path, &self.request)?;
        let f = stream.format;
        log::info!(
            "{}: {} {}x{} (asked {}x{}){}",
            self.path,
            choice.fourcc,
            f.width,
            f.height,
            choice.width,
            choice.height,
            match (self.request.fps, stream.fps) {
                (Some(_), Some(got)) => format!(", {got:.1} fps"),
                (Some(_), None) => ", no frame-rate control: running at the camera's rate".into(),
                _ => String::new(),
            }
        );
        if f.format == CamFormat::Mjpeg {
            log::info!(
                "MJPEG is lossy and decoded per frame; prefer GREY/Y16/YUYV if the camera has them"
            );
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// The stream format, once connected.
    pub fn format(&self) -> Option<StreamFormat> {
        self.stream.as_ref().map(|s| s.format)
    }
}

impl FrameSource for Camera {
    fn next_into(&mut self, out: &mut FrameBuf, timeout: Duration) -> Result<Next, SourceError> {
        if self.stream.is_none() {
            self.connect()?;
            self.timeouts = 0;
        }
        let stream = self.stream.as_mut().expect("connected above");
        match stream.next_into(out, timeout) {
            Ok(_) => {
                self.timeouts = 0;
                out.index = self.count;
                self.count += 1;
                Ok(Next::Frame)
            }
            Err(SourceError::Timeout) => {
                self.timeouts += 1;
                if self.timeouts >= STALL_TIMEOUTS {
                    self.stream = None;
                    return Err(SourceError::Disconnected(format!(
                        "{}: no frame for {} timeouts in a row; restarting the stream",
                        self.path, self.timeouts
                    )));
                }
                Err(SourceError::Timeout)
            }
            Err(e @ SourceError::Disconnected(_)) => {
                // Close everything; the next call reopens the node when it is back.
                self.stream = None;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn layouts_and_ioctl_numbers_match_the_kernel_header_on_64_bit() {
        assert_eq!(size_of::<Capability>(), 104);
        assert_eq!(size_of::<FmtDesc>(), 64);
        assert_eq!(size_of::<Format>(), 208);
        assert_eq!(size_of::<RequestBuffers>(), 20);
        assert_eq!(size_of::<Buffer>(), 88);
        assert_eq!(size_of::<StreamParm>(), 204);
        assert_eq!(size_of::<FrmSizeEnum>(), 44);
        assert_eq!(size_of::<FrmIvalEnum>(), 52);
        // Values printed by a C program including <linux/videodev2.h> on x86_64.
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_S_PARM, 0xc0cc_5616);
        assert_eq!(VIDIOC_ENUM_FRAMESIZES, 0xc02c_564a);
        assert_eq!(VIDIOC_ENUM_FRAMEINTERVALS, 0xc034_564b);
    }

    #[test]
    #[cfg(target_pointer_width = "32")]
    fn layouts_match_the_kernel_header_on_32_bit() {
        // 32-bit time_t and 4-byte pointers.
        assert_eq!(size_of::<Format>(), 204);
        assert_eq!(size_of::<Buffer>(), 68);
        assert_eq!(VIDIOC_DQBUF, 0xc044_5611);
    }

    #[test]
    fn a_file_that_is_not_a_camera_is_a_clear_fatal_error() {
        let e = Camera::open(Path::new("/dev/null"), Request::default())
            .err()
            .expect("/dev/null is no camera");
        assert!(e.to_string().contains("not a V4L2 video device"), "{e}");
    }

    #[test]
    fn a_missing_camera_is_retried_not_fatal() {
        let mut cam = Camera::open(
            Path::new("/dev/video-unet-edge-missing"),
            Request::default(),
        )
        .expect("missing cameras are waited for");
        let mut f = FrameBuf::default();
        match cam.next_into(&mut f, Duration::from_millis(10)) {
            Err(SourceError::Disconnected(m)) => assert!(m.contains("not found"), "{m}"),
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
}
