//! `--mqtt URL`: each frame's record to an MQTT broker, for a fleet of microscopes.
//!
//! The frame loop only copies its record into a bounded queue of strings allocated at start
//! ([`RecordQueue`]: when full, the oldest record is dropped and counted); a publisher thread
//! takes records from it and hands them to rumqttc, whose event loop runs on a third thread,
//! reconnecting with back-off. The publisher and event-loop threads allocate (payload copies,
//! rumqttc's packets); the frame loop does not. QoS 1: the broker acknowledges each record.
//!
//! Topics: `unet-edge/<device>/frames` (one record per processed frame, the JSON line's object),
//! `unet-edge/<device>/nuclei` (the per-nucleus table of each saved frame) and the retained
//! `unet-edge/<device>/status` (`online` with model, version and camera; `offline` as the last
//! will when the connection is lost, or on a clean exit).

use crate::io::metrics::LiveMetrics;
use anyhow::{bail, Context, Result};
use rumqttc::{Client, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// CA certificate (PEM) that signed the broker's certificate, for `mqtts://`.
    pub ca: Option<PathBuf>,
    /// User name, when the broker asks for one.
    pub user: Option<String>,
    /// Password (from the config file or the environment, never the command line).
    pub password: Option<String>,
    /// The `<device>` of the topics, and the client id's stem.
    pub device_id: String,
    /// Records held while the broker is slow or away; the oldest is dropped beyond this.
    pub queue: usize,
    /// Longest record expected, bytes: the queue's strings are allocated this large at start.
    pub record_bytes: usize,
}

/// A broker address from `--mqtt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Whether to speak TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port (1883, or 8883 for TLS, when the URL gives none).
    pub port: u16,
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<BrokerUrl, String> {
        let expected =
            "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. mqtt://192.168.1.10:1883";
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!("--mqtt {url:?}: {expected}"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '@', '?']) {
            return Err(format!(
                "--mqtt {url:?}: no path, query or user in the URL (give the user in the config \
                 file as mqtt-user); {expected}"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 address in brackets has colons of its own.
            Some((h, p)) if !p.contains(']') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("--mqtt {url:?}: port {p:?} is not 1-65535"))?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("--mqtt {url:?}: no host; {expected}"));
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Which topic a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `.../frames`.
    Frames,
    /// `.../nuclei`.
    Nuclei,
}

struct QueueState {
    items: VecDeque<(Topic, String)>,
    /// Strings not in use, handed back after publishing.
    free: Vec<String>,
    closed: bool,
}

/// The bounded, drop-oldest hand-over between the frame loop and the publisher; its strings are
/// allocated once, so pushing a record allocates nothing (unless a record outgrows them).
pub struct RecordQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    cap: usize,
    metrics: Arc<LiveMetrics>,
}

impl std::fmt::Debug for RecordQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordQueue")
            .field("cap", &self.cap)
            .finish()
    }
}

impl RecordQueue {
    /// A queue of `cap` records of up to `record_bytes` each, counting into `metrics`.
    pub fn new(cap: usize, record_bytes: usize, metrics: Arc<LiveMetrics>) -> RecordQueue {
        let cap = cap.max(1);
        RecordQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(cap),
                // One more than the queue holds: the publisher has one out at a time.
                free: (0..cap + 1)
                    .map(|_| String::with_capacity(record_bytes))
                    .collect(),
                closed: false,
            }),
            ready: Condvar::new(),
            cap,
            metrics,
        }
    }

    /// Queues a copy of `record` for `topic`, dropping the oldest record when the queue is full;
    /// never blocks on the network.
    pub fn push(&self, topic: Topic, record: &str) {
        let mut s = self.state.lock().expect("queue lock");
        let mut buf = if s.items.len() >= self.cap {
            self.metrics.mqtt_dropped.fetch_add(1, Relaxed);
            s.items.pop_front().map(|(_, b)| b)
        } else {
            s.free.pop()
        }
        .unwrap_or_default();
        buf.clear();
        buf.push_str(record);
        s.items.push_back((topic, buf));
        self.metrics
            .mqtt_queue_depth
            .store(s.items.len() as u64, Relaxed);
        self.ready.notify_one();
    }

    /// Takes the oldest record, waiting up to `wait`; `None` on timeout or once closed and empty.
    pub fn pop(&self, wait: Duration) -> Option<(Topic, String)> {
        let mut s = self.state.lock().expect("queue lock");
        if s.items.is_empty() && !s.closed {
            s = self.ready.wait_timeout(s, wait).expect("queue lock").0;
        }
        let item = s.items.pop_front();
        self.metrics
            .mqtt_queue_depth
            .store(s.items.len() as u64, Relaxed);
        item
    }

    /// Hands a string back for reuse.
    pub fn recycle(&self, buf: String) {
        self.state.lock().expect("queue lock").free.push(buf);
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").items.len()
    }

    /// True when no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the queue: `pop` returns what is left, then `None`.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.ready.notify_all();
    }

    /// Whether [`RecordQueue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("queue lock").closed
    }
}

/// What the retained status message says about this device.
#[derive(Clone, Debug)]
pub struct StatusInfo {
    /// The model's name (file or `embedded`).
    pub model: String,
    /// The camera or input.
    pub camera: String,
}

/// The running publisher: its queue, and the threads behind it.
pub struct Publisher {
    queue: Arc<RecordQueue>,
    client: Client,
    status_topic: String,
    offline: String,
    closing: Arc<AtomicBool>,
    /// Set by the publisher thread once the closed queue is empty.
    drained: Arc<AtomicBool>,
    /// Records handed to rumqttc; the broker has them all once `mqtt_published` reaches it.
    handed: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<LiveMetrics>,
}

/// The three topics of a device.
pub fn topics(device_id: &str) -> [String; 3] {
    ["frames", "nuclei", "status"].map(|t| format!("unet-edge/{device_id}/{t}"))
}

fn status_json(state: &str, device: &str, info: &StatusInfo) -> String {
    let mut s = String::new();
    s.push_str("{\"state\":");
    crate::io::record::json_string(&mut s, state);
    s.push_str(",\"device\":");
    crate::io::record::json_string(&mut s, device);
    s.push_str(",\"version\":");
    crate::io::record::json_string(&mut s, env!("CARGO_PKG_VERSION"));
    s.push_str(",\"model\":");
    crate::io::record::json_string(&mut s, &info.model);
    s.push_str(",\"camera\":");
    crate::io::record::json_string(&mut s, &info.camera);
    s.push('}');
    s
}

/// A TLS client configuration that trusts only the CA in `ca` (PEM).
fn tls_config(ca: &std::path::Path) -> Result<rumqttc::TlsConfiguration> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("--mqtt-ca {}: cannot read it", ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("--mqtt-ca {}: not a PEM certificate file", ca.display()))?;
    if certs.is_empty() {
        bail!(
            "--mqtt-ca {}: no certificate in it (expected PEM)",
            ca.display()
        );
    }
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("--mqtt-ca {}: a certificate rustls refuses", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

impl Publisher {
    /// Connects in the background (a missing broker is retried, not an error) and starts the
    /// publisher; errors are only for a bad configuration.
    pub fn start(
        cfg: &MqttConfig,
        info: &StatusInfo,
        metrics: Arc<LiveMetrics>,
    ) -> Result<Publisher> {
        let url: BrokerUrl = cfg.url.parse().map_err(anyhow::Error::msg)?;
        if cfg.device_id.is_empty() || cfg.device_id.contains(['/', '+', '#']) {
            bail!(
                "--device-id {:?}: must be non-empty, without / + or # (it is one MQTT topic level)",
                cfg.device_id
            );
        }
        let mut opts = MqttOptions::new(
            format!("unet-edge-{}-{}", cfg.device_id, std::process::id()),
            url.host.clone(),
            url.port,
        );
        opts.set_keep_alive(Duration::from_secs(15));
        opts.set_request_channel_capacity(16);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let [frames, nuclei, status] = topics(&cfg.device_id);
        let offline = status_json("offline", &cfg.device_id, info);
        opts.set_last_will(LastWill::new(
            &status,
            offline.clone(),
            QoS::AtLeastOnce,
            true,
        ));
        match (&cfg.user, &cfg.password) {
            (Some(u), p) => {
                opts.set_credentials(u.clone(), p.clone().unwrap_or_default());
            }
            (None, Some(_)) => bail!("an MQTT password was given without mqtt-user"),
            (None, None) => {}
        }
        if url.tls {
            let ca = cfg.ca.as_deref().with_context(|| {
                format!("--mqtt {}: mqtts:// needs --mqtt-ca FILE (the CA that signed the broker's certificate, PEM)", cfg.url)
            })?;
            opts.set_transport(Transport::tls_with_config(tls_config(ca)?));
        } else if cfg.ca.is_some() {
            bail!(
                "--mqtt-ca is for mqtts:// brokers; --mqtt {} is plain TCP",
                cfg.url
            );
        }
        let (client, mut connection) = Client::new(opts, 16);
        let queue = Arc::new(RecordQueue::new(
            cfg.queue,
            cfg.record_bytes,
            metrics.clone(),
        ));
        let closing = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(AtomicBool::new(false));
        let handed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let online = status_json("online", &cfg.device_id, info);
        let where_ = format!("{}:{}", url.host, url.port);

        let status_due = Arc::new(AtomicBool::new(false));
        let (m, cl, due) = (metrics.clone(), closing.clone(), status_due.clone());
        std::thread::Builder::new()
            .name("mqtt-conn".into())
            .spawn(move || {
                let mut backoff = Duration::from_millis(250);
                let mut ever = false;
                let mut down_since: Option<Instant> = None;
                while let Ok(event) = connection.recv() {
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            m.mqtt_connected.store(1, Relaxed);
                            if ever {
                                m.mqtt_reconnects.fetch_add(1, Relaxed);
                            }
                            if let Some(t) = down_since.take() {
                                log::info!("MQTT broker {where_} back after {:.0} s", t.elapsed().as_secs_f32());
                            }
                            ever = true;
                            backoff = Duration::from_millis(250);
                            // The publisher thread sends it: this thread drives the event loop and
                            // must not block on a request channel full of queued records.
                            due.store(true, Relaxed);
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            m.mqtt_published.fetch_add(1, Relaxed);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) if cl.load(Relaxed) => break,
                        Ok(_) => {}
                        Err(e) => {
                            if cl.load(Relaxed) {
                                break;
                            }
                            m.mqtt_connected.store(0, Relaxed);
                            if down_since.is_none() {
                                let why = match &e {
                                    rumqttc::ConnectionError::ConnectionRefused(code) => format!(
                                        "the broker refused the connection ({code:?}: check mqtt-user and the password)"
                                    ),
                                    e => e.to_string(),
                                };
                                log::warn!("MQTT broker {where_}: {why}; records queue (oldest dropped when full) while retrying");
                                down_since = Some(Instant::now());
                            }
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                m.mqtt_connected.store(0, Relaxed);
            })
            .context("starting the MQTT thread")?;

        let (q, c, d, h) = (
            queue.clone(),
            client.clone(),
            drained.clone(),
            handed.clone(),
        );
        let st = status.clone();
        std::thread::Builder::new()
            .name("mqtt-publish".into())
            .spawn(move || {
                loop {
                    // QoS 0, so every PubAck counted is a record's; a status lost with its
                    // connection is sent again after the next ConnAck, and the will covers the rest.
                    if status_due.swap(false, Relaxed)
                        && c.publish(st.as_str(), QoS::AtMostOnce, true, online.clone())
                            .is_err()
                    {
                        break;
                    }
                    let Some((topic, rec)) = q.pop(Duration::from_millis(200)) else {
                        if q.is_closed() && q.is_empty() {
                            break;
                        }
                        continue;
                    };
                    let name = match topic {
                        Topic::Frames => &frames,
                        Topic::Nuclei => &nuclei,
                    };
                    // The one copy per record, on this thread: rumqttc owns its payloads.
                    let payload = rec.as_bytes().to_vec();
                    q.recycle(rec);
                    if c.publish(name.as_str(), QoS::AtLeastOnce, false, payload)
                        .is_err()
                    {
                        break;
                    }
                    h.fetch_add(1, Relaxed);
                }
                d.store(true, Relaxed);
            })
            .context("starting the MQTT publisher thread")?;
        Ok(Publisher {
            queue,
            client,
            status_topic: status,
            offline,
            closing,
            drained,
            handed,
            metrics,
        })
    }

    /// The queue the frame loop pushes records into.
    pub fn queue(&self) -> Arc<RecordQueue> {
        self.queue.clone()
    }

    /// Publishes what is queued (waiting up to `wait` for a slow or absent broker), then the
    /// retained `offline` status, and disconnects.
    pub fn finish(self, wait: Duration) {
        self.queue.close();
        let deadline = Instant::now() + wait;
        let all_acked = || {
            self.drained.load(Relaxed)
                && self.metrics.mqtt_published.load(Relaxed) >= self.handed.load(Relaxed)
        };
        while !all_acked() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !all_acked() {
            let unacked = self.handed.load(Relaxed) - self.metrics.mqtt_published.load(Relaxed);
            log::warn!(
                "MQTT: {} records not acknowledged by the broker at exit ({} still queued)",
                unacked + self.queue.len() as u64,
                self.queue.len()
            );
        }
        self.closing.store(true, Relaxed);
        let _ = self
            .client
            .try_publish(&self.status_topic, QoS::AtMostOnce, true, self.offline);
        let _ = self.client.try_disconnect();
        // Give the event loop a moment to send the status and the DISCONNECT.
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_say_what_is_accepted() {
        let u: BrokerUrl = "mqtt://broker.lab:1884".parse().unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.lab", 1884)
        );
        let u: BrokerUrl = "mqtts://10.0.0.2".parse().unwrap();
        assert_eq!((u.tls, u.port), (true, 8883));
        assert_eq!("mqtt://host/".parse::<BrokerUrl>().unwrap().port, 1883);
        let u: BrokerUrl = "mqtt://[::1]:1883".parse().unwrap();
        assert_eq!(u.host, "::1");
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
            "mqtt://h/topic",
        ] {
            let e = bad.parse::<BrokerUrl>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let m = Arc::new(LiveMetrics::default());
        let q = RecordQueue::new(3, 64, m.clone());
        for i in 0..5 {
            q.push(Topic::Frames, &format!("r{i}"));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(m.mqtt_dropped.load(Relaxed), 2);
        assert_eq!(m.mqtt_queue_depth.load(Relaxed), 3);
        let got: Vec<String> =
            std::iter::from_fn(|| q.pop(Duration::ZERO).map(|(_, s)| s)).collect();
        assert_eq!(got, ["r2", "r3", "r4"]);
        assert_eq!(m.mqtt_queue_depth.load(Relaxed), 0);
    }

    #[test]
    fn pushing_reuses_the_preallocated_strings() {
        let q = RecordQueue::new(2, 128, Arc::new(LiveMetrics::default()));
        let ptrs = |q: &RecordQueue| -> Vec<usize> {
            let s = q.state.lock().unwrap();
            let mut v: Vec<usize> = s
                .free
                .iter()
                .map(|b| b.as_ptr() as usize)
                .chain(s.items.iter().map(|(_, b)| b.as_ptr() as usize))
                .collect();
            v.sort();
            v
        };
        let before = ptrs(&q);
        for i in 0..50 {
            q.push(Topic::Frames, &"x".repeat(100 + i % 20));
            if i % 3 == 0 {
                let (_, s) = q.pop(Duration::ZERO).unwrap();
                q.recycle(s);
            }
        }
        while let Some((_, s)) = q.pop(Duration::ZERO) {
            q.recycle(s);
        }
        assert_eq!(ptrs(&q), before, "a record got a new allocation");
    }

    #[test]
    fn bad_configurations_are_named() {
        let m = Arc::new(LiveMetrics::default());
        let info = StatusInfo {
            model: "m".into(),
            camera: "c".into(),
        };
        let cfg = |url: &str, device: &str| MqttConfig {
            url: url.into(),
            ca: None,
            user: None,
            password: None,
            device_id: device.into(),
            queue: 4,
            record_bytes: 64,
        };
        let err = |c: MqttConfig| {
            format!(
                "{:#}",
                Publisher::start(&c, &info, m.clone()).err().unwrap()
            )
        };
        assert!(err(cfg("mqtts://h", "d")).contains("--mqtt-ca"));
        assert!(err(cfg("mqtt://h", "a/b")).contains("--device-id"));
        let mut c = cfg("mqtts://h", "d");
        c.ca = Some("/nonexistent/ca.pem".into());
        assert!(err(c).contains("/nonexistent/ca.pem"));
    }
}
