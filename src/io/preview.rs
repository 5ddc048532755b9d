//! `--preview ADDR:PORT`: the latest overlay over HTTP, as an MJPEG stream (`/stream`, what a
//! browser or VLC shows live) and a single JPEG (`/snapshot.jpg`). The inference thread only
//! copies the overlay into a buffer reused from frame to frame; JPEG encoding happens on the
//! client threads, so a watcher costs the frame loop nothing but that copy.

use crate::io::metrics::{Health, LiveMetrics};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most simultaneous HTTP clients; more get 503 (a board has little CPU to spare for JPEG).
pub const MAX_CLIENTS: usize = 4;

#[derive(Default)]
struct Latest {
    rgb: Vec<u8>,
    width: usize,
    height: usize,
    generation: u64,
}

struct Shared {
    latest: Mutex<Latest>,
    fresh: Condvar,
    clients: AtomicUsize,
    metrics: Arc<LiveMetrics>,
}

/// One of the [`MAX_CLIENTS`] client slots, given back when dropped: whether the client's thread
/// ends or never starts.
struct ClientSlot(Arc<Shared>);

impl ClientSlot {
    fn take(shared: &Arc<Shared>) -> Option<ClientSlot> {
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ClientSlot(shared.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The running server; the frame loop publishes into it.
#[derive(Clone)]
pub struct Preview {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Preview({})", self.addr)
    }
}

/// Resolves `--preview`: a bare port binds to 127.0.0.1; any other address must be written out.
pub fn parse_addr(spec: &str) -> Result<SocketAddr> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    spec.to_socket_addrs()
        .with_context(|| {
            format!("bad --preview {spec:?}: expected PORT (on 127.0.0.1) or ADDR:PORT, e.g. 0.0.0.0:8080")
        })?
        .next()
        .with_context(|| format!("--preview {spec:?} resolves to no address"))
}

impl Preview {
    /// Binds and starts serving; `/metrics` and `/healthz` report `metrics`.
    pub fn start(addr: SocketAddr, metrics: Arc<LiveMetrics>) -> Result<Preview> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("--preview: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest::default()),
            fresh: Condvar::new(),
            clients: AtomicUsize::new(0),
            metrics,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("preview".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let Some(slot) = ClientSlot::take(&s) else {
                        let _ = refuse(conn);
                        continue;
                    };
                    let spawned = std::thread::Builder::new()
                        .name("preview-client".into())
                        .spawn(move || {
                            let _ = serve(conn, &slot.0);
                        });
                    if spawned.is_err() {
                        // The closure was dropped unrun, and its slot with it.
                        log::warn!("preview: cannot start a client thread");
                    }
                }
            })
            .context("starting the preview thread")?;
        if !addr.ip().is_loopback() {
            log::warn!(
                "the preview on {addr} is reachable from the network, without authentication"
            );
        }
        Ok(Preview { shared, addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes a frame's overlay (normalized input with mask outlines); allocation-free once
    /// the frame size is known.
    pub fn publish(&self, normalized: &[f32], mask: &[u8], width: usize, height: usize) {
        let mut l = self.shared.latest.lock().expect("preview lock");
        l.rgb.resize(width * height * 3, 0);
        crate::io::imageio::overlay_into(normalized, mask, width, height, &mut l.rgb);
        l.width = width;
        l.height = height;
        l.generation += 1;
        self.shared.fresh.notify_all();
    }
}

fn refuse(mut conn: TcpStream) -> std::io::Result<()> {
    conn.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\ntoo many preview clients\n")
}

/// Waits for a frame newer than `seen` (up to `wait`) and encodes it.
fn next_jpeg(s: &Shared, seen: u64, wait: Duration, rgb: &mut Vec<u8>) -> Option<(u64, Vec<u8>)> {
    let (gen, w, h) = {
        let mut l = s.latest.lock().ok()?;
        if l.generation == seen {
            l = s.fresh.wait_timeout(l, wait).ok()?.0;
        }
        if l.generation == seen || l.generation == 0 {
            return None;
        }
        rgb.clear();
        rgb.extend_from_slice(&l.rgb);
        (l.generation, l.width, l.height)
    };
    let mut jpeg = Vec::with_capacity(rgb.len() / 8);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .ok()?;
    Some((gen, jpeg))
}

/// Most bytes of a request line plus headers; more is answered 431 and the connection closed.
pub const MAX_REQUEST_BYTES: u64 = 8192;
/// Time a client has to send its whole request, however it drips it.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Reads from the connection until a fixed instant: each read waits at most the time left, so a
/// client that sends a byte now and then cannot stretch one request past the deadline.
struct Deadline<'a> {
    conn: &'a TcpStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.conn.set_read_timeout(Some(left))?;
        (&mut &*self.conn).read(buf)
    }
}

/// Time a `/stream` client has to take one whole frame: a reader that stalls, or drains a few
/// bytes now and then, is dropped when a frame is not through by then, and its slot comes back.
const FRAME_WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Writes to the connection until a fixed instant (the writing twin of [`Deadline`]): each write
/// waits at most the time left, so a slow reader cannot stretch one frame past the deadline.
struct WriteDeadline<'a> {
    conn: &'a TcpStream,
    until: Instant,
}

impl Write for WriteDeadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.conn.set_write_timeout(Some(left))?;
        (&mut &*self.conn).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&mut &*self.conn).flush()
    }
}

/// The path of a request (query string dropped), reading at most [`MAX_REQUEST_BYTES`] within
/// [`REQUEST_DEADLINE`]; `None` when the request is too large (the caller answers 431).
fn read_request(conn: &TcpStream) -> std::io::Result<Option<String>> {
    parse_request(Deadline {
        conn,
        until: Instant::now() + REQUEST_DEADLINE,
    })
}

/// Reads one request head from `r` (at most [`MAX_REQUEST_BYTES`]): the target's path without
/// query or fragment, `None` when the head is too large, an error when it ends early.
pub fn parse_request(r: impl Read) -> std::io::Result<Option<String>> {
    let mut reader = BufReader::new(r.take(MAX_REQUEST_BYTES));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    if !request.ends_with('\n') {
        return if reader.get_ref().limit() == 0 {
            Ok(None)
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        };
    }
    // Drain the headers; nothing in them changes the answer.
    let mut header = String::new();
    loop {
        header.clear();
        let n = reader.read_line(&mut header)?;
        if !header.ends_with('\n') {
            return if reader.get_ref().limit() == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if n <= 2 {
            break;
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    Ok(Some(
        target.split(['?', '#']).next().unwrap_or("/").to_string(),
    ))
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let Some(path) = read_request(&conn)? else {
        let mut conn = conn;
        conn.write_all(
            b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nrequest larger than 8 KB\n",
        )?;
        // Lingering close: closing with unread input would reset the connection and could
        // destroy the answer before the client reads it. Drain a bounded amount for a moment.
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut drain = Deadline {
            conn: &conn,
            until: Instant::now() + Duration::from_secs(1),
        }
        .take(1 << 20);
        let _ = std::io::copy(&mut drain, &mut std::io::sink());
        return Ok(());
    };
    let mut conn = conn;
    let path = path.as_str();
    let mut rgb = Vec::new();
    match path {
        "/" | "/index.html" => {
            let body = "<!doctype html><title>unet-edge</title><body style=\"background:#111;color:#ddd;font-family:sans-serif\"><p>unet-edge live overlay (nuclei outlined in yellow) &middot; <a href=\"/snapshot.jpg\">snapshot</a></p><img src=\"/stream\" style=\"max-width:100%\"></body>";
            write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        "/snapshot.jpg" => match next_jpeg(s, 0, Duration::from_secs(5), &mut rgb) {
            Some((_, jpeg)) => {
                write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
                    jpeg.len()
                )?;
                conn.write_all(&jpeg)
            }
            None => conn.write_all(
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nno frame processed yet\n",
            ),
        },
        "/stream" => {
            conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=unetedgeframe\r\nCache-Control: no-store\r\n\r\n")?;
            let mut seen = 0;
            loop {
                let Some((gen, jpeg)) = next_jpeg(s, seen, Duration::from_secs(2), &mut rgb) else {
                    continue;
                };
                seen = gen;
                let mut w = WriteDeadline {
                    conn: &conn,
                    until: Instant::now() + FRAME_WRITE_DEADLINE,
                };
                write!(
                    w,
                    "--unetedgeframe\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    jpeg.len()
                )?;
                w.write_all(&jpeg)?;
                w.write_all(b"\r\n")?;
                w.flush()?;
            }
        }
        "/metrics" => {
            let body = s.metrics.render();
            write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n{body}",
                body.len()
            )
        }
        "/healthz" => {
            let (status, body) = match s.metrics.health() {
                Health::Ok => ("200 OK", "ok\n".to_string()),
                Health::Stale(idle) => (
                    "503 Service Unavailable",
                    format!("no frame processed for {:.0} s\n", idle.as_secs_f64()),
                ),
            };
            write!(
                conn,
                "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n{body}",
                body.len()
            )
        }
        _ => conn.write_all(
            b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\ntry / (page), /stream (MJPEG), /snapshot.jpg, /metrics (Prometheus) or /healthz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_dripped_requests_are_cut_off_and_queries_ignored() {
        // Regression: a request line without a newline was buffered without limit, and a client
        // dripping a byte every few seconds held its slot for as long as it liked.
        let p = Preview::start(parse_addr("0").unwrap(), Default::default()).unwrap();
        let addr = p.addr();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let junk = vec![b'a'; 9000];
        let _ = c.write_all(b"GET /");
        let _ = c.write_all(&junk);
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        assert!(
            reply.starts_with(b"HTTP/1.0 431"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );

        let t0 = Instant::now();
        let mut d = TcpStream::connect(addr).unwrap();
        d.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        d.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut closed = false;
        while t0.elapsed() < Duration::from_secs(9) {
            if d.write_all(b"X").is_err() {
                closed = true;
                break;
            }
            let mut b = [0u8; 64];
            if matches!(d.read(&mut b), Ok(0)) {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(
            closed,
            "a dripping client is dropped at the request deadline"
        );
        assert!(t0.elapsed() >= REQUEST_DEADLINE - Duration::from_millis(500));

        p.publish(&[0.5; 16 * 8], &[0; 16 * 8], 16, 8);
        assert!(get(addr, "/snapshot.jpg?x=1", 1 << 20).starts_with(b"HTTP/1.0 200"));
    }

    #[test]
    fn a_stream_reader_that_stalls_is_dropped_and_its_slot_comes_back() {
        // Regression: MAX_CLIENTS viewers that opened /stream and never read held every slot
        // (others got 503) for as long as they stayed connected.
        let p = Preview::start(parse_addr("0").unwrap(), Default::default()).unwrap();
        let addr = p.addr();
        let stalled: Vec<TcpStream> = (0..MAX_CLIENTS)
            .map(|_| {
                let c = TcpStream::connect(addr).unwrap();
                // A small receive buffer fills after a frame or two.
                (&c).write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
                c
            })
            .collect();
        // Frames big enough to fill the socket buffers: noise compresses badly.
        let (w, h) = (640, 480);
        let mut rng = crate::rng::Rng::new(3);
        let frames: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..w * h).map(|_| rng.uniform()).collect())
            .collect();
        let mask = vec![0u8; w * h];
        let t0 = Instant::now();
        let mut served = false;
        let mut i = 0;
        while t0.elapsed() < Duration::from_secs(30) {
            p.publish(&frames[i % frames.len()], &mask, w, h);
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
            if t0.elapsed() > Duration::from_secs(2) && i % 10 == 0 {
                // A full house answers 503 and closes at once, maybe before the request is sent.
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = c.write_all(b"GET /snapshot.jpg HTTP/1.1\r\n\r\n");
                let mut reply = [0u8; 12];
                let _ = c.read_exact(&mut reply);
                if reply.starts_with(b"HTTP/1.0 200") {
                    served = true;
                    break;
                }
            }
        }
        assert!(
            served,
            "the stalled readers still hold every slot after 30 s"
        );
        assert!(
            t0.elapsed() >= FRAME_WRITE_DEADLINE - Duration::from_millis(500),
            "slots came back before any deadline: the test did not stall them"
        );
        drop(stalled);
    }

    #[test]
    fn client_slots_come_back_when_dropped_even_unused() {
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest::default()),
            fresh: Condvar::new(),
            clients: AtomicUsize::new(0),
            metrics: Default::default(),
        });
        let mut slots: Vec<ClientSlot> = (0..MAX_CLIENTS)
            .map(|_| ClientSlot::take(&shared).expect("a free slot"))
            .collect();
        assert!(ClientSlot::take(&shared).is_none(), "all slots taken");
        // A client thread that never starts drops its closure, and the slot in it.
        let closure = {
            let slot = slots.pop().unwrap();
            move || drop(slot)
        };
        drop(closure);
        let again = ClientSlot::take(&shared);
        assert!(again.is_some(), "the slot came back");
        assert_eq!(shared.clients.load(Ordering::SeqCst), MAX_CLIENTS);
        drop((slots, again));
        assert_eq!(shared.clients.load(Ordering::SeqCst), 0);
    }
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str, max: usize) -> Vec<u8> {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = vec![0u8; max];
        let mut n = 0;
        while n < max {
            match c.read(&mut out[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        out.truncate(n);
        out
    }

    #[test]
    fn bare_port_binds_loopback_and_explicit_addresses_are_kept() {
        assert_eq!(
            parse_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:81").unwrap(),
            "0.0.0.0:81".parse().unwrap()
        );
        assert!(parse_addr("nonsense").is_err());
    }

    #[test]
    fn serves_snapshot_stream_page_and_404() {
        let p = Preview::start(parse_addr("0").unwrap(), Default::default()).unwrap();
        let addr = p.addr();
        assert!(get(addr, "/snapshot.jpg", 4096).starts_with(b"HTTP/1.0 503"));
        let mut mask = vec![0u8; 32 * 16];
        mask[5 * 32 + 5] = 1;
        p.publish(&vec![0.5; 32 * 16], &mask, 32, 16);
        let snap = get(addr, "/snapshot.jpg", 1 << 20);
        let head_end = snap.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(snap.starts_with(b"HTTP/1.0 200"));
        let img = image::load_from_memory(&snap[head_end..]).unwrap();
        assert_eq!((img.width(), img.height()), (32, 16));
        // The stream sends the current frame at once, then each new one.
        let publisher = {
            let p = p.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(50));
                    p.publish(&vec![0.2; 32 * 16], &vec![0; 32 * 16], 32, 16);
                }
            })
        };
        let stream = get(addr, "/stream", 3000);
        publisher.join().unwrap();
        let text = String::from_utf8_lossy(&stream);
        assert!(text.contains("multipart/x-mixed-replace"));
        assert!(text.matches("--unetedgeframe").count() >= 1, "{text}");
        assert!(String::from_utf8_lossy(&get(addr, "/", 4096)).contains("<img src=\"/stream\""));
        assert!(get(addr, "/nope", 4096).starts_with(b"HTTP/1.0 404"));
    }
}
