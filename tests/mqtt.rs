//! `--mqtt` against a real Mosquitto broker (Debian's `mosquitto`, started here on a free loopback
//! port), and `/metrics` and `/healthz` of the real binary's preview server.
//!
//! Without `mosquitto` on the PATH the broker tests say so and pass, unless
//! `UNET_EDGE_REQUIRE_MOSQUITTO=1` (set by `.ci/run`, which installs it) makes that a failure.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on (yet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the broker tests can run here; panics when CI asks for them and they cannot.
fn have_mosquitto() -> bool {
    let found = Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("UNET_EDGE_REQUIRE_MOSQUITTO").is_none(),
            "UNET_EDGE_REQUIRE_MOSQUITTO is set but `mosquitto` is not on the PATH"
        );
        eprintln!(
            "skipped: no `mosquitto` on the PATH (apt-get install mosquitto mosquitto-clients)"
        );
    }
    found
}

/// A Mosquitto broker on a loopback port, stopped when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// Starts a broker with `extra` configuration lines on `port`.
    fn start(dir: &Path, port: u16, extra: &str) -> Broker {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            // `user root`: a broker started as root otherwise drops to `mosquitto`, which cannot read
            // the test's files; as any other user the line has no effect.
            format!("listener {port} 127.0.0.1\npersistence false\nuser root\n{extra}\n"),
        )
        .unwrap();
        Broker::from_conf(conf, port)
    }

    /// A broker on `port` from the configuration file `conf`.
    fn from_conf(conf: PathBuf, port: u16) -> Broker {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub` on `unet-edge/#`, collecting (topic, payload) in arrival order.
struct Subscriber {
    child: Child,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Subscriber {
    /// Subscribes with `args` (port, TLS, credentials) and returns once the subscription is live.
    fn start(args: &[&str], pub_args: &[&str]) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(args)
            .args(["-t", "unet-edge/#", "-t", "test/ready", "-v", "-q", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts");
        let got = Arc::new(Mutex::new(vec![]));
        let (out, g) = (child.stdout.take().unwrap(), got.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let (t, p) = line.split_once(' ').unwrap_or((&line, ""));
                g.lock().unwrap().push((t.to_string(), p.to_string()));
            }
        });
        let s = Subscriber { child, got };
        // Publish to ourselves until it arrives: then the subscription is in place.
        let t0 = Instant::now();
        while !s.topics().iter().any(|t| t == "test/ready") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "subscriber never got ready"
            );
            let _ = Command::new("mosquitto_pub")
                .args(pub_args)
                .args(["-t", "test/ready", "-m", "x"])
                .status();
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn topics(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Payloads on `unet-edge/<device>/<topic>`, parsed.
    fn on(&self, device: &str, topic: &str) -> Vec<serde_json::Value> {
        let name = format!("unet-edge/{device}/{topic}");
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == name)
            .map(|(_, p)| serde_json::from_str(p).unwrap_or_else(|e| panic!("{e}: {p}")))
            .collect()
    }

    /// Waits until `pred` holds (or fails the test after `secs`).
    fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&Subscriber) -> bool) {
        let t0 = Instant::now();
        while !pred(self) {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; got topics {:?}",
                self.topics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_args(port: u16) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn frames_of(records: &[serde_json::Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["frame"].as_u64().unwrap())
        .collect()
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn records_arrive_in_order_complete_and_equal_to_the_log() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), free_port(), "allow_anonymous true");
    let pa = port_args(broker.port);
    let sub = Subscriber::start(&strs(&pa), &strs(&pa));
    let log = dir.path().join("frames.jsonl");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let out = util::run(&[
        "--input",
        "synth:96x96",
        "--max-frames",
        "24",
        "--mqtt",
        &url,
        "--device-id",
        "scope-1",
        "--log",
        log.to_str().unwrap(),
        "--save-every",
        "8",
        "--out",
        dir.path().join("saved").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mqtt: 27 records published, 0 dropped"),
        "{stderr}"
    );
    sub.wait_for(10, "the offline status", |s| {
        s.on("scope-1", "status")
            .last()
            .is_some_and(|v| v["state"] == "offline")
    });
    // Every record, in order, and each the same object as its JSON line.
    let frames = sub.on("scope-1", "frames");
    let logged = log_lines(&log);
    assert_eq!(frames.len(), 24);
    assert_eq!(frames, logged);
    assert_eq!(frames_of(&frames), (0..24).collect::<Vec<_>>());
    assert!(frames.iter().all(|r| r["mqtt_dropped"] == 0));
    // The nuclei tables of the saved frames (8th, 16th, 24th), each with its frame's count.
    let nuclei = sub.on("scope-1", "nuclei");
    assert_eq!(frames_of(&nuclei), [7, 15, 23]);
    for t in &nuclei {
        let f = t["frame"].as_u64().unwrap() as usize;
        assert_eq!(
            t["nuclei"].as_array().unwrap().len() as u64,
            frames[f]["nuclei"].as_u64().unwrap()
        );
    }
    let status = sub.on("scope-1", "status");
    assert_eq!(status[0]["state"], "online");
    assert_eq!(status[0]["model"], "embedded");
    assert_eq!(status[0]["camera"], "synth:96x96");
    assert_eq!(status[0]["version"], env!("CARGO_PKG_VERSION"));
    // The retained status is what a dashboard that connects later sees first.
    let late = Command::new("mosquitto_sub")
        .args(strs(&pa))
        .args(["-t", "unet-edge/scope-1/status", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    let retained: serde_json::Value = serde_json::from_slice(&late.stdout).unwrap();
    assert_eq!(retained["state"], "offline");
}

/// A live run on synth at `fps` publishing to `port`; its stdout is the JSON lines.
fn live_run(port: u16, fps: &str, frames: &str, extra: &[&str]) -> Child {
    util::command()
        .args([
            "--input",
            "synth:64x64",
            "--fps",
            fps,
            "--max-frames",
            frames,
        ])
        .args([
            "--mqtt",
            &format!("mqtt://127.0.0.1:{port}"),
            "--device-id",
            "scope-2",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads a child's stdout lines as they come, into a shared list.
fn collect_lines(child: &mut Child) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let lines = Arc::new(Mutex::new(vec![]));
    let (out, l) = (child.stdout.take().unwrap(), lines.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap().push(serde_json::from_str(&line).unwrap());
        }
    });
    lines
}

fn finish(child: Child) -> String {
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    stderr
}

#[test]
fn the_loop_survives_the_broker_going_away_and_publishing_resumes() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), free_port(), "allow_anonymous true");
    let port = broker.port;
    let pa = port_args(port);
    let sub = Subscriber::start(&strs(&pa), &strs(&pa));
    // 20 fps for 12 s, a queue of 8: the 4 s outage overflows it.
    let mut child = live_run(port, "20", "240", &["--mqtt-queue", "8"]);
    let lines = collect_lines(&mut child);
    sub.wait_for(20, "first records", |s| {
        s.on("scope-2", "frames").len() >= 10
    });
    drop(sub);
    broker.stop();
    let during = lines.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(4));
    // The loop kept its pace while the broker was away.
    let after = lines.lock().unwrap().len();
    assert!(
        after - during >= 40,
        "only {} frames in 4 s without a broker",
        after - during
    );
    let broker = broker_restart(&dir, port);
    let sub = Subscriber::start(&strs(&pa), &strs(&pa));
    sub.wait_for(20, "records after the broker came back", |s| {
        s.on("scope-2", "frames").len() >= 10
    });
    let stderr = finish(child);
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 240);
    // Drops are counted in the records (monotonic) and in the summary.
    let dropped: Vec<u64> = lines
        .iter()
        .map(|r| r["mqtt_dropped"].as_u64().unwrap())
        .collect();
    assert!(dropped.windows(2).all(|w| w[0] <= w[1]));
    assert!(*dropped.last().unwrap() > 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} dropped from the full queue",
            dropped.last().unwrap()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 reconnects"), "{stderr}");
    // After the reconnect the device says it is online again, and records are the newest ones.
    let resumed = sub.on("scope-2", "frames");
    assert!(frames_of(&resumed).windows(2).all(|w| w[0] < w[1]));
    assert!(sub
        .on("scope-2", "status")
        .iter()
        .any(|s| s["state"] == "online"));
    drop(broker);
}

/// The broker of `port` again, with the configuration `Broker::start` wrote.
fn broker_restart(dir: &tempfile::TempDir, port: u16) -> Broker {
    Broker::from_conf(dir.path().join(format!("mosquitto-{port}.conf")), port)
}

#[test]
fn no_broker_at_start_is_retried_and_the_queue_bound_holds() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nobody listens: the loop runs at full speed anyway and drops the oldest records.
    let mut child = live_run(port, "20", "120", &["--mqtt-queue", "5"]);
    let lines = collect_lines(&mut child);
    let t0 = Instant::now();
    while lines.lock().unwrap().len() < 40 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the loop is not running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (pushed, dropped) = {
        let l = lines.lock().unwrap();
        // A record counts the drops of the records pushed before it.
        (
            l.len() as u64 - 1,
            l.last().unwrap()["mqtt_dropped"].as_u64().unwrap(),
        )
    };
    // Held: 5 in the queue, at most 16 in rumqttc's request channel, one in the publisher's
    // hand and one in the event loop's; everything else was dropped, oldest first.
    assert!(
        dropped >= pushed - (5 + 16 + 2),
        "only {dropped} of {pushed} dropped with a queue of 5"
    );
    // The broker comes up late: the device connects and publishes.
    let broker = Broker::start(dir.path(), port, "allow_anonymous true");
    let pa = port_args(port);
    let sub = Subscriber::start(&strs(&pa), &strs(&pa));
    sub.wait_for(20, "records once the broker is up", |s| {
        s.on("scope-2", "frames").len() >= 5
    });
    let stderr = finish(child);
    assert!(stderr.contains("records published"), "{stderr}");
    drop(broker);
}

#[test]
fn tls_with_a_self_signed_ca_and_a_password_from_the_environment() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let passwd = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b", passwd.to_str().unwrap(), "scope", "s3cret pass"])
        .status()
        .unwrap();
    assert!(made.success());
    let port = free_port();
    let broker = Broker::start(
        dir.path(),
        port,
        &format!(
            "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n\
             allow_anonymous false\npassword_file {1}",
            tls.display(),
            passwd.display()
        ),
    );
    let ca = tls.join("ca.pem");
    let sub_args: Vec<String> = vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        ca.display().to_string(),
        "-u".into(),
        "scope".into(),
        "-P".into(),
        "s3cret pass".into(),
    ];
    let sub = Subscriber::start(&strs(&sub_args), &strs(&sub_args));
    let url = format!("mqtts://localhost:{port}");
    let run = |ca: &Path, password: &str| {
        util::command()
            .args([
                "--input",
                "synth:64x64",
                "--max-frames",
                "5",
                "--log",
                "/dev/null",
            ])
            .args(["--mqtt", &url, "--mqtt-ca", ca.to_str().unwrap()])
            .args(["--mqtt-user", "scope", "--device-id", "tls-1"])
            .env("UNET_EDGE_MQTT_PASSWORD", password)
            .output()
            .unwrap()
    };
    let o = run(&ca, "s3cret pass");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("mqtt: 5 records published"), "{stderr}");
    sub.wait_for(10, "the TLS records", |s| {
        s.on("tls-1", "frames").len() == 5
    });
    // The wrong CA or password: nothing is published, the run still ends cleanly, and the
    // warning says why.
    for (ca, password, why) in [
        (tls.join("other-ca.pem"), "s3cret pass", "certificate"),
        (ca.clone(), "wrong", "refused the connection"),
    ] {
        let o = run(&ca, password);
        let stderr = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("mqtt: 0 records published"), "{stderr}");
        assert!(stderr.contains(why), "{why:?} not in: {stderr}");
    }
    assert_eq!(sub.on("tls-1", "frames").len(), 5);
    drop(broker);
}

#[test]
fn secrets_stay_off_the_command_line_and_out_of_print_config() {
    let dir = tempfile::tempdir().unwrap();
    let o = util::run(&[
        "--input",
        "synth",
        "--mqtt",
        "mqtt://127.0.0.1:1",
        "--mqtt-password",
        "pw",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("UNET_EDGE_MQTT_PASSWORD") && stderr.contains("--config"),
        "{stderr}"
    );
    let cfg = util::write(
        dir.path(),
        "c.toml",
        b"input = \"synth\"\nmqtt = \"mqtt://127.0.0.1:1\"\nmqtt-password = \"hunter2\"\n",
    );
    let printed = util::run_ok(&["--config", &cfg, "--print-config"]);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("mqtt-password = \"(hidden)\""),
        "{printed}"
    );
    let printed = String::from_utf8(
        util::command()
            .args(["--input", "synth", "--print-config"])
            .env("UNET_EDGE_MQTT_PASSWORD", "hunter3")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        printed.contains("mqtt-password = \"(hidden)\"  # environment"),
        "{printed}"
    );
    // Bad MQTT settings are named.
    for (args, want) in [
        (vec!["--mqtt", "http://x"], "expected mqtt://HOST[:PORT]"),
        (vec!["--mqtt", "mqtts://localhost"], "--mqtt-ca"),
        (
            vec!["--mqtt", "mqtt://h", "--device-id", "a/b"],
            "--device-id",
        ),
        (
            vec!["--mqtt", "mqtt://h", "--mqtt-queue", "0"],
            "--mqtt-queue",
        ),
    ] {
        let mut a = vec!["--input", "synth", "--max-frames", "1"];
        a.extend(args);
        util::fails_with(&a, &[want]);
    }
}

/// One HTTP GET: status code and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn metrics_parse_as_prometheus_text_and_healthz_follows_the_frames() {
    let port = free_port();
    // Raw frames on stdin: three frames, then the pipe stays open and silent.
    let mut child = util::command()
        .args([
            "--input", "-", "--width", "64", "--height", "64", "--fps", "0",
        ])
        .args(["--preview", &port.to_string(), "--health-timeout", "1.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let s = unet_edge::synth::generate(
        &mut unet_edge::rng::Rng::new(3),
        64,
        64,
        &unet_edge::synth::SynthConfig::default(),
    );
    let peak = s.image.iter().cloned().fold(1.0, f32::max);
    let bytes: Vec<u8> = s.image.iter().map(|&v| (v / peak * 255.0) as u8).collect();
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no preview server");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        stdin.write_all(&bytes).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let scrape = || {
        let (code, body) = get(port, "/metrics");
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
    };
    let t0 = Instant::now();
    let value = |s: &prometheus_parse::Scrape, name: &str| -> f64 {
        match s
            .samples
            .iter()
            .find(|x| x.metric == name)
            .map(|x| &x.value)
        {
            Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
            other => panic!("{name}: {other:?}"),
        }
    };
    let mut s = scrape();
    while value(&s, "unet_edge_frames_processed_total") < 3.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "frames not counted");
        std::thread::sleep(Duration::from_millis(100));
        s = scrape();
    }
    assert_eq!(get(port, "/healthz").0, 200);
    let tiles = s
        .samples
        .iter()
        .find(|x| x.metric == "unet_edge_tile_latency_seconds")
        .expect("tile latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &tiles.value else {
        panic!("{:?}", tiles.value)
    };
    // One tile per 64x64 frame: 3 observations in the +Inf bucket.
    assert_eq!(buckets.last().unwrap().count, 3.0);
    assert!(value(&s, "unet_edge_nuclei_total") >= value(&s, "unet_edge_nuclei"));
    assert_eq!(value(&s, "unet_edge_frames_corrupt_total"), 0.0);
    // Silence on the pipe: /healthz fails after --health-timeout.
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = get(port, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no frame processed for"), "{body}");
    // A frame brings it back.
    stdin.write_all(&bytes).unwrap();
    let t0 = Instant::now();
    while get(port, "/healthz").0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "/healthz stayed failed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
