//! The float graph rewritten in ONNX's QOperator form that tract lowers to integer kernels:
//! `QLinearConv` (i8 activations, per-output-channel symmetric i8 weights, i32 bias), with
//! MaxPool, nearest Resize and Concat left on the i8 tensors between them.
//!
//! Why this form: in tract 0.23 a QDQ pair around a float `Conv` stays a float convolution (the
//! Dequantize is not folded into Conv), whereas `QLinearConv` becomes a `Conv` with quantization
//! parameters, which codegen turns into im2col + an i8×i8→i32 matmul kernel (VNNI/AVX2 on x86,
//! NEON on ARM) with requantization fused after it. Two rules keep everything between convs
//! integer: a ReLU is folded into the producing conv by giving its output the range [0, max]
//! (zero point -128, so saturation *is* the ReLU), and every tensor a Concat joins shares one
//! scale and zero point with the Concat's output (and MaxPool/Resize keep their input's), so no
//! requantization node is needed anywhere (tract refuses `QLinearConcat`).

use crate::calibrate::{Calibration, Method};
use crate::graph::FloatGraph;
use anyhow::{bail, Result};
use std::collections::{BTreeSet, HashMap};
use tract_onnx::pb;
use unet_edge::onnx_writer::{Dim, ElemType, GraphBuilder};

/// Metadata key recording how a model was quantized.
pub use unet_edge::contract::KEY_QUANTIZATION;

/// Affine int8 parameters: real = scale × (q − zero_point).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    /// Step between consecutive levels.
    pub scale: f32,
    /// The i8 level that represents 0.0.
    pub zero_point: i8,
}

impl QParams {
    /// Parameters covering `[lo, hi]` (which contains 0) with the 256 i8 levels.
    pub fn from_range(lo: f32, hi: f32) -> QParams {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zp = (-128.0 - lo / scale).round().clamp(-128.0, 127.0);
        QParams {
            scale,
            zero_point: zp as i8,
        }
    }
}

/// What to quantize and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Activation range method.
    pub method: Method,
    /// Convolution layers kept in float32 (names from [`FloatGraph::conv_layers`]).
    pub keep_f32: BTreeSet<String>,
}

/// How the int8 graph was made, for the report and the metadata.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Convolutions run as QLinearConv.
    pub int8_convs: usize,
    /// Convolutions kept in float32.
    pub f32_convs: Vec<String>,
    /// Quantize/Dequantize nodes inserted at int8/float boundaries.
    pub boundaries: usize,
}

/// Union-find over value names, for the values that must share quantization parameters.
struct Classes {
    parent: HashMap<String, String>,
}

impl Classes {
    fn find(&mut self, v: &str) -> String {
        let p = self.parent.get(v).cloned().unwrap_or_else(|| v.to_string());
        if p == v {
            return p;
        }
        let root = self.find(&p);
        self.parent.insert(v.to_string(), root.clone());
        root
    }

    fn union(&mut self, a: &str, b: &str) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent.insert(ra, rb);
        }
    }
}

/// The value names of one tensor in the int8 graph: its float and/or i8 form.
#[derive(Default, Clone)]
struct Forms {
    f32: Option<String>,
    i8: Option<String>,
}

/// Rewrites `graph` into an int8 model; the returned proto carries the source's metadata plus
/// [`KEY_QUANTIZATION`].
pub fn quantize(
    graph: &FloatGraph,
    calib: &Calibration,
    opts: &Options,
) -> Result<(pb::ModelProto, Summary)> {
    let layers = graph.conv_layers();
    for k in &opts.keep_f32 {
        if !layers.contains(&k.as_str()) {
            bail!(
                "--keep-f32 {k:?}: no convolution of that name; the model's layers are {}",
                layers.join(", ")
            );
        }
    }
    // A ReLU that is its conv's only consumer runs as the conv's saturation.
    let mut fused_relu: HashMap<usize, usize> = HashMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        if n.op() == "Conv" {
            let cons = graph.consumers(&n.output);
            if cons.len() == 1 && graph.nodes[cons[0]].op() == "Relu" && n.output != graph.output {
                fused_relu.insert(i, cons[0]);
            }
        }
    }
    let fused_targets: BTreeSet<usize> = fused_relu.values().copied().collect();

    // Values that must share parameters, and each class's range (the union of its members').
    let mut classes = Classes {
        parent: HashMap::new(),
    };
    for n in &graph.nodes {
        if matches!(n.op(), "MaxPool" | "Resize" | "Concat") {
            for i in &n.inputs {
                classes.union(i, &n.output);
            }
        }
    }
    let mut class_range: HashMap<String, (f32, f32)> = HashMap::new();
    for v in graph.values() {
        let (lo, hi) = calib.range(&v, opts.method)?;
        let root = classes.find(&v);
        let r = class_range.entry(root).or_insert((lo, hi));
        *r = (r.0.min(lo), r.1.max(hi));
    }
    let mut params_of = |v: &str| -> QParams {
        let root = classes.find(v);
        let (lo, hi) = class_range[&root];
        QParams::from_range(lo, hi)
    };

    let source = graph.model.proto();
    let mut g = GraphBuilder::new("unet_int8");
    let dims4 = |c: Dim| {
        [
            Dim::Symbol("N".into()),
            c,
            Dim::Symbol("H".into()),
            Dim::Symbol("W".into()),
        ]
    };
    let input = g.input(&graph.input, ElemType::F32, &dims4(Dim::Fixed(1)));
    let mut forms: HashMap<String, Forms> = HashMap::new();
    forms.insert(
        graph.input.clone(),
        Forms {
            f32: Some(input),
            i8: None,
        },
    );
    let mut summary = Summary {
        int8_convs: 0,
        f32_convs: vec![],
        boundaries: 0,
    };
    let mut scalar_cache: HashMap<(u32, i8), (String, String)> = HashMap::new();
    let mut qparam_inits = |g: &mut GraphBuilder, p: QParams| -> Result<(String, String)> {
        if let Some(v) = scalar_cache.get(&(p.scale.to_bits(), p.zero_point)) {
            return Ok(v.clone());
        }
        let s = g.init_f32("scale", &[], &[p.scale])?;
        let z = g.init_i8("zero_point", &[], &[p.zero_point])?;
        scalar_cache.insert((p.scale.to_bits(), p.zero_point), (s.clone(), z.clone()));
        Ok((s, z))
    };

    // A value's name in the wanted form, converting (once per value) from the other form.
    macro_rules! form {
        ($v:expr, $want:ident, $have:ident, $op:literal) => {{
            let v: &str = $v;
            let f = forms.get(v).cloned().unwrap_or_default();
            match f.$want {
                Some(x) => x,
                None => {
                    let src = f.$have.expect("every value has a form");
                    let (s, z) = qparam_inits(&mut g, params_of(v))?;
                    let y = g.node($op, &[&src, &s, &z], &[]);
                    summary.boundaries += 1;
                    forms.get_mut(v).expect("known").$want = Some(y.clone());
                    y
                }
            }
        }};
    }
    macro_rules! as_i8 {
        ($v:expr) => {
            form!($v, i8, f32, "QuantizeLinear")
        };
    }
    macro_rules! as_f32 {
        ($v:expr) => {
            form!($v, f32, i8, "DequantizeLinear")
        };
    }

    for (i, n) in graph.nodes.iter().enumerate() {
        if fused_targets.contains(&i) {
            continue;
        }
        let mut out = Forms::default();
        let out_name = match fused_relu.get(&i) {
            Some(&r) => graph.nodes[r].output.clone(),
            None => n.output.clone(),
        };
        match n.op() {
            "Conv" => {
                let c = n.conv.as_ref().expect("conv weights read at load");
                if opts.keep_f32.contains(&c.layer) {
                    let x = as_f32!(&n.inputs[0]);
                    let w = g.init_f32(&format!("{}.weight", c.layer), &c.dims, &c.weight)?;
                    let b = g.init_f32(&format!("{}.bias", c.layer), &[c.dims[0]], &c.bias)?;
                    let mut y = g.node_like(&n.proto, &[&x, &w, &b]);
                    if fused_relu.contains_key(&i) {
                        y = g.relu(&y);
                    }
                    out.f32 = Some(y);
                    summary.f32_convs.push(c.layer.clone());
                } else {
                    let x = as_i8!(&n.inputs[0]);
                    let xp = params_of(&n.inputs[0]);
                    let yp = params_of(&out_name);
                    let (wq, ws) = per_channel_weights(&c.dims, &c.weight);
                    let bias: Vec<i32> = c
                        .bias
                        .iter()
                        .zip(&ws)
                        .map(|(b, s)| (b / (xp.scale * s)).round() as i32)
                        .collect();
                    let (xs, xz) = qparam_inits(&mut g, xp)?;
                    let (ys, yz) = qparam_inits(&mut g, yp)?;
                    let o = c.dims[0];
                    let w = g.init_i8(&format!("{}.weight_q", c.layer), &c.dims, &wq)?;
                    let wscale = g.init_f32(&format!("{}.weight_scale", c.layer), &[o], &ws)?;
                    let wzero =
                        g.init_i8(&format!("{}.weight_zero", c.layer), &[o], &vec![0; o])?;
                    let b = g.init_i32(&format!("{}.bias_q", c.layer), &[o], &bias)?;
                    let template = pb::NodeProto {
                        op_type: "QLinearConv".into(),
                        ..n.proto.clone()
                    };
                    out.i8 = Some(g.node_like(
                        &template,
                        &[&x, &xs, &xz, &w, &wscale, &wzero, &ys, &yz, &b],
                    ));
                    summary.int8_convs += 1;
                }
            }
            "MaxPool" | "Resize" => {
                let extra: Vec<String> = n.proto.input[1..]
                    .iter()
                    .map(|s| {
                        if s.is_empty() {
                            String::new()
                        } else {
                            g.init_copy(&graph.initializers[s])
                        }
                    })
                    .collect();
                let src = &n.inputs[0];
                // In i8, tract's nearest upsampling is slow (13 ms per tile for the four of the
                // seed U-Net); the runtime swaps in its own `UpsampleI8` (unet_graph::int8_ops).
                let x_is_i8 = forms.get(src).is_some_and(|f| f.i8.is_some());
                let x = if x_is_i8 { as_i8!(src) } else { as_f32!(src) };
                let mut ins = vec![x.as_str()];
                ins.extend(extra.iter().map(String::as_str));
                let y = g.node_like(&n.proto, &ins);
                if x_is_i8 {
                    out.i8 = Some(y);
                } else {
                    out.f32 = Some(y);
                }
            }
            "Concat" => {
                // The inputs share one class, so joining them in i8 costs at most a Quantize of
                // the ones still in f32 (the upsampled branch) and keeps the next conv integer.
                let all_i8 = n
                    .inputs
                    .iter()
                    .any(|v| forms.get(v).is_some_and(|f| f.i8.is_some()));
                let mut xs = Vec::new();
                for v in &n.inputs {
                    xs.push(if all_i8 { as_i8!(v) } else { as_f32!(v) });
                }
                let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
                let y = g.node_like(&n.proto, &refs);
                if all_i8 {
                    out.i8 = Some(y);
                } else {
                    out.f32 = Some(y);
                }
            }
            "Relu" | "Sigmoid" => {
                let x = as_f32!(&n.inputs[0]);
                out.f32 = Some(g.node_like(&n.proto, &[&x]));
            }
            other => bail!("operator {other} slipped past the graph check"),
        }
        forms.insert(out_name, out);
    }
    let y = as_f32!(&graph.output);
    let channels = graph.model.meta.channels.len();
    g.output(&y, ElemType::F32, &dims4(Dim::Fixed(channels)));
    for e in &source.metadata_props {
        g.metadata(&e.key, &e.value);
    }
    g.metadata(
        KEY_QUANTIZATION,
        &format!(
            "int8 static: weights per-output-channel symmetric; activations per-tensor, range {}; {} QLinearConv; float32 layers: {}",
            opts.method,
            summary.int8_convs,
            if summary.f32_convs.is_empty() {
                "none".to_string()
            } else {
                summary.f32_convs.join(",")
            }
        ),
    );
    let mut model = g.finish();
    // The float model's output name, so tools see the same interface.
    unet_edge::onnx_writer::rename_value(&mut model, &y, &graph.output);
    Ok((model, summary))
}

/// Symmetric per-output-channel int8 weights (levels -127..=127) and their scales.
pub fn per_channel_weights(dims: &[usize], w: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / dims[0].max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(dims[0]);
    for ch in w.chunks(per.max(1)) {
        let m = ch.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(
            ch.iter()
                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_ranges_map_zero_to_the_lowest_level() {
        let p = QParams::from_range(0.0, 2.55);
        assert_eq!(p.zero_point, -128);
        assert!((p.scale - 0.01).abs() < 1e-7);
        let p = QParams::from_range(-1.0, 1.0);
        let real = |q: i32| p.scale * (q - p.zero_point as i32) as f32;
        assert!(real(-128) <= -1.0 + p.scale && real(127) >= 1.0 - p.scale);
        // Zero is exactly representable.
        let p = QParams::from_range(-0.3, 5.0);
        let zero = p.scale * (p.zero_point as f32 - p.zero_point as f32);
        assert_eq!(zero, 0.0);
        assert!(p.zero_point > -128 && p.zero_point < 0);
    }

    #[test]
    fn per_channel_weights_use_each_channels_own_scale() {
        let w = [0.5, -1.0, 0.25, 0.01, 0.03, -0.04];
        let (q, s) = per_channel_weights(&[2, 3, 1, 1], &w);
        assert_eq!(q[..3], [64, -127, 32]);
        assert_eq!(q[3..], [32, 95, -127]);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9);
        assert!((s[1] - 0.04 / 127.0).abs() < 1e-9);
        let (q, s) = per_channel_weights(&[1, 2, 1, 1], &[0.0, 0.0]);
        assert_eq!((q, s), (vec![0, 0], vec![1.0]));
    }
}
