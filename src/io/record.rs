//! The per-frame record: one JSON object per processed frame, the same for `segment` (one per
//! image file) and the live loop (one per frame), written into a reused buffer so the live loop
//! formats it without allocating.

use crate::engine::segmenter::FrameTiming;
use crate::post::instances::{Nucleus, Summary};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Where a frame came from: a live frame (capture time and index) or an image file.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A frame of the live loop.
    Live {
        /// Seconds since the Unix epoch when the record was made.
        timestamp: f64,
        /// The source's frame index.
        frame: u64,
        /// Capture to result, ms.
        latency_ms: f32,
        /// Frames dropped so far (latest-frame-wins).
        dropped: u64,
        /// Damaged frames skipped so far.
        corrupt: u64,
        /// Records dropped from the full MQTT queue so far (`None`: no `--mqtt`).
        mqtt_dropped: Option<u64>,
    },
    /// An image file segmented by `segment`.
    File {
        /// The input path.
        input: &'a str,
        /// The mask file written for it.
        mask: &'a str,
    },
}

/// What is known of one processed frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameRecord<'a> {
    /// Where the frame came from.
    pub origin: Origin<'a>,
    /// Frame width, px.
    pub width: usize,
    /// Frame height, px.
    pub height: usize,
    /// Tiles run and their times.
    pub timing: FrameTiming,
    /// Nuclei count and statistics.
    pub summary: Summary,
    /// Share of pixels above the threshold.
    pub foreground_fraction: f32,
}

impl FrameRecord<'_> {
    /// Appends the record as one JSON line (with the newline) to `out`; allocates nothing once
    /// `out` has grown to a record's size.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        match self.origin {
            Origin::Live {
                timestamp, frame, ..
            } => {
                let _ = write!(out, "\"timestamp\":{timestamp:.3},\"frame\":{frame},");
            }
            Origin::File { input, .. } => {
                out.push_str("\"input\":");
                json_string(out, input);
                out.push(',');
            }
        }
        let t = &self.timing;
        let s = &self.summary;
        let _ = write!(
            out,
            "\"width\":{},\"height\":{},\"tiles\":{},\"ms_per_tile\":{:.3},\"ms_per_tile_p50\":{:.3},\"ms_per_tile_max\":{:.3},\"frame_ms\":{:.3},",
            self.width, self.height, t.tiles, t.ms_per_tile, t.ms_per_tile_p50, t.ms_per_tile_max, t.frame_ms
        );
        if let Origin::Live { latency_ms, .. } = self.origin {
            let _ = write!(out, "\"latency_ms\":{latency_ms:.3},");
        }
        let _ = write!(
            out,
            "\"nuclei\":{},\"nuclei_whole\":{},\"mean_area_px\":{:.3},\"mean_intensity\":{:.3},\"foreground_fraction\":{:.4}",
            s.count, s.whole, s.mean_area, s.mean_intensity, self.foreground_fraction
        );
        match self.origin {
            Origin::Live {
                dropped,
                corrupt,
                mqtt_dropped,
                ..
            } => {
                let _ = write!(out, ",\"dropped\":{dropped},\"corrupt\":{corrupt}");
                if let Some(n) = mqtt_dropped {
                    let _ = write!(out, ",\"mqtt_dropped\":{n}");
                }
            }
            Origin::File { mask, .. } => {
                out.push_str(",\"mask\":");
                json_string(out, mask);
            }
        }
        out.push_str("}\n");
    }
}

/// An append-only file of records that never keeps a partial line: each `write` puts the whole
/// buffer or, on failure (a full disk), cuts the file back to its last whole line; errors name
/// the file.
pub struct LineLog {
    file: std::fs::File,
    path: PathBuf,
    len: u64,
}

impl LineLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> anyhow::Result<LineLog> {
        use anyhow::Context;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--log {}: cannot open for appending", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LineLog {
            file,
            path: path.to_path_buf(),
            len,
        })
    }
}

impl std::io::Write for LineLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.file.write_all(buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(buf.len())
            }
            Err(e) => {
                // Best effort: a device file (or a vanished disk) may refuse the truncation too.
                let _ = self.file.set_len(self.len);
                Err(std::io::Error::new(
                    e.kind(),
                    format!("--log {}: {e}", self.path.display()),
                ))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// How a per-nucleus column is being written: CSV flattens the bounding box to four fields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Csv,
    Json,
}

/// One column of the per-nucleus table: its JSON key, its CSV header field(s) and its value.
struct Column {
    json: &'static str,
    csv: &'static str,
    write: fn(&mut String, &Nucleus, Layout),
}

/// The per-nucleus table, in order: `segment`'s `nuclei.csv` and the live loop's MQTT
/// `.../nuclei` records both walk it, so the two cannot drift apart.
const NUCLEUS_COLUMNS: [Column; 11] = [
    Column {
        json: "id",
        csv: "id",
        write: |o, n, _| {
            let _ = write!(o, "{}", n.id);
        },
    },
    Column {
        json: "centroid_x",
        csv: "centroid_x",
        write: |o, n, _| {
            let _ = write!(o, "{:.2}", n.cx);
        },
    },
    Column {
        json: "centroid_y",
        csv: "centroid_y",
        write: |o, n, _| {
            let _ = write!(o, "{:.2}", n.cy);
        },
    },
    Column {
        json: "area_px",
        csv: "area_px",
        write: |o, n, _| {
            let _ = write!(o, "{}", n.area);
        },
    },
    Column {
        json: "mean_intensity",
        csv: "mean_intensity",
        write: |o, n, _| {
            let _ = write!(o, "{:.3}", n.mean_intensity);
        },
    },
    Column {
        json: "bbox",
        csv: "bbox_x0,bbox_y0,bbox_x1,bbox_y1",
        write: |o, n, layout| {
            let [x0, y0, x1, y1] = n.bbox;
            let _ = match layout {
                Layout::Csv => write!(o, "{x0},{y0},{x1},{y1}"),
                Layout::Json => write!(o, "[{x0},{y0},{x1},{y1}]"),
            };
        },
    },
    Column {
        json: "touches_border",
        csv: "touches_border",
        write: |o, n, _| {
            let _ = write!(o, "{}", n.touches_border);
        },
    },
    Column {
        json: "major_axis_px",
        csv: "major_axis_px",
        write: |o, n, _| {
            let _ = write!(o, "{:.2}", n.major_axis);
        },
    },
    Column {
        json: "minor_axis_px",
        csv: "minor_axis_px",
        write: |o, n, _| {
            let _ = write!(o, "{:.2}", n.minor_axis);
        },
    },
    Column {
        json: "orientation_deg",
        csv: "orientation_deg",
        write: |o, n, _| {
            let _ = write!(o, "{:.1}", n.orientation_deg);
        },
    },
    Column {
        json: "eccentricity",
        csv: "eccentricity",
        write: |o, n, _| {
            let _ = write!(o, "{:.3}", n.eccentricity());
        },
    },
];

/// Appends a frame's per-nucleus table as one JSON object (no newline): `timestamp`, `frame`
/// and `nuclei`, an array of objects with the columns of `segment`'s `nuclei.csv`.
pub fn nuclei_json(out: &mut String, timestamp: f64, frame: u64, nuclei: &[Nucleus]) {
    let _ = write!(
        out,
        "{{\"timestamp\":{timestamp:.3},\"frame\":{frame},\"nuclei\":["
    );
    for (i, n) in nuclei.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (c, col) in NUCLEUS_COLUMNS.iter().enumerate() {
            out.push(if c == 0 { '{' } else { ',' });
            let _ = write!(out, "\"{}\":", col.json);
            (col.write)(out, n, Layout::Json);
        }
        out.push('}');
    }
    out.push_str("]}");
}

/// Appends the per-nucleus table as CSV: a header line, then one line per nucleus.
pub fn nuclei_csv(out: &mut String, nuclei: &[Nucleus]) {
    for (c, col) in NUCLEUS_COLUMNS.iter().enumerate() {
        if c > 0 {
            out.push(',');
        }
        out.push_str(col.csv);
    }
    out.push('\n');
    for n in nuclei {
        for (c, col) in NUCLEUS_COLUMNS.iter().enumerate() {
            if c > 0 {
                out.push(',');
            }
            (col.write)(out, n, Layout::Csv);
        }
        out.push('\n');
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(origin: Origin<'_>) -> FrameRecord<'_> {
        FrameRecord {
            origin,
            width: 640,
            height: 480,
            timing: FrameTiming {
                tiles: 24,
                frame_ms: 410.25,
                ms_per_tile: 16.5,
                ms_per_tile_p50: 16.25,
                ms_per_tile_max: 21.0,
            },
            summary: Summary {
                count: 31,
                whole: 29,
                mean_area: 212.5,
                mean_intensity: 0.4321,
            },
            foreground_fraction: 0.12345,
        }
    }

    #[test]
    fn line_log_appends_whole_lines_and_names_its_file_on_failure() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("live.jsonl");
        std::fs::write(&p, "{\"old\":1}\n").unwrap();
        let mut log = LineLog::open(&p).unwrap();
        log.write_all(b"{\"frame\":1}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"old\":1}\n{\"frame\":1}\n"
        );
        if Path::new("/dev/full").exists() {
            let mut full = LineLog::open(Path::new("/dev/full")).unwrap();
            let e = full.write_all(b"{\"frame\":2}\n").unwrap_err().to_string();
            assert!(e.contains("/dev/full"), "{e}");
        }
    }

    #[test]
    fn both_origins_are_valid_json_with_the_shared_fields() {
        let mut line = String::new();
        record(Origin::Live {
            timestamp: 1.5e9,
            frame: 7,
            latency_ms: 30.0,
            dropped: 2,
            corrupt: 1,
            mqtt_dropped: Some(4),
        })
        .write_json(&mut line);
        record(Origin::File {
            input: "dir/a \"b\"\n.png",
            mask: "out/a.mask.png",
        })
        .write_json(&mut line);
        let lines: Vec<serde_json::Value> = line
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for v in &lines {
            assert_eq!(v["width"], 640);
            assert_eq!(v["tiles"], 24);
            assert_eq!(v["ms_per_tile"], 16.5);
            assert_eq!(v["nuclei"], 31);
            assert_eq!(v["nuclei_whole"], 29);
            assert_eq!(v["mean_area_px"], 212.5);
            assert_eq!(v["foreground_fraction"], 0.1235);
        }
        assert_eq!(lines[0]["frame"], 7);
        assert_eq!(lines[0]["dropped"], 2);
        assert_eq!(lines[0]["mqtt_dropped"], 4);
        assert!(lines[1].get("mqtt_dropped").is_none());
        assert_eq!(lines[1]["input"], "dir/a \"b\"\n.png");
        assert_eq!(lines[1]["mask"], "out/a.mask.png");
        assert!(lines[1].get("frame").is_none());
    }

    #[test]
    fn the_nuclei_table_is_valid_json_with_every_column() {
        let n = Nucleus {
            id: 3,
            cx: 10.5,
            cy: 20.25,
            area: 120,
            mean_intensity: 88.0,
            bbox: [4, 14, 17, 27],
            touches_border: false,
            major_axis: 14.0,
            minor_axis: 10.0,
            orientation_deg: 30.0,
        };
        let mut s = String::new();
        nuclei_json(&mut s, 1.5e9, 9, &[n, Nucleus { id: 4, ..n }]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["frame"], 9);
        assert_eq!(v["nuclei"].as_array().unwrap().len(), 2);
        assert_eq!(v["nuclei"][1]["id"], 4);
        assert_eq!(v["nuclei"][0]["bbox"][3], 27);
        assert_eq!(v["nuclei"][0]["area_px"], 120);
        let mut empty = String::new();
        nuclei_json(&mut empty, 0.0, 0, &[]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&empty).unwrap()["nuclei"],
            serde_json::json!([])
        );
    }

    #[test]
    fn the_csv_table_and_the_json_table_carry_the_same_values() {
        let n = Nucleus {
            id: 7,
            cx: 3.125,
            cy: 99.5,
            area: 4321,
            mean_intensity: 1234.5678,
            bbox: [1, 2, 30, 40],
            touches_border: true,
            major_axis: 20.0,
            minor_axis: 12.0,
            orientation_deg: -45.25,
        };
        let mut csv = String::new();
        nuclei_csv(&mut csv, &[n, Nucleus { id: 8, ..n }]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        let header: Vec<&str> = lines[0].split(',').collect();
        assert_eq!(header.len(), 14);
        assert_eq!(header[0], "id");
        assert_eq!(header[5..9], ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]);
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(row.len(), header.len());
        assert_eq!(lines[2].split(',').next(), Some("8"));

        let mut json = String::new();
        nuclei_json(&mut json, 0.0, 0, &[n]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let object = v["nuclei"][0].as_object().unwrap();
        assert_eq!(object.len(), 11);
        for (name, field) in header.iter().zip(&row) {
            let value = match name.strip_prefix("bbox_") {
                Some(corner) => {
                    let k = ["x0", "y0", "x1", "y1"]
                        .iter()
                        .position(|c| c == &corner)
                        .unwrap();
                    &object["bbox"][k]
                }
                None => &object[*name],
            };
            // Both carry the same digits; parsing drops trailing zeros alike.
            let field: serde_json::Value = serde_json::from_str(field).unwrap();
            assert_eq!(value, &field, "column {name}");
        }
    }
}
