//! The live loop's counters, gauges and latency histograms, shared by the frame loop (which
//! only does atomic adds: nothing allocates per frame), the capture thread, the MQTT publisher
//! and the preview server, which renders them as Prometheus text on `/metrics` and answers
//! `/healthz`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the per-tile latency histogram: 1 ms (a fast desktop) to 1 s (an
/// old board on a large model).
pub const TILE_BOUNDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
/// Upper bounds (seconds) of the per-frame latency histogram.
pub const FRAME_BOUNDS: [f64; 10] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A fixed-bucket histogram updated with atomics; sums kept in microseconds.
pub struct Histogram {
    bounds: &'static [f64; 10],
    /// Observations at or below each bound (not cumulative; `render` accumulates).
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64; 10]) -> Histogram {
        Histogram {
            bounds,
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records `n` observations of `secs` each.
    pub fn observe_n(&self, secs: f64, n: u64) {
        if n == 0 || !secs.is_finite() || secs < 0.0 {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(n, Relaxed);
        }
        self.count.fetch_add(n, Relaxed);
        self.sum_us
            .fetch_add((secs * 1e6).round() as u64 * n, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            acc += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything `/metrics` reports about a live run.
pub struct LiveMetrics {
    started: Instant,
    /// Frames segmented.
    pub processed: AtomicU64,
    /// Frames replaced by a newer one before inference took them.
    pub dropped: AtomicU64,
    /// Frames the source delivered damaged.
    pub corrupt: AtomicU64,
    /// Times the camera went away and was retried.
    pub reconnects: AtomicU64,
    /// Output files or records that could not be written.
    pub write_errors: AtomicU64,
    nuclei: AtomicU64,
    nuclei_total: AtomicU64,
    /// Milliseconds after `started` of the last processed frame, plus one (0: none yet).
    last_frame_ms: AtomicU64,
    /// Model time per tile.
    pub tile_latency: Histogram,
    /// Whole-frame processing time.
    pub frame_latency: Histogram,
    /// Records waiting in the MQTT queue.
    pub mqtt_queue_depth: AtomicU64,
    /// Records dropped from a full MQTT queue (oldest first).
    pub mqtt_dropped: AtomicU64,
    /// Records the broker acknowledged (QoS 1 PUBACK) or took.
    pub mqtt_published: AtomicU64,
    /// 1 while connected to the broker.
    pub mqtt_connected: AtomicU64,
    /// MQTT connections made after the first.
    pub mqtt_reconnects: AtomicU64,
    stale_after: Duration,
}

impl std::fmt::Debug for LiveMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveMetrics({} frames)", self.processed.load(Relaxed))
    }
}

impl Default for LiveMetrics {
    /// Counters with the default `--health-timeout` of 30 s.
    fn default() -> Self {
        LiveMetrics::new(Duration::from_secs(30))
    }
}

/// The answer of `/healthz`.
#[derive(Debug, PartialEq)]
pub enum Health {
    /// A frame was processed within the timeout.
    Ok,
    /// No frame for this long (or since start).
    Stale(Duration),
}

impl LiveMetrics {
    /// Fresh counters; `/healthz` fails once no frame was processed for `stale_after`.
    pub fn new(stale_after: Duration) -> LiveMetrics {
        LiveMetrics {
            started: Instant::now(),
            processed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            nuclei: AtomicU64::new(0),
            nuclei_total: AtomicU64::new(0),
            last_frame_ms: AtomicU64::new(0),
            tile_latency: Histogram::new(&TILE_BOUNDS),
            frame_latency: Histogram::new(&FRAME_BOUNDS),
            mqtt_queue_depth: AtomicU64::new(0),
            mqtt_dropped: AtomicU64::new(0),
            mqtt_published: AtomicU64::new(0),
            mqtt_connected: AtomicU64::new(0),
            mqtt_reconnects: AtomicU64::new(0),
            stale_after,
        }
    }

    /// Records one processed frame: its tiles and their mean time, its wall time, its nuclei.
    pub fn frame(&self, tiles: usize, ms_per_tile: f32, frame_ms: f32, nuclei: usize) {
        self.processed.fetch_add(1, Relaxed);
        self.tile_latency
            .observe_n(ms_per_tile as f64 / 1e3, tiles as u64);
        self.frame_latency.observe_n(frame_ms as f64 / 1e3, 1);
        self.nuclei.store(nuclei as u64, Relaxed);
        self.nuclei_total.fetch_add(nuclei as u64, Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_frame_ms.store(ms + 1, Relaxed);
    }

    /// Time since the last processed frame, or since start when there was none.
    pub fn since_last_frame(&self) -> Duration {
        let now = self.started.elapsed();
        match self.last_frame_ms.load(Relaxed) {
            0 => now,
            ms => now.saturating_sub(Duration::from_millis(ms - 1)),
        }
    }

    /// Whether the loop is processing frames.
    pub fn health(&self) -> Health {
        let idle = self.since_last_frame();
        if idle > self.stale_after {
            Health::Stale(idle)
        } else {
            Health::Ok
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "unet_edge_frames_processed_total",
            "Frames segmented.",
            &self.processed,
        );
        counter(
            &mut o,
            "unet_edge_frames_dropped_total",
            "Frames replaced by a newer one before inference took them.",
            &self.dropped,
        );
        counter(
            &mut o,
            "unet_edge_frames_corrupt_total",
            "Damaged frames skipped.",
            &self.corrupt,
        );
        counter(
            &mut o,
            "unet_edge_camera_reconnects_total",
            "Times the camera went away and was retried.",
            &self.reconnects,
        );
        counter(
            &mut o,
            "unet_edge_write_errors_total",
            "Results that could not be written.",
            &self.write_errors,
        );
        gauge(
            &mut o,
            "unet_edge_nuclei",
            "Nuclei in the last processed frame.",
            self.nuclei.load(Relaxed) as f64,
        );
        counter(
            &mut o,
            "unet_edge_nuclei_total",
            "Nuclei counted over all processed frames.",
            &self.nuclei_total,
        );
        gauge(
            &mut o,
            "unet_edge_seconds_since_last_frame",
            "Seconds since the last processed frame (since start before the first).",
            self.since_last_frame().as_secs_f64(),
        );
        self.tile_latency.render(
            &mut o,
            "unet_edge_tile_latency_seconds",
            "Model time per tile.",
        );
        self.frame_latency.render(
            &mut o,
            "unet_edge_frame_latency_seconds",
            "Processing time per frame (normalize, tiles, stitch, mask, nuclei).",
        );
        gauge(
            &mut o,
            "unet_edge_mqtt_queue_depth",
            "Records waiting to be published.",
            self.mqtt_queue_depth.load(Relaxed) as f64,
        );
        counter(
            &mut o,
            "unet_edge_mqtt_dropped_total",
            "Records dropped, oldest first, because the MQTT queue was full.",
            &self.mqtt_dropped,
        );
        counter(
            &mut o,
            "unet_edge_mqtt_published_total",
            "Records handed to the broker.",
            &self.mqtt_published,
        );
        gauge(
            &mut o,
            "unet_edge_mqtt_connected",
            "1 while connected to the MQTT broker.",
            self.mqtt_connected.load(Relaxed) as f64,
        );
        counter(
            &mut o,
            "unet_edge_mqtt_reconnects_total",
            "Connections to the broker after the first.",
            &self.mqtt_reconnects,
        );
        gauge(
            &mut o,
            "unet_edge_uptime_seconds",
            "Seconds since the live loop started.",
            self.started.elapsed().as_secs_f64(),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    #[test]
    fn render_is_valid_prometheus_text_with_every_metric() {
        let m = LiveMetrics::new(Duration::from_secs(30));
        m.frame(16, 18.0, 320.0, 41);
        m.frame(16, 3.0, 60.0, 39);
        m.dropped.fetch_add(2, Relaxed);
        m.mqtt_dropped.fetch_add(5, Relaxed);
        let scrape = parse(&m.render());
        let values: HashMap<String, &prometheus_parse::Value> = scrape
            .samples
            .iter()
            .map(|s| (s.metric.clone(), &s.value))
            .collect();
        let num = |name: &str| match values[name] {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(num("unet_edge_frames_processed_total"), 2.0);
        assert_eq!(num("unet_edge_frames_dropped_total"), 2.0);
        assert_eq!(num("unet_edge_nuclei"), 39.0);
        assert_eq!(num("unet_edge_nuclei_total"), 80.0);
        assert_eq!(num("unet_edge_mqtt_dropped_total"), 5.0);
        assert!(num("unet_edge_seconds_since_last_frame") < 5.0);
        let prometheus_parse::Value::Histogram(tiles) = values["unet_edge_tile_latency_seconds"]
        else {
            panic!("tile latency is not a histogram")
        };
        let at = |le: f64| tiles.iter().find(|b| b.less_than == le).unwrap().count;
        // 16 tiles at 3 ms fall in the 5 ms bucket, 16 at 18 ms in the 20 ms one.
        assert_eq!(
            (at(0.002), at(0.005), at(0.01), at(0.02)),
            (0.0, 16.0, 16.0, 32.0)
        );
        assert_eq!(at(f64::INFINITY), 32.0);
        assert!((num("unet_edge_tile_latency_seconds_sum") - 16.0 * 0.021).abs() < 1e-9);
        assert_eq!(num("unet_edge_frame_latency_seconds_count"), 2.0);
        assert_eq!(m.tile_latency.count(), 32);
        assert_eq!(m.frame_latency.count(), 2);
    }

    #[test]
    fn health_fails_after_the_timeout_and_recovers_with_a_frame() {
        let m = LiveMetrics::new(Duration::from_millis(50));
        assert_eq!(m.health(), Health::Ok);
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(m.health(), Health::Stale(d) if d >= Duration::from_millis(50)));
        m.frame(1, 1.0, 1.0, 0);
        assert_eq!(m.health(), Health::Ok);
    }

    #[test]
    fn bad_observations_are_ignored_and_large_ones_only_reach_inf() {
        let m = LiveMetrics::new(Duration::from_secs(1));
        m.tile_latency.observe_n(f64::NAN, 3);
        m.tile_latency.observe_n(-1.0, 3);
        assert_eq!(m.tile_latency.count(), 0);
        m.tile_latency.observe_n(30.0, 1);
        let text = m.render();
        assert!(text.contains("unet_edge_tile_latency_seconds_bucket{le=\"1\"} 0"));
        assert!(text.contains("unet_edge_tile_latency_seconds_bucket{le=\"+Inf\"} 1"));
    }
}
