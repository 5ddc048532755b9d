//! The project's f32 convolution (see [`super`] for the layout): bias and an optional ReLU in
//! the epilogue, so tract's im2col, matmul packing, pad and activation passes are all gone.
//!
//! tract's float convolution is im2col + its matmul; on the seed U-Net the 16-channel layers at
//! 128x128 ran far below the CPU's FMA peak and the patch matrix, pads and axis moves around it
//! cost another 3 ms of an 18 ms tile. Here the micro-kernel keeps 8 output channels x 48 pixels
//! in 24 registers and, per tap and input channel, loads 3 vectors of 16 input pixels and
//! multiplies each by 8 broadcast weights: 24 FMAs per 11 loads, no data rearranged.

use super::{conv_geometry, konst, per_channel, swap_in, Geometry, KernelPath};
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::Conv;

/// A float convolution with constant weights and bias, optionally followed by a ReLU.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct ConvF32 {
    /// Shape.
    pub geo: Geometry,
    /// Weights, OIHW.
    pub weights: Arc<Tensor>,
    /// Bias, one per output channel.
    pub bias: Arc<Tensor>,
    /// Whether a ReLU follows in the epilogue.
    pub relu: bool,
    /// Weights packed for `path`: `[oc tile][cin][tap][oc_tile]`, the kernel's loop order.
    pub(super) packed: Arc<Tensor>,
    /// Output channels per micro-kernel call ([`super::oc_tile_for`]).
    pub(super) oc_tile: usize,
    /// The implementation that runs.
    pub path: KernelPath,
}

impl Eq for ConvF32 {}

impl ConvF32 {
    /// The convolution of `weights` (OIHW) and `bias` run by `path`.
    pub fn new(
        geo: Geometry,
        weights: Vec<f32>,
        bias: Vec<f32>,
        path: KernelPath,
    ) -> TractResult<ConvF32> {
        let taps = geo.taps();
        ensure!(
            weights.len() == geo.cout * geo.cin * taps,
            "ConvF32: weights of wrong size"
        );
        ensure!(bias.len() == geo.cout, "ConvF32: bias of wrong size");
        ensure!(
            geo.out_hw().is_some(),
            "ConvF32: kernel larger than its input"
        );
        let oc_tile = super::oc_tile_for(&geo);
        let packed = match path {
            KernelPath::Reference => vec![],
            _ => {
                let tiles = geo.cout.div_ceil(oc_tile);
                let mut p = vec![0f32; tiles * taps * geo.cin * oc_tile];
                for oc in 0..geo.cout {
                    for ci in 0..geo.cin {
                        for t in 0..taps {
                            let dst = (((oc / oc_tile) * geo.cin + ci) * taps + t) * oc_tile
                                + oc % oc_tile;
                            p[dst] = weights[(oc * geo.cin + ci) * taps + t];
                        }
                    }
                }
                p
            }
        };
        Ok(ConvF32 {
            geo,
            weights: tensor1(&weights).into_arc_tensor(),
            bias: tensor1(&bias).into_arc_tensor(),
            relu: false,
            packed: tensor1(&packed).into_arc_tensor(),
            oc_tile,
            path,
        })
    }

    /// The same convolution run by another path (tests compare paths).
    pub fn with_path(&self, path: KernelPath) -> TractResult<ConvF32> {
        let mut c = ConvF32::new(
            self.geo,
            self.weights().to_vec(),
            self.bias().to_vec(),
            path,
        )?;
        c.relu = self.relu;
        Ok(c)
    }

    fn weights(&self) -> &[f32] {
        super::f32s(&self.weights)
    }

    pub(super) fn bias(&self) -> &[f32] {
        super::f32s(&self.bias)
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn packed(&self) -> &[f32] {
        super::f32s(&self.packed)
    }

    /// Convolves one image: `x` is `cin x H x W`, `y` is `cout x Ho x Wo`.
    pub fn run_image(&self, x: &[f32], y: &mut [f32]) {
        let (h, w) = self.geo.hw;
        let (ho, wo) = self.geo.out_hw().expect("checked in new");
        assert_eq!(x.len(), self.geo.cin * h * w);
        assert_eq!(y.len(), self.geo.cout * ho * wo);
        match self.path {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512F => super::x86_float::run_avx512f(self, x, y),
            _ => self.run_reference(x, y),
        }
    }

    /// The definition: `bias + Σ x·k` over the taps inside the input, then the ReLU.
    fn run_reference(&self, x: &[f32], y: &mut [f32]) {
        let g = &self.geo;
        let (ho, wo) = g.out_hw().expect("checked in new");
        let (weights, bias) = (self.weights(), self.bias());
        for oc in 0..g.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0f64;
                    g.for_each_tap(oc, oy, ox, |xi, ki| {
                        acc += x[xi] as f64 * weights[ki] as f64
                    });
                    let v = (acc + bias[oc] as f64) as f32;
                    y[(oc * ho + oy) * wo + ox] = if self.relu { v.max(0.0) } else { v };
                }
            }
        }
    }
}

impl Op for ConvF32 {
    fn name(&self) -> StaticName {
        "ConvF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!(
            "{}→{} {}x{} on {}x{}{}, {}",
            g.cin,
            g.cout,
            g.kernel.0,
            g.kernel.1,
            g.hw.0,
            g.hw.1,
            if self.relu { " + ReLU" } else { "" },
            self.path
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ConvF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let g = &self.geo;
        let (ho, wo) = g.out_hw().expect("checked in new");
        let batch = g.check_input("ConvF32", &x)?;
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        // SAFETY: `run_image` writes every output element of each image.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[batch, g.cout, ho, wo])? };
        {
            let mut plain = y.try_as_plain_ram_mut()?;
            let ys = plain.as_slice_mut::<f32>()?;
            let (xn, yn) = (g.cin * g.hw.0 * g.hw.1, g.cout * ho * wo);
            for (xb, yb) in xs.chunks(xn).zip(ys.chunks_mut(yn)) {
                self.run_image(xb, yb);
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ConvF32 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.geo.output_shape(inputs[0].shape[0].clone());
        Ok(tvec!(f32::fact(&*shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(f32::datum_type()), self.geo.macs())))
    }
}

/// The [`ConvF32`] equivalent of a float tract `Conv` node with constant weights and bias.
pub fn replacement(
    model: &TypedModel,
    node: &TypedNode,
    path: KernelPath,
) -> TractResult<Option<ConvF32>> {
    let Some(op) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    if op.q_params.is_some()
        || node.inputs.len() != 3
        || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type()
    {
        return Ok(None);
    }
    let Some(geo) = conv_geometry(model, node, op)? else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) = (konst(model, node.inputs[1])?, konst(model, node.inputs[2])?)
    else {
        return Ok(None);
    };
    if kernel.datum_type() != f32::datum_type()
        || bias.datum_type() != f32::datum_type()
        || kernel.shape() != [geo.cout, geo.cin, geo.kernel.0, geo.kernel.1]
    {
        return Ok(None);
    }
    let weights = kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let Some(bias) = per_channel(bias, geo.cout) else {
        return Ok(None);
    };
    Ok(Some(ConvF32::new(geo, weights, bias, path)?))
}

/// Float `Conv` → [`ConvF32`] on the CPU's fastest path; none where this CPU has no kernel of
/// the project's.
pub fn swap_conv(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(path) = KernelPath::detect_float() else {
        return Ok(None);
    };
    let Some(op) = replacement(model, node, path)? else {
        return Ok(None);
    };
    Ok(Some(swap_in(model, node, op)?))
}

/// `ConvF32 → Max(·, 0)` (ONNX Relu as tract declutters it) → `ConvF32` with the ReLU in its
/// epilogue, when the convolution's only consumer is the ReLU.
pub fn fuse_relu(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if bin.0.name() != "Max" || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (conv_in, zero_in) = if model.node(node.inputs[0].node).op_is::<ConvF32>() {
        (node.inputs[0], node.inputs[1])
    } else {
        (node.inputs[1], node.inputs[0])
    };
    let conv_node = model.node(conv_in.node);
    let Some(conv) = conv_node.op_as::<ConvF32>() else {
        return Ok(None);
    };
    let zero = konst(model, zero_in)?;
    if conv.relu
        || conv_node.outputs[0].successors.len() != 1
        || model.output_outlets()?.contains(&conv_in)
        || !zero.is_some_and(|z| z.len() == 1 && z.cast_to_scalar::<f32>().ok() == Some(0.0))
        || model.outlet_fact(conv_in)? != &node.outputs[0].fact
    {
        return Ok(None);
    }
    let mut fused = conv.clone();
    fused.relu = true;
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, conv_node.inputs[0])?;
    let y = patch.wire_node(&conv_node.name, fused, &[x])?[0];
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Lcg;

    fn random(geo: Geometry, seed: u64, path: KernelPath) -> (ConvF32, Vec<f32>) {
        let mut rng = Lcg::new(seed);
        let mut r = |n: usize| {
            (0..n)
                .map(|_| rng.uniform() * 2.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let w = r(geo.cout * geo.cin * geo.taps());
        let b = r(geo.cout);
        let x = r(geo.cin * geo.hw.0 * geo.hw.1);
        (ConvF32::new(geo, w, b, path).unwrap(), x)
    }

    fn run(conv: &ConvF32, x: &[f32]) -> Vec<f32> {
        let (ho, wo) = conv.geo.out_hw().unwrap();
        let mut y = vec![0f32; conv.geo.cout * ho * wo];
        conv.run_image(x, &mut y);
        y
    }

    #[test]
    fn the_reference_computes_a_hand_checked_convolution() {
        let geo = Geometry {
            cin: 1,
            cout: 1,
            hw: (3, 3),
            kernel: (3, 3),
            pads: [1, 1, 1, 1],
        };
        let mut conv = ConvF32::new(geo, vec![1.0; 9], vec![-20.0], KernelPath::Reference).unwrap();
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        assert_eq!(
            run(&conv, &x),
            vec![-12., -5., -8., 1., 16., 7., 0., 13., 4.]
        );
        conv.relu = true;
        assert_eq!(run(&conv, &x), vec![0., 0., 0., 1., 16., 7., 0., 13., 4.]);
    }

    #[test]
    fn every_detected_path_matches_the_reference_within_1e_4() {
        let Some(path) = KernelPath::detect_float() else {
            eprintln!("no project kernel on this CPU: tract's lowering runs instead");
            return;
        };
        for (i, geo) in super::super::int8::tests::shapes().into_iter().enumerate() {
            for relu in [false, true] {
                let (mut fast, x) = random(geo, 300 + i as u64, path);
                fast.relu = relu;
                let reference = fast.with_path(KernelPath::Reference).unwrap();
                let (a, b) = (run(&reference, &x), run(&fast, &x));
                let worst = crate::testing::max_abs_diff(&a, &b);
                // Sums of up to 2304 products of magnitude ≤ 1.
                let bound = 1e-4f32;
                assert!(worst <= bound, "{path} off by {worst} on {geo:?}");
                if relu {
                    assert!(b.iter().all(|&v| v >= 0.0));
                    assert!(b.contains(&0.0) || b.len() < 8, "{geo:?}");
                }
            }
        }
    }
}
