//! The seed U-Net architecture (Ronneberger 2015, sized as in the Keras DSB2018 tutorial) as plain
//! data: layer shapes, weights, and its ONNX graph. The trainer fills the weights; this module
//! writes them, so training and the edge runtime agree on one layer order.

use crate::contract::ModelMeta;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use tract_onnx::pb;
use unet_graph::onnx_writer::{ConvSpec, Dim, ElemType, GraphBuilder};

/// Shape of the U-Net: `base` filters at full resolution, doubled at each of `depth` levels,
/// and `outputs` channels out of the 1x1 head (see [`crate::contract::CHANNEL_NAMES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UNetSpec {
    /// Filters of the first encoder level (16 in the seed: 16-32-64-128, bottleneck 256).
    pub base: usize,
    /// Number of 2x down-sampling steps (4 in the seed).
    pub depth: usize,
    /// Output channels: 1 (foreground, the seed), 2 (foreground, core), or 2 + R: foreground,
    /// core and R star-convex ray distances (see [`crate::post::star`]).
    pub outputs: usize,
}

impl Default for UNetSpec {
    fn default() -> Self {
        UNetSpec {
            base: 16,
            depth: 4,
            outputs: 1,
        }
    }
}

/// One convolution's shape and parameters (weights OIHW, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    /// Stable layer name, e.g. `enc0.conv1`.
    pub name: String,
    /// Output channels.
    pub out_ch: usize,
    /// Input channels.
    pub in_ch: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// OIHW weights.
    pub weight: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
}

/// A complete set of U-Net weights in the canonical layer order of [`UNetSpec::layer_shapes`].
#[derive(Clone, Debug, PartialEq)]
pub struct UNetWeights {
    /// Architecture.
    pub spec: UNetSpec,
    /// Layers in canonical order.
    pub layers: Vec<ConvLayer>,
}

impl UNetSpec {
    /// Channels at level `l` (0 = full resolution, `depth` = bottleneck).
    pub fn channels(&self, l: usize) -> usize {
        self.base << l
    }

    /// (name, out, in, kernel) of every convolution in the order the graph uses them.
    pub fn layer_shapes(&self) -> Vec<(String, usize, usize, usize)> {
        let mut v = Vec::new();
        let mut cin = 1;
        for l in 0..self.depth {
            let c = self.channels(l);
            v.push((format!("enc{l}.conv1"), c, cin, 3));
            v.push((format!("enc{l}.conv2"), c, c, 3));
            cin = c;
        }
        let cb = self.channels(self.depth);
        v.push(("mid.conv1".into(), cb, cin, 3));
        v.push(("mid.conv2".into(), cb, cb, 3));
        let mut below = cb;
        for l in (0..self.depth).rev() {
            let c = self.channels(l);
            // Nearest upsampling keeps the channels below; the skip adds c more.
            v.push((format!("dec{l}.conv1"), c, below + c, 3));
            v.push((format!("dec{l}.conv2"), c, c, 3));
            below = c;
        }
        v.push(("head".into(), self.outputs, self.base, 1));
        v
    }

    /// Multiply-accumulates of one forward pass on a `size`x`size` single-channel input.
    pub fn macs(&self, size: usize) -> u64 {
        let names = self.layer_shapes();
        names
            .iter()
            .map(|(name, o, i, k)| {
                let level = level_of(name, self.depth);
                let s = (size >> level) as u64;
                s * s * (*o * *i * k * k) as u64
            })
            .sum()
    }

    /// Side of the smallest input the net accepts: sizes must be multiples of `2^depth`.
    pub fn size_multiple(&self) -> usize {
        1 << self.depth
    }

    /// Seeded He-normal weights and zero biases, as a freshly initialised network has.
    pub fn random_weights(&self, seed: u64) -> UNetWeights {
        let mut rng = Rng::new(seed);
        let layers = self
            .layer_shapes()
            .into_iter()
            .map(|(name, out_ch, in_ch, kernel)| {
                let fan_in = (in_ch * kernel * kernel) as f32;
                let std = (2.0 / fan_in).sqrt();
                let weight = (0..out_ch * in_ch * kernel * kernel)
                    .map(|_| rng.normal() * std)
                    .collect();
                let bias = (0..out_ch).map(|_| 0.05 * rng.normal()).collect();
                ConvLayer {
                    name,
                    out_ch,
                    in_ch,
                    kernel,
                    weight,
                    bias,
                }
            })
            .collect();
        UNetWeights {
            spec: *self,
            layers,
        }
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.layer_shapes()
            .iter()
            .map(|(_, o, i, k)| o * i * k * k + o)
            .sum()
    }
}

/// Parses `unet base=16 depth=4 outputs=2` (the architecture metadata [`UNetWeights::to_onnx`]
/// writes; `outputs` absent means 1).
fn parse_architecture(s: &str) -> Result<UNetSpec> {
    let mut words = s.split_whitespace();
    if words.next() != Some("unet") {
        bail!("architecture {s:?} is not a U-Net (expected \"unet base=B depth=D outputs=C\")");
    }
    let mut spec = UNetSpec::default();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .with_context(|| format!("architecture {s:?}: {w:?} is not key=value"))?;
        let v: usize = v
            .parse()
            .with_context(|| format!("architecture {s:?}: {k} is not a number"))?;
        match k {
            "base" => spec.base = v,
            "depth" => spec.depth = v,
            "outputs" => spec.outputs = v,
            _ => bail!("architecture {s:?}: unknown key {k:?} (base, depth, outputs)"),
        }
    }
    if spec.base == 0 || spec.depth == 0 || spec.depth > 8 || !outputs_have_meaning(spec.outputs) {
        bail!(
            "architecture {s:?}: base and depth (1..=8) must be positive, outputs 1, 2 or 2 + \
             3..={} star rays",
            crate::post::star::MAX_RAYS
        );
    }
    Ok(spec)
}

/// Whether a head of `outputs` channels means something in the contract: foreground, core, then
/// 3 to [`crate::post::star::MAX_RAYS`] star rays.
pub fn outputs_have_meaning(outputs: usize) -> bool {
    (1..=2).contains(&outputs) || (5..=2 + crate::post::star::MAX_RAYS).contains(&outputs)
}

/// Resolution level (number of 2x downsamplings) at which a named layer runs.
fn level_of(name: &str, depth: usize) -> usize {
    if name.starts_with("mid") {
        return depth;
    }
    if name == "head" {
        return 0;
    }
    name[3..4].parse().unwrap_or(0)
}

impl UNetWeights {
    /// [`UNetWeights::from_onnx`] on the ONNX file at `path`.
    pub fn read_onnx(path: &std::path::Path) -> Result<UNetWeights> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        unet_graph::onnx_writer::decode(&bytes)
            .and_then(|m| UNetWeights::from_onnx(&m))
            .with_context(|| format!("reading U-Net weights from {}", path.display()))
    }

    /// Reads the weights back from an ONNX model written by [`UNetWeights::to_onnx`]: the
    /// architecture from its `unet_edge.architecture` metadata, each layer from the initializers
    /// `<layer>.weight` and `<layer>.bias`. The trainer starts fine-tuning from a shipped model
    /// this way, without the run directory that produced it.
    pub fn from_onnx(model: &pb::ModelProto) -> Result<UNetWeights> {
        let arch = model
            .metadata_props
            .iter()
            .find(|p| p.key == crate::contract::KEY_ARCHITECTURE)
            .map(|p| p.value.as_str())
            .with_context(|| {
                format!(
                    "no {} metadata: not a U-Net written by this project",
                    crate::contract::KEY_ARCHITECTURE
                )
            })?;
        let spec = parse_architecture(arch)?;
        let graph = model.graph.as_ref().context("the model has no graph")?;
        // The writer numbers initializer names (`enc0.conv1.weight_1`), so layers are found as
        // the graph uses them: the k-th Conv node is the k-th layer of the spec.
        let convs: Vec<&pb::NodeProto> =
            graph.node.iter().filter(|n| n.op_type == "Conv").collect();
        let shapes = spec.layer_shapes();
        if convs.len() != shapes.len() {
            bail!(
                "architecture {arch:?} has {} convolutions, the graph {}",
                shapes.len(),
                convs.len()
            );
        }
        let find = |layer: &str, input: Option<&String>, len: usize| -> Result<Vec<f32>> {
            let t = input
                .and_then(|name| graph.initializer.iter().find(|t| &t.name == name))
                .with_context(|| {
                    format!("layer {layer}: a weight or bias initializer is missing")
                })?;
            let (_, v) =
                unet_graph::onnx_writer::tensor_f32(t).with_context(|| format!("layer {layer}"))?;
            if v.len() != len {
                bail!(
                    "layer {layer}: initializer {:?} holds {} values, expected {len}",
                    t.name,
                    v.len()
                );
            }
            Ok(v)
        };
        let layers = shapes
            .into_iter()
            .zip(convs)
            .map(|((name, out_ch, in_ch, kernel), node)| {
                Ok(ConvLayer {
                    weight: find(&name, node.input.get(1), out_ch * in_ch * kernel * kernel)?,
                    bias: find(&name, node.input.get(2), out_ch)?,
                    name,
                    out_ch,
                    in_ch,
                    kernel,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let w = UNetWeights { spec, layers };
        w.validate()?;
        Ok(w)
    }

    /// The element-wise mean of several weight sets of one architecture: checkpoint averaging
    /// (stochastic weight averaging, Izmailov et al. 2018), which evens out the
    /// checkpoint-to-checkpoint noise at the end of a run.
    pub fn average(sets: &[UNetWeights]) -> Result<UNetWeights> {
        let first = sets.first().context("no weight sets to average")?;
        first.validate()?;
        for (i, s) in sets.iter().enumerate().skip(1) {
            if s.spec != first.spec {
                bail!(
                    "weight set {} is {:?} but the first is {:?}: only one architecture can be averaged",
                    i + 1,
                    s.spec,
                    first.spec
                );
            }
            s.validate()?;
        }
        let mut out = first.clone();
        let scale = 1.0 / sets.len() as f64;
        for (k, layer) in out.layers.iter_mut().enumerate() {
            let mean = |pick: &dyn Fn(&ConvLayer) -> &[f32], dst: &mut [f32]| {
                for (j, d) in dst.iter_mut().enumerate() {
                    let sum: f64 = sets.iter().map(|s| pick(&s.layers[k])[j] as f64).sum();
                    *d = (sum * scale) as f32;
                }
            };
            mean(&|l| &l.weight, &mut layer.weight);
            mean(&|l| &l.bias, &mut layer.bias);
        }
        Ok(out)
    }

    /// Checks every layer against the spec's shapes.
    pub fn validate(&self) -> Result<()> {
        let shapes = self.spec.layer_shapes();
        if shapes.len() != self.layers.len() {
            bail!(
                "U-Net {:?} has {} layers, weights give {}",
                self.spec,
                shapes.len(),
                self.layers.len()
            );
        }
        for ((name, o, i, k), l) in shapes.iter().zip(&self.layers) {
            if l.name != *name || l.out_ch != *o || l.in_ch != *i || l.kernel != *k {
                bail!(
                    "layer {}: expected {name} {o}x{i}x{k}x{k}, got {} {}x{}x{}x{}",
                    l.name,
                    l.name,
                    l.out_ch,
                    l.in_ch,
                    l.kernel,
                    l.kernel
                );
            }
            if l.weight.len() != o * i * k * k || l.bias.len() != *o {
                bail!("layer {name}: weight or bias length does not match {o}x{i}x{k}x{k}");
            }
        }
        Ok(())
    }

    /// The ONNX model: input `input` [N,1,H,W] (symbolic), output `prob` [N,C,H,W], sigmoid
    /// applied; the metadata's channel names are set from the spec.
    pub fn to_onnx(&self, meta: &ModelMeta) -> Result<pb::ModelProto> {
        self.validate()?;
        let names = &crate::contract::CHANNEL_NAMES;
        if !outputs_have_meaning(self.spec.outputs) {
            bail!(
                "a U-Net head with {} outputs has no meaning in the contract (1, 2 or 2 + 3..={} \
                 star rays)",
                self.spec.outputs,
                crate::post::star::MAX_RAYS
            );
        }
        let named = self.spec.outputs.min(names.len());
        let meta = ModelMeta {
            channels: names[..named].iter().map(|c| c.to_string()).collect(),
            star_rays: self.spec.outputs - named,
            ..meta.clone()
        };
        let out_shape = [
            Dim::Symbol("N".into()),
            Dim::Fixed(self.spec.outputs),
            Dim::Symbol("H".into()),
            Dim::Symbol("W".into()),
        ];
        let mut g = GraphBuilder::new("unet");
        let shape = [
            Dim::Symbol("N".into()),
            Dim::Fixed(1),
            Dim::Symbol("H".into()),
            Dim::Symbol("W".into()),
        ];
        let mut x = g.input("input", ElemType::F32, &shape);
        let mut layers = self.layers.iter();
        let mut conv_relu = |g: &mut GraphBuilder, x: &str| -> Result<String> {
            let l = layers.next().expect("validated layer count");
            let w = g.init_f32(
                &format!("{}.weight", l.name),
                &[l.out_ch, l.in_ch, l.kernel, l.kernel],
                &l.weight,
            )?;
            let b = g.init_f32(&format!("{}.bias", l.name), &[l.out_ch], &l.bias)?;
            let y = g.conv(x, &w, Some(&b), ConvSpec::same(l.kernel));
            Ok(if l.name == "head" { y } else { g.relu(&y) })
        };
        let mut skips = Vec::new();
        for _ in 0..self.spec.depth {
            x = conv_relu(&mut g, &x)?;
            x = conv_relu(&mut g, &x)?;
            skips.push(x.clone());
            x = g.maxpool2(&x);
        }
        x = conv_relu(&mut g, &x)?;
        x = conv_relu(&mut g, &x)?;
        for skip in skips.iter().rev() {
            let up = g.upsample2_nearest(&x)?;
            x = g.concat_channels(&[&up, skip]);
            x = conv_relu(&mut g, &x)?;
            x = conv_relu(&mut g, &x)?;
        }
        let logits = conv_relu(&mut g, &x)?;
        let prob = g.sigmoid(&logits);
        // Rename the last node's output to a stable name tools can rely on.
        let mut model = {
            g.output(&prob, ElemType::F32, &out_shape);
            for (k, v) in meta.to_props() {
                g.metadata(&k, &v);
            }
            g.metadata(
                crate::contract::KEY_ARCHITECTURE,
                &format!(
                    "unet base={} depth={} outputs={}",
                    self.spec.base, self.spec.depth, self.spec.outputs
                ),
            );
            g.finish()
        };
        unet_graph::onnx_writer::rename_value(&mut model, &prob, "prob");
        Ok(model)
    }
}

#[cfg(test)]
pub(crate) mod reference {
    //! A direct, obviously-correct evaluation of the U-Net, to check what tract computes.
    use super::*;

    /// A CHW tensor.
    pub struct Chw {
        pub c: usize,
        pub h: usize,
        pub w: usize,
        pub d: Vec<f32>,
    }

    fn conv(x: &Chw, l: &ConvLayer, relu: bool) -> Chw {
        let (h, w, k) = (x.h, x.w, l.kernel);
        let p = (k / 2) as isize;
        let mut d = vec![0.0f32; l.out_ch * h * w];
        for o in 0..l.out_ch {
            for yy in 0..h {
                for xx in 0..w {
                    let mut acc = l.bias[o] as f64;
                    for i in 0..l.in_ch {
                        for ky in 0..k {
                            for kx in 0..k {
                                let sy = yy as isize + ky as isize - p;
                                let sx = xx as isize + kx as isize - p;
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                    continue;
                                }
                                let wv = l.weight[((o * l.in_ch + i) * k + ky) * k + kx];
                                acc += (wv * x.d[(i * h + sy as usize) * w + sx as usize]) as f64;
                            }
                        }
                    }
                    let v = acc as f32;
                    d[(o * h + yy) * w + xx] = if relu { v.max(0.0) } else { v };
                }
            }
        }
        Chw {
            c: l.out_ch,
            h,
            w,
            d,
        }
    }

    fn pool(x: &Chw) -> Chw {
        let (h, w) = (x.h / 2, x.w / 2);
        let mut d = vec![0.0; x.c * h * w];
        for c in 0..x.c {
            for y in 0..h {
                for xx in 0..w {
                    let at = |dy, dx| x.d[(c * x.h + 2 * y + dy) * x.w + 2 * xx + dx];
                    d[(c * h + y) * w + xx] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                }
            }
        }
        Chw { c: x.c, h, w, d }
    }

    fn up_concat(x: &Chw, skip: &Chw) -> Chw {
        let (h, w) = (skip.h, skip.w);
        let mut d = Vec::with_capacity((x.c + skip.c) * h * w);
        for c in 0..x.c {
            for y in 0..h {
                for xx in 0..w {
                    d.push(x.d[(c * x.h + y / 2) * x.w + xx / 2]);
                }
            }
        }
        d.extend_from_slice(&skip.d);
        Chw {
            c: x.c + skip.c,
            h,
            w,
            d,
        }
    }

    /// Probability map of a single-channel `h`x`w` image.
    pub fn forward(wts: &UNetWeights, img: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut it = wts.layers.iter();
        let mut x = Chw {
            c: 1,
            h,
            w,
            d: img.to_vec(),
        };
        let mut skips = Vec::new();
        for _ in 0..wts.spec.depth {
            x = conv(&x, it.next().unwrap(), true);
            x = conv(&x, it.next().unwrap(), true);
            let p = pool(&x);
            skips.push(x);
            x = p;
        }
        x = conv(&x, it.next().unwrap(), true);
        x = conv(&x, it.next().unwrap(), true);
        for skip in skips.iter().rev() {
            x = up_concat(&x, skip);
            x = conv(&x, it.next().unwrap(), true);
            x = conv(&x, it.next().unwrap(), true);
        }
        let y = conv(&x, it.next().unwrap(), false);
        y.d.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;
    use unet_graph::onnx_writer;

    #[test]
    fn weights_read_back_from_the_written_onnx_equal_the_originals() {
        let spec = UNetSpec {
            base: 4,
            depth: 2,
            outputs: 2,
        };
        let wts = spec.random_weights(7);
        let bytes = onnx_writer::encode(&wts.to_onnx(&ModelMeta::default()).unwrap());
        let back = UNetWeights::from_onnx(&onnx_writer::decode(&bytes).unwrap()).unwrap();
        assert_eq!(back, wts);

        let mut no_arch = wts.to_onnx(&ModelMeta::default()).unwrap();
        no_arch
            .metadata_props
            .retain(|p| p.key != crate::contract::KEY_ARCHITECTURE);
        let e = UNetWeights::from_onnx(&no_arch).unwrap_err().to_string();
        assert!(e.contains("unet_edge.architecture"), "{e}");
        let mut missing = wts.to_onnx(&ModelMeta::default()).unwrap();
        missing
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .retain(|t| !t.name.starts_with("mid.conv2.bias"));
        let e = UNetWeights::from_onnx(&missing).unwrap_err().to_string();
        assert!(e.contains("layer mid.conv2"), "{e}");
        assert!(parse_architecture("unet base=16 depth=4 outputs=3").is_err());
        assert_eq!(
            parse_architecture("unet base=16 depth=4").unwrap(),
            UNetSpec::default()
        );
    }

    #[test]
    fn seed_shapes_and_cost() {
        let s = UNetSpec::default();
        let shapes = s.layer_shapes();
        assert_eq!(shapes.len(), 19);
        assert_eq!(shapes[8], ("mid.conv1".to_string(), 256, 128, 3));
        assert_eq!(shapes[16], ("dec0.conv1".to_string(), 16, 48, 3));
        // ~870 M MAC per 128x128 tile for this architecture.
        let macs = s.macs(128);
        assert!((860_000_000..880_000_000).contains(&macs), "{macs}");
    }

    #[test]
    fn a_star_head_is_written_as_foreground_core_and_rays_and_read_back() {
        let spec = UNetSpec {
            base: 4,
            depth: 2,
            outputs: 2 + 8,
        };
        let wts = spec.random_weights(3);
        let bytes = onnx_writer::encode(&wts.to_onnx(&ModelMeta::default()).unwrap());
        let meta = crate::engine::model::Model::from_bytes(&bytes, "test")
            .unwrap()
            .meta;
        assert_eq!(meta.channels, ["foreground", "core"]);
        assert_eq!((meta.star_rays, meta.output_channels()), (8, 10));
        let back = UNetWeights::from_onnx(&onnx_writer::decode(&bytes).unwrap());
        assert_eq!(back.unwrap().spec, spec);
        // Two or three rays make no polygon: no such head is written.
        for outputs in [3, 4, 2 + crate::post::star::MAX_RAYS + 1] {
            let wts = UNetSpec { outputs, ..spec }.random_weights(3);
            assert!(wts.to_onnx(&ModelMeta::default()).is_err(), "{outputs}");
        }
    }

    #[test]
    fn written_unet_runs_in_tract_and_matches_direct_evaluation() {
        // Two output channels, so the head's channel order is checked too.
        let spec = UNetSpec {
            outputs: 2,
            ..UNetSpec::default()
        };
        let wts = spec.random_weights(42);
        let bytes = onnx_writer::encode(&wts.to_onnx(&ModelMeta::default()).unwrap());
        let (h, w) = (32, 48);
        let mut rng = Rng::new(1);
        let img: Vec<f32> = (0..h * w).map(|_| rng.uniform()).collect();
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .with_input_fact(0, f32::fact([1, 1, h, w]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable_with_options(&Default::default())
            .unwrap();
        let input = Tensor::from_shape(&[1, 1, h, w], &img).unwrap();
        let out = model.run(tvec!(input.into())).unwrap().remove(0);
        let view = out.to_plain_array_view::<f32>().unwrap();
        let got = view.as_slice().unwrap();
        let want = reference::forward(&wts, &img, h, w);
        assert_eq!((got.len(), want.len()), (2 * h * w, 2 * h * w));
        let meta = crate::engine::model::Model::from_bytes(&bytes, "test")
            .unwrap()
            .meta;
        assert_eq!(meta.channels, ["foreground", "core"]);
        let max = unet_graph::testing::max_abs_diff(got, &want);
        assert!(max <= 1e-4, "max abs diff {max}");
        // The output must not be a constant, or the comparison proves little.
        let spread = want.iter().copied().fold(f32::MIN, f32::max)
            - want.iter().copied().fold(f32::MAX, f32::min);
        assert!(spread > 0.01, "{spread}");
    }

    #[test]
    fn average_is_the_element_wise_mean_and_refuses_other_architectures() {
        let spec = UNetSpec {
            base: 2,
            depth: 1,
            outputs: 2,
        };
        let (a, b, c) = (
            spec.random_weights(1),
            spec.random_weights(2),
            spec.random_weights(3),
        );
        let m = UNetWeights::average(&[a.clone(), b.clone(), c.clone()]).unwrap();
        for k in 0..a.layers.len() {
            for j in 0..a.layers[k].weight.len() {
                let want =
                    (a.layers[k].weight[j] + b.layers[k].weight[j] + c.layers[k].weight[j]) / 3.0;
                assert!((m.layers[k].weight[j] - want).abs() < 1e-6);
            }
            let want = (a.layers[k].bias[0] + b.layers[k].bias[0] + c.layers[k].bias[0]) / 3.0;
            assert!((m.layers[k].bias[0] - want).abs() < 1e-6);
        }
        assert_eq!(UNetWeights::average(std::slice::from_ref(&a)).unwrap(), a);
        let other = UNetSpec { outputs: 1, ..spec }.random_weights(4);
        let e = UNetWeights::average(&[a, other]).unwrap_err().to_string();
        assert!(e.contains("weight set 2"), "{e}");
        assert!(UNetWeights::average(&[]).is_err());
    }

    #[test]
    fn validate_rejects_wrong_shapes() {
        let mut w = UNetSpec {
            base: 4,
            depth: 2,
            outputs: 1,
        }
        .random_weights(0);
        w.layers[1].weight.pop();
        assert!(w.validate().is_err());
        w.layers.pop();
        assert!(w.validate().is_err());
    }
}
