//! Activation ranges from calibration tiles: every value of the float graph is observed by tract
//! (the graph is re-declared with all of them as outputs), first for its extremes, then as a
//! histogram over them, from which min-max, percentile and MSE-optimal clipping ranges are read.

use crate::graph::FloatGraph;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Histogram bins per value.
pub const BINS: usize = 2048;

/// How a value's clipping range is chosen from what calibration saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// Tails beyond the given percentile (e.g. 99.99) are clipped.
    Percentile(f32),
    /// The range (observed range scaled by α ≤ 1) with the least expected squared error, rounding
    /// plus clipping, under the observed distribution.
    Mse,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MinMax => write!(f, "minmax"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Mse => write!(f, "mse"),
        }
    }
}

impl FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Method> {
        Ok(match s {
            "minmax" => Method::MinMax,
            "mse" => Method::Mse,
            "percentile" => Method::Percentile(99.99),
            _ => match s.strip_prefix("percentile:") {
                Some(p) => {
                    let p: f32 = p
                        .parse()
                        .ok()
                        .filter(|p| (50.0..=100.0).contains(p))
                        .ok_or_else(|| {
                            anyhow!("calibration method {s:?}: the percentile must be a number in 50..=100, e.g. percentile:99.99")
                        })?;
                    Method::Percentile(p)
                }
                None => bail!(
                    "unknown calibration method {s:?}; expected minmax, percentile[:P] or mse"
                ),
            },
        })
    }
}

/// What calibration saw of one value.
#[derive(Clone, Debug)]
pub struct ValueStats {
    /// Smallest value seen.
    pub min: f32,
    /// Largest value seen.
    pub max: f32,
    /// Counts over [`BINS`] equal bins spanning `min..=max`.
    pub hist: Vec<u64>,
}

impl ValueStats {
    fn new() -> ValueStats {
        ValueStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: vec![0; BINS],
        }
    }

    fn bin_width(&self) -> f32 {
        ((self.max - self.min) / BINS as f32).max(f32::MIN_POSITIVE)
    }

    fn observe_extremes(&mut self, xs: &[f32]) {
        for &x in xs {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
    }

    fn observe_hist(&mut self, xs: &[f32]) {
        let (lo, w) = (self.min, self.bin_width());
        for &x in xs {
            let b = (((x - lo) / w) as usize).min(BINS - 1);
            self.hist[b] += 1;
        }
    }

    fn centre(&self, b: usize) -> f32 {
        self.min + (b as f32 + 0.5) * self.bin_width()
    }

    /// The clipping range `method` picks; it always contains zero (ONNX needs 0 representable).
    pub fn range(&self, method: Method) -> (f32, f32) {
        let (lo, hi) = match method {
            Method::MinMax => (self.min, self.max),
            Method::Percentile(p) => {
                let total: u64 = self.hist.iter().sum();
                let tail = ((1.0 - p as f64 / 100.0) * total as f64).floor() as u64;
                let lo_bin = cumulative_index(self.hist.iter(), tail);
                let hi_bin = BINS - 1 - cumulative_index(self.hist.iter().rev(), tail);
                // Edges of the bins that hold the percentiles, never beyond what was seen.
                let w = self.bin_width();
                let lo = if self.min >= 0.0 {
                    self.min
                } else {
                    (self.min + lo_bin as f32 * w).max(self.min)
                };
                ((lo), (self.min + (hi_bin + 1) as f32 * w).min(self.max))
            }
            Method::Mse => self.mse_range(),
        };
        (lo.min(0.0), hi.max(0.0))
    }

    fn mse_range(&self) -> (f32, f32) {
        let (lo0, hi0) = (self.min.min(0.0), self.max.max(0.0));
        let mut best = (f64::INFINITY, lo0, hi0);
        for k in 0..=90 {
            let a = 1.0 - k as f32 * 0.01;
            let (lo, hi) = (lo0 * a, hi0 * a);
            let step = ((hi - lo) / 255.0).max(f32::MIN_POSITIVE) as f64;
            let mut err = 0.0f64;
            for (b, &n) in self.hist.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let x = self.centre(b);
                let e = if x > hi {
                    ((x - hi) as f64).powi(2)
                } else if x < lo {
                    ((lo - x) as f64).powi(2)
                } else {
                    step * step / 12.0
                };
                err += n as f64 * e;
            }
            if err < best.0 {
                best = (err, lo, hi);
            }
        }
        (best.1, best.2)
    }
}

/// Index of the first bin at which the running count exceeds `skip` (0 when `skip` is 0).
fn cumulative_index<'a>(bins: impl Iterator<Item = &'a u64>, skip: u64) -> usize {
    let mut seen = 0u64;
    for (i, &n) in bins.enumerate() {
        seen += n;
        if seen > skip {
            return i;
        }
    }
    0
}

/// Statistics of every value of a float graph over a set of tiles.
pub struct Calibration {
    /// Per value name.
    pub stats: HashMap<String, ValueStats>,
    /// Tiles observed.
    pub tiles: usize,
}

impl Calibration {
    /// Runs the float graph on every `tile`x`tile` tile twice (extremes, then histograms).
    /// `progress` is called after each run with (done, total).
    pub fn collect(
        graph: &FloatGraph,
        tiles: &[Vec<f32>],
        tile: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Calibration> {
        if tiles.is_empty() {
            bail!("calibration set is empty: give at least one image (a folder of PNG/TIFF/JPEG images, or synth:N)");
        }
        let values: Vec<String> = graph.nodes.iter().map(|n| n.output.clone()).collect();
        let plan = probe_plan(graph, &values, tile)?;
        let mut stats: HashMap<String, ValueStats> = graph
            .values()
            .into_iter()
            .map(|v| (v, ValueStats::new()))
            .collect();
        let total = 2 * tiles.len();
        for pass in 0..2 {
            for (k, t) in tiles.iter().enumerate() {
                if t.len() != tile * tile {
                    bail!(
                        "calibration tile {k} has {} values; expected {}",
                        t.len(),
                        tile * tile
                    );
                }
                let input = Tensor::from_shape(&[1, 1, tile, tile], t)?;
                let outs = plan.run(tvec!(input.into()))?;
                let observe = |s: &mut ValueStats, xs: &[f32]| {
                    if pass == 0 {
                        s.observe_extremes(xs)
                    } else {
                        s.observe_hist(xs)
                    }
                };
                observe(stats.get_mut(&graph.input).expect("input"), t);
                for (name, o) in values.iter().zip(outs.iter()) {
                    let v = o.to_plain_array_view::<f32>()?;
                    let xs = v
                        .as_slice()
                        .ok_or_else(|| anyhow!("value {name:?} is not contiguous"))?;
                    observe(stats.get_mut(name).expect("value"), xs);
                }
                progress(pass * tiles.len() + k + 1, total);
            }
        }
        Ok(Calibration {
            stats,
            tiles: tiles.len(),
        })
    }

    /// The clipping range of `value` under `method`.
    pub fn range(&self, value: &str, method: Method) -> Result<(f32, f32)> {
        self.stats
            .get(value)
            .map(|s| s.range(method))
            .ok_or_else(|| anyhow!("no calibration statistics for value {value:?}"))
    }
}

/// The float graph with every listed value declared as an output, planned for one tile.
fn probe_plan(graph: &FloatGraph, values: &[String], tile: usize) -> Result<Arc<TypedSimplePlan>> {
    let mut proto = graph.model.proto().clone();
    let g = proto.graph.as_mut().expect("checked at load");
    let elem = pb::tensor_proto::DataType::Float as i32;
    g.output = values
        .iter()
        .map(|v| pb::ValueInfoProto {
            name: v.clone(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .context("tract could not read the calibration graph")?
        .with_input_fact(0, f32::fact([1, 1, tile, tile]).into())?
        .into_optimized()
        .context("optimizing the calibration graph")?
        .into_runnable_with_options(&RunOptions::default())?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(xs: &[f32]) -> ValueStats {
        let mut s = ValueStats::new();
        s.observe_extremes(xs);
        s.observe_hist(xs);
        s
    }

    #[test]
    fn minmax_is_the_observed_range_widened_to_zero() {
        let s = stats_of(&[0.5, 1.0, 3.0]);
        assert_eq!(s.range(Method::MinMax), (0.0, 3.0));
        let s = stats_of(&[-2.0, 1.0]);
        assert_eq!(s.range(Method::MinMax), (-2.0, 1.0));
    }

    #[test]
    fn percentile_clips_a_rare_outlier() {
        let mut xs: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        xs.push(100.0);
        let s = stats_of(&xs);
        let (lo, hi) = s.range(Method::Percentile(99.9));
        assert_eq!(lo, 0.0);
        assert!(hi < 1.2, "outlier kept: hi {hi}");
        assert!(hi > 0.9, "clipped the bulk: hi {hi}");
        assert_eq!(s.range(Method::MinMax).1, 100.0);
    }

    #[test]
    fn mse_clips_a_long_tail_but_not_a_uniform_spread() {
        let uniform: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let (_, hi) = stats_of(&uniform).range(Method::Mse);
        assert!(hi > 0.97, "uniform data clipped to {hi}");
        // Two far outliers among a million: clipping them costs less than the resolution
        // their range would take from everything else.
        let mut tail: Vec<f32> = (0..1_000_000).map(|i| i as f32 / 1_000_000.0).collect();
        tail.extend([50.0, 60.0]);
        let (_, hi) = stats_of(&tail).range(Method::Mse);
        assert!(hi < 60.0 * 0.9, "long tail not clipped: {hi}");
    }

    #[test]
    fn methods_parse_and_bad_ones_are_named() {
        assert_eq!("mse".parse::<Method>().unwrap(), Method::Mse);
        assert_eq!(
            "percentile:99.9".parse::<Method>().unwrap(),
            Method::Percentile(99.9)
        );
        let e = "percentile:120".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("50..=100"), "{e}");
        let e = "kl".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("minmax, percentile[:P] or mse"), "{e}");
    }
}
