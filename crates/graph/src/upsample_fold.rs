//! A rewrite of float U-Net graphs before tract sees them: the decoder's
//! `Conv3x3(Concat(NearestUpsample2x(x), skip))` becomes
//! `DepthToSpace(four 2x2 convs of x) + Conv3x3(skip)`.
//!
//! A 3x3 convolution over a nearest-upsampled map reads each low-resolution pixel through
//! several taps at once: output row `2i` sees rows `i-1, i, i` of `x`, row `2i+1` sees
//! `i, i, i+1`. Summing the taps that land on the same pixel gives, for each of the four output
//! phases, a 2x2 convolution at the low resolution: 16 multiply-adds per input channel and output
//! pixel quartet instead of 36, so the upsampled part of each decoder convolution costs 2.25x
//! less and the upsampled and concatenated maps are never materialized. The skip part stays a
//! 3x3 convolution; the two sum before the bias-free ReLU, which is exactly what the concat
//! convolution computed (up to float summation order).

use crate::onnx_writer::{tensor_f32, Attr, ConvSpec, GraphBuilder};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use tract_onnx::pb;

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn text(n: &pb::NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// The graph's values: who makes each, how many read it, and the initializers by name.
struct Index<'a> {
    producer: HashMap<&'a str, usize>,
    readers: HashMap<&'a str, usize>,
    init: HashMap<&'a str, &'a pb::TensorProto>,
}

impl<'a> Index<'a> {
    fn new(g: &'a pb::GraphProto) -> Index<'a> {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                *readers.entry(x.as_str()).or_default() += 1;
            }
        }
        for o in &g.output {
            *readers.entry(o.name.as_str()).or_default() += 1;
        }
        let init = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Index {
            producer,
            readers,
            init,
        }
    }

    fn only_reader(&self, value: &str) -> bool {
        self.readers.get(value) == Some(&1)
    }

    fn weights(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        self.init.get(name).and_then(|t| tensor_f32(t).ok())
    }

    /// Channels of a value, followed back through channel-preserving ops to a convolution.
    fn channels(&self, g: &pb::GraphProto, value: &str) -> Option<usize> {
        let n = &g.node[*self.producer.get(value)?];
        match n.op_type.as_str() {
            "Conv" => self
                .init
                .get(n.input.get(1)?.as_str())?
                .dims
                .first()
                .map(|&d| d as usize),
            "Relu" | "Sigmoid" | "MaxPool" | "Resize" | "Upsample" => {
                self.channels(g, n.input.first()?)
            }
            "Concat" if attr(n, "axis")?.i == 1 => n
                .input
                .iter()
                .map(|x| self.channels(g, x))
                .sum::<Option<usize>>(),
            _ => None,
        }
    }
}

/// One decoder convolution to fold: node indices and what the new nodes need.
struct Site {
    conv: usize,
    concat: usize,
    resize: usize,
    x: String,
    skip: String,
    up_channels: usize,
}

fn find_site(g: &pb::GraphProto, ix: &Index, ci: usize) -> Option<Site> {
    let conv = &g.node[ci];
    if conv.op_type != "Conv" || !conv.domain.is_empty() {
        return None;
    }
    let ones = |v: Option<Vec<i64>>| v.is_none_or(|v| v.iter().all(|&d| d == 1));
    if ints(conv, "kernel_shape")? != [3, 3]
        || ints(conv, "pads")? != [1, 1, 1, 1]
        || !ones(ints(conv, "strides"))
        || !ones(ints(conv, "dilations"))
        || attr(conv, "group").is_some_and(|a| a.i != 1)
        || attr(conv, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET")
    {
        return None;
    }
    let concat_ix = *ix.producer.get(conv.input.first()?.as_str())?;
    let concat = &g.node[concat_ix];
    if concat.op_type != "Concat"
        || attr(concat, "axis")?.i != 1
        || concat.input.len() != 2
        || !ix.only_reader(&concat.output[0])
    {
        return None;
    }
    let resize_ix = *ix.producer.get(concat.input[0].as_str())?;
    let resize = &g.node[resize_ix];
    let floor_like = matches!(
        text(resize, "nearest_mode").as_deref(),
        Some("floor") | Some("round_prefer_floor") | None
    );
    if resize.op_type != "Resize"
        || text(resize, "mode").as_deref() != Some("nearest")
        || text(resize, "coordinate_transformation_mode").as_deref() != Some("asymmetric")
        || !floor_like
        || !ix.only_reader(&resize.output[0])
    {
        return None;
    }
    let scales = ix.weights(resize.input.get(2)?)?.1;
    if scales != [1.0, 1.0, 2.0, 2.0] {
        return None;
    }
    let x = resize.input[0].clone();
    let up_channels = ix.channels(g, &x)?;
    Some(Site {
        conv: ci,
        concat: concat_ix,
        resize: resize_ix,
        x,
        skip: concat.input[1].clone(),
        up_channels,
    })
}

/// The 2x2 kernel of output phase `(a, b)` from the upsampled part of a 3x3 kernel: for phase 0
/// the low-resolution rows `i-1, i` take taps `{0}`, `{1, 2}`; for phase 1 rows `i, i+1` take
/// `{0, 1}`, `{2}`.
fn phase_kernel(w: &[f32], cout: usize, cin: usize, cu: usize, a: usize, b: usize) -> Vec<f32> {
    let taps = |phase: usize, p: usize| -> &'static [usize] {
        match (phase, p) {
            (0, 0) => &[0],
            (0, _) => &[1, 2],
            (_, 0) => &[0, 1],
            _ => &[2],
        }
    };
    let mut k = vec![0.0; cout * cu * 4];
    for o in 0..cout {
        for c in 0..cu {
            for p in 0..2 {
                for q in 0..2 {
                    let mut s = 0.0;
                    for &dy in taps(a, p) {
                        for &dx in taps(b, q) {
                            s += w[((o * cin + c) * 3 + dy) * 3 + dx];
                        }
                    }
                    k[((o * cu + c) * 2 + p) * 2 + q] = s;
                }
            }
        }
    }
    k
}

/// Rewrites every foldable decoder convolution; returns the new model and how many were folded
/// (0: the model is returned unchanged).
pub fn fold(model: &pb::ModelProto) -> Result<(pb::ModelProto, usize)> {
    let Some(g) = model.graph.as_ref() else {
        return Ok((model.clone(), 0));
    };
    let ix = Index::new(g);
    let sites: Vec<Site> = (0..g.node.len())
        .filter_map(|ci| find_site(g, &ix, ci))
        .collect();
    if sites.is_empty() {
        return Ok((model.clone(), 0));
    }
    let mut replaced: HashMap<usize, Vec<pb::NodeProto>> = HashMap::new();
    let mut dropped = HashSet::new();
    let mut inits = Vec::new();
    for (k, s) in sites.iter().enumerate() {
        let conv = &g.node[s.conv];
        let Some((dims, w)) = ix.weights(&conv.input[1]) else {
            continue;
        };
        let (cout, cin) = (dims[0], dims[1]);
        let cu = s.up_channels;
        if dims[2..] != [3, 3] || cu == 0 || cu >= cin {
            continue;
        }
        let mut b = GraphBuilder::new("fold");
        let stem = format!("upfold{k}");
        // One 2x2 convolution, padded by 1 on every side, computes all four phases at once
        // (one patch matrix, one matrix product with 4·Cout rows): its output pixel (u, v)
        // reads rows u-1, u and columns v-1, v of x, so phase (a, b) at (i, j) is its pixel
        // (i + a, j + b) in the phase's block of channels.
        let kernels: Vec<f32> = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .iter()
            .flat_map(|&(a, bb)| phase_kernel(&w, cout, cin, cu, a, bb))
            .collect();
        let kw = b.init_f32(&format!("{stem}.phases"), &[4 * cout, cu, 2, 2], &kernels)?;
        let all = b.node(
            "Conv",
            &[&s.x, &kw],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ],
        );
        let mut phases = Vec::new();
        for (blk, (a, bb)) in [(0i64, 0i64), (0, 1), (1, 0), (1, 1)]
            .into_iter()
            .enumerate()
        {
            let c = cout as i64;
            // The phase's h x w window of the (h+1) x (w+1) output: rows a..h+a.
            let end = |p: i64| if p == 0 { -1 } else { i64::MAX };
            let starts = b.init_i64("starts", &[3], &[blk as i64 * c, a, bb])?;
            let ends = b.init_i64("ends", &[3], &[(blk as i64 + 1) * c, end(a), end(bb)])?;
            let axes = b.init_i64("axes", &[3], &[1, 2, 3])?;
            phases.push(b.node("Slice", &[&all, &starts, &ends, &axes], &[]));
        }
        let refs: Vec<&str> = phases.iter().map(String::as_str).collect();
        let stacked = b.node("Concat", &refs, &[("axis", Attr::Int(1))]);
        let up = b.node(
            "DepthToSpace",
            &[&stacked],
            &[
                ("blocksize", Attr::Int(2)),
                ("mode", Attr::Str("DCR".into())),
            ],
        );
        let cs = cin - cu;
        let ws: Vec<f32> = (0..cout)
            .flat_map(|o| w[(o * cin + cu) * 9..(o * cin + cin) * 9].iter().copied())
            .collect();
        let ws = b.init_f32(&format!("{stem}.skip"), &[cout, cs, 3, 3], &ws)?;
        let bias = conv
            .input
            .get(2)
            .filter(|b| !b.is_empty())
            .map(String::as_str);
        let skip = b.conv(&s.skip, &ws, bias, ConvSpec::same(3));
        let sum = b.add(&up, &skip);
        let mut built = b.finish().graph.unwrap_or_default();
        // The builder's names are fresh only within this site: prefix them, and give the sum
        // the replaced convolution's output name.
        let fresh: HashSet<String> = built
            .node
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .chain(built.initializer.iter().map(|t| t.name.clone()))
            .collect();
        for n in &mut built.node {
            for v in n.input.iter_mut().chain(n.output.iter_mut()) {
                if *v == sum {
                    *v = conv.output[0].clone();
                } else if fresh.contains(v.as_str()) {
                    *v = format!("{stem}/{v}");
                }
            }
            n.name = format!("{stem}/{}", n.name);
        }
        for t in &mut built.initializer {
            t.name = format!("{stem}/{}", t.name);
        }
        inits.extend(built.initializer);
        replaced.insert(s.conv, built.node);
        dropped.insert(s.concat);
        dropped.insert(s.resize);
    }
    let folded = replaced.len();
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("checked");
    og.node = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| match replaced.remove(&i) {
            Some(nodes) => nodes,
            None if dropped.contains(&i) => vec![],
            None => vec![n.clone()],
        })
        .collect();
    og.initializer.extend(inits);
    Ok((out, folded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_without_the_pattern_are_left_alone() {
        use crate::onnx_writer::{Dim, ElemType};
        let mut g = GraphBuilder::new("g");
        let dims = [Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(4)];
        let x = g.input("x", ElemType::F32, &dims);
        let y = g.relu(&x);
        g.output(&y, ElemType::F32, &dims);
        let m = g.finish();
        let (same, n) = fold(&m).unwrap();
        assert_eq!(n, 0);
        assert_eq!(same, m);
    }
}
