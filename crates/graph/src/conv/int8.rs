//! The project's own int8 convolution: a direct convolution that never materializes a patch
//! matrix, put into tract's plan in place of a quantized `Conv` before tract lowers it.
//!
//! tract lowers a quantized convolution to im2col + an integer matmul + requantization. Even with
//! the project's faster packer ([`crate::im2col_i8`]) the patch matrix — nine bytes per input byte
//! for a 3x3 kernel — cost three times the arithmetic on the seed U-Net (Im2colI8 12.2 ms of an
//! 18.3 ms tile). This op reads the input in place instead:
//!
//! - The input is copied once into *padded, channel-interleaved planes*: for each group of four
//!   input channels, a `(H+pads) x (W+pads)` plane of 4-byte pixels (the four channels' bytes,
//!   shifted to unsigned by `^ 0x80`), borders filled with the input zero point. One pass over
//!   the input, not nine.
//! - Output pixels are numbered along the padded width (`n = oy·Wp + ox`), so every kernel tap
//!   is one constant offset `ky·Wp + kx` from the output pixel, also across rows; the `Wp − Wo`
//!   columns per row computed past the right edge are dropped when the result is stored.
//! - The micro-kernel keeps `OC x PX` accumulators of 16 output pixels each in registers and,
//!   per tap and channel group, loads PX vectors of 16 input pixels (64 contiguous bytes), and
//!   multiplies them by each output channel's 4 weights broadcast (`vpdpbusd`, u8 x s8 → i32).
//! - The epilogue adds the bias and the zero-point compensation, requantizes exactly like
//!   [`crate::int8_ops::Requantize`] (round half to even, clamp) and stores i8 NCHW rows.
//!
//! Arithmetic: with `u = x + 128` (or `x0 + 128` in the padding), `Σ u·k = Σ (x − x0)·k +
//! (128 + x0)·Σk`, so the accumulator is corrected by the per-channel constant
//! `bias − (128 + x0)·Σk`; padded pixels contribute `(x0 − x0)·k = 0`, as ONNX defines. The
//! integer result is exact, so every kernel path gives the bytes tract's own lowering gives
//! (tested), and masks stay identical between machines that take different paths.
//!
//! Kernel paths are chosen at plan time from the CPU's features ([`KernelPath::detect`]): the
//! AVX-512 VNNI micro-kernel on x86-64 CPUs that have it; elsewhere the convolution is left to
//! tract (the [`KernelPath::Reference`] loop is the definition the tests check against, too slow
//! to ship).

use super::{conv_geometry, ints, konst, per_channel, swap_in, Geometry, KernelPath};
use crate::int8_ops::requantize;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;

/// Requantization of the accumulators: `y = clamp(round_even((acc + comp[c])·scale[c]) + zp)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Epilogue {
    /// Per output channel: `bias − (128 + x0)·Σk` (the unsigned-input correction folded in).
    pub comp: Vec<i32>,
    /// Per output channel: `k_scale·x_scale / y_scale`, computed as tract computes it.
    pub scales: Arc<Tensor>,
    /// Output zero point.
    pub zero_point: i32,
}

/// A quantized convolution with constant weights, run by [`KernelPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvI8 {
    /// Shape.
    pub geo: Geometry,
    /// Input zero point (the value of padded pixels).
    pub x0: i8,
    /// Weights, OIHW.
    pub weights: Arc<Vec<i8>>,
    /// Bias and requantization.
    pub epilogue: Epilogue,
    /// Bias, one per output channel (the reference adds it; the packed paths use `epilogue.comp`).
    bias: Vec<i32>,
    /// Weights packed for `path`.
    pub(super) packed: Arc<Vec<i8>>,
    /// Output channels per micro-kernel call ([`super::oc_tile_for`]).
    pub(super) oc_tile: usize,
    /// The implementation that runs.
    pub path: KernelPath,
    /// Output datum type (i8, carrying the output's quantization parameters).
    pub out_dt: DatumType,
}

impl ConvI8 {
    /// The convolution of `weights` (OIHW), `bias` and requantization factors `scales` (one per
    /// output channel) run by `path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        geo: Geometry,
        x0: i8,
        weights: Vec<i8>,
        bias: &[i32],
        scales: Vec<f32>,
        zero_point: i32,
        path: KernelPath,
        out_dt: DatumType,
    ) -> TractResult<ConvI8> {
        let per_oc = geo.cin * geo.taps();
        ensure!(
            weights.len() == geo.cout * per_oc,
            "ConvI8: weights of wrong size"
        );
        ensure!(bias.len() == geo.cout && scales.len() == geo.cout);
        ensure!(
            geo.out_hw().is_some(),
            "ConvI8: kernel larger than its input"
        );
        let comp = weights
            .chunks(per_oc)
            .zip(bias)
            .map(|(k, &b)| {
                let sum: i64 = k.iter().map(|&v| v as i64).sum();
                let c = b as i64 - (128 + x0 as i64) * sum;
                i32::try_from(c).map_err(|_| format_err!("ConvI8: bias out of i32 range"))
            })
            .collect::<TractResult<Vec<i32>>>()?;
        let oc_tile = super::oc_tile_for(&geo);
        let packed = match path {
            KernelPath::Avx512Vnni => pack_weights(&geo, &weights, oc_tile),
            _ => vec![],
        };
        Ok(ConvI8 {
            geo,
            x0,
            weights: Arc::new(weights),
            bias: bias.to_vec(),
            epilogue: Epilogue {
                comp,
                scales: tensor1(&scales).into_arc_tensor(),
                zero_point,
            },
            packed: Arc::new(packed),
            oc_tile,
            path,
            out_dt,
        })
    }

    /// The same convolution run by another path (tests compare paths).
    pub fn with_path(&self, path: KernelPath) -> TractResult<ConvI8> {
        ConvI8::new(
            self.geo,
            self.x0,
            self.weights.to_vec(),
            &self.bias,
            self.scales().to_vec(),
            self.epilogue.zero_point,
            path,
            self.out_dt,
        )
    }

    pub(super) fn scales(&self) -> &[f32] {
        super::f32s(&self.epilogue.scales)
    }

    /// Convolves one image: `x` is `cin x H x W`, `y` is `cout x Ho x Wo`.
    pub fn run_image(&self, x: &[i8], y: &mut [i8]) {
        let (h, w) = self.geo.hw;
        let (ho, wo) = self.geo.out_hw().expect("checked in new");
        assert_eq!(x.len(), self.geo.cin * h * w);
        assert_eq!(y.len(), self.geo.cout * ho * wo);
        match self.path {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => super::x86_int8::run_avx512_vnni(self, x, y),
            _ => self.run_reference(x, y),
        }
    }

    /// The definition: `Σ (x − x0)·k + bias` over the taps inside the input, requantized.
    fn run_reference(&self, x: &[i8], y: &mut [i8]) {
        let g = &self.geo;
        let (ho, wo) = g.out_hw().expect("checked in new");
        let (scales, bias, x0) = (self.scales(), &self.bias, self.x0 as i32);
        for oc in 0..g.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias[oc];
                    g.for_each_tap(oc, oy, ox, |xi, ki| {
                        acc += (x[xi] as i32 - x0) * self.weights[ki] as i32;
                    });
                    y[(oc * ho + oy) * wo + ox] =
                        requantize(acc, scales[oc], self.epilogue.zero_point, -128, 127);
                }
            }
        }
    }
}

/// Weights as `[oc tile][channel group of 4][tap][oc_tile][4]`, the kernel's loop order (a
/// group's taps read neighbouring rows of one plane, still in L1); for one group and tap the
/// 4-byte words of consecutive output channels are adjacent, so the broadcasts read one cache
/// line. Channels past `cin` and output channels past `cout` are zero.
pub(super) fn pack_weights(geo: &Geometry, w: &[i8], oc_tile: usize) -> Vec<i8> {
    let taps = geo.taps();
    let groups = geo.cin.div_ceil(4);
    let tiles = geo.cout.div_ceil(oc_tile);
    let mut out = vec![0i8; tiles * taps * groups * oc_tile * 4];
    for oc in 0..geo.cout {
        let (tile, o) = (oc / oc_tile, oc % oc_tile);
        for ci in 0..geo.cin {
            for t in 0..taps {
                let dst = (((tile * groups + ci / 4) * taps + t) * oc_tile + o) * 4 + ci % 4;
                out[dst] = w[(oc * geo.cin + ci) * taps + t];
            }
        }
    }
    out
}

impl Op for ConvI8 {
    fn name(&self) -> StaticName {
        "ConvI8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!(
            "{}→{} {}x{} on {}x{}, {}",
            g.cin, g.cout, g.kernel.0, g.kernel.1, g.hw.0, g.hw.1, self.path
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ConvI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let g = &self.geo;
        let (ho, wo) = g.out_hw().expect("checked in new");
        ensure!(x.datum_type().unquantized() == i8::datum_type());
        let batch = g.check_input("ConvI8", &x)?;
        let plain = x.try_as_plain_ram()?;
        // SAFETY: the datum type is i8 (possibly carrying quantization parameters).
        let xs = unsafe { plain.as_slice_unchecked::<i8>() };
        // SAFETY: `run_image` writes every output element of each image.
        let mut y = unsafe { Tensor::uninitialized_dt(self.out_dt, &[batch, g.cout, ho, wo])? };
        {
            let mut plain = y.try_as_plain_ram_mut()?;
            // SAFETY: the output datum type is i8 (possibly quantized).
            let ys = unsafe { plain.as_slice_mut_unchecked::<i8>() };
            let (xn, yn) = (g.cin * g.hw.0 * g.hw.1, g.cout * ho * wo);
            for (xb, yb) in xs.chunks(xn).zip(ys.chunks_mut(yn)) {
                self.run_image(xb, yb);
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ConvI8 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.geo.output_shape(inputs[0].shape[0].clone());
        Ok(tvec!(self.out_dt.fact(&*shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(i32::datum_type()), self.geo.macs())))
    }
}

/// The [`ConvI8`] equivalent of a quantized tract `Conv` node (before codegen), when it is one
/// this op covers: i8 input, output and weights, weights symmetric (zero point 0), constant
/// parameters, one group, stride and dilation 1, explicit padding, NCHW, concrete shape.
pub fn replacement(
    model: &TypedModel,
    node: &TypedNode,
    path: KernelPath,
) -> TractResult<Option<ConvI8>> {
    let Some(op) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let Some(out_dt) = op.q_params else {
        return Ok(None);
    };
    let Some(geo) = conv_geometry(model, node, op)? else {
        return Ok(None);
    };
    let x_fact = model.outlet_fact(node.inputs[0])?;
    if out_dt.unquantized() != i8::datum_type()
        || x_fact.datum_type.unquantized() != i8::datum_type()
        || node.inputs.len() != 9
    {
        return Ok(None);
    }
    let mut consts = vec![];
    for &i in &node.inputs[1..] {
        let Some(t) = konst(model, i)? else {
            return Ok(None);
        };
        consts.push(t);
    }
    let [kernel, bias, x0, x_scale, k0, k_scale, y0, y_scale] = &consts[..] else {
        return Ok(None);
    };
    let cout = geo.cout;
    if kernel.datum_type().unquantized() != i8::datum_type()
        || kernel.shape() != [cout, geo.cin, geo.kernel.0, geo.kernel.1]
        || geo.out_hw().is_none()
        || ints(k0)?.iter().any(|&v| v != 0)
    {
        return Ok(None);
    }
    let weights: Vec<i8> = ints(kernel)?.into_iter().map(|v| v as i8).collect();
    let Some(bias) = per_channel(ints(bias)?, cout) else {
        return Ok(None);
    };
    let x0 = x0.cast_to_scalar::<i32>()?;
    let y0 = y0.cast_to_scalar::<i32>()?;
    let (x_scale, y_scale) = (
        x_scale.cast_to_scalar::<f32>()?,
        y_scale.cast_to_scalar::<f32>()?,
    );
    let k_scale = k_scale.cast_to::<f32>()?;
    let k_scale = k_scale.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let Some(k_scale) = per_channel(k_scale, cout) else {
        return Ok(None);
    };
    // tract: ab = k_scale · x_scale, then abc = ab / y_scale, which its declutter turns into
    // ab · recip(y_scale) (a division by a uniform float); computed the same way, the factors
    // match bit for bit (a true division differs by an ulp now and then, and with it a rounding).
    let recip = y_scale.recip();
    let scales: Vec<f32> = k_scale.iter().map(|&k| (k * x_scale) * recip).collect();
    let Ok(x0) = i8::try_from(x0) else {
        return Ok(None);
    };
    Ok(Some(ConvI8::new(
        geo, x0, weights, &bias, scales, y0, path, out_dt,
    )?))
}

/// Quantized `Conv` → [`ConvI8`] on the CPU's fastest path; none where this CPU has no kernel
/// of the project's.
pub fn swap_conv(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(path) = KernelPath::detect_int8() else {
        return Ok(None);
    };
    let Some(op) = replacement(model, node, path)? else {
        return Ok(None);
    };
    Ok(Some(swap_in(model, node, op)?))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::testing::Lcg;

    fn random_conv(geo: Geometry, x0: i8, seed: u64, path: KernelPath) -> ConvI8 {
        let mut rng = Lcg::new(seed);
        let n = geo.cout * geo.cin * geo.taps();
        let w: Vec<i8> = (0..n)
            .map(|_| (rng.uniform() * 255.0 - 127.5) as i8)
            .collect();
        let bias: Vec<i32> = (0..geo.cout)
            .map(|_| (rng.uniform() * 4000.0 - 2000.0) as i32)
            .collect();
        let scales: Vec<f32> = (0..geo.cout)
            .map(|_| 0.5 / (geo.cin * geo.taps()) as f32 * (0.2 + rng.uniform()))
            .collect();
        ConvI8::new(geo, x0, w, &bias, scales, -20, path, i8::datum_type()).unwrap()
    }

    fn random_input(geo: &Geometry, seed: u64) -> Vec<i8> {
        let mut rng = Lcg::new(seed);
        (0..geo.cin * geo.hw.0 * geo.hw.1)
            .map(|_| (rng.uniform() * 255.0 - 127.5) as i8)
            .collect()
    }

    fn run(conv: &ConvI8, x: &[i8]) -> Vec<i8> {
        let (ho, wo) = conv.geo.out_hw().unwrap();
        let mut y = vec![0i8; conv.geo.cout * ho * wo];
        conv.run_image(x, &mut y);
        y
    }

    #[test]
    fn the_reference_computes_a_hand_checked_convolution() {
        // One channel, 3x3 input, 3x3 kernel of ones, pad 1, x0 = 1: each output sums x − 1 over
        // the in-image neighbours.
        let geo = Geometry {
            cin: 1,
            cout: 1,
            hw: (3, 3),
            kernel: (3, 3),
            pads: [1, 1, 1, 1],
        };
        let conv = ConvI8::new(
            geo,
            1,
            vec![1; 9],
            &[0],
            vec![1.0],
            0,
            KernelPath::Reference,
            i8::datum_type(),
        )
        .unwrap();
        let x: Vec<i8> = (1..=9).collect();
        // x − 1 = 0..8 laid out as 3x3; corner (0,0) sums 0+1+3+4 = 8.
        let y = run(&conv, &x);
        assert_eq!(y, vec![8, 15, 12, 21, 36, 27, 20, 33, 24]);
    }

    /// Every shape class the U-Net has, plus odd ones: channels not a multiple of 4 (1, 3, 5),
    /// output channels not a multiple of the tile (1, 7, 13), odd sizes, asymmetric padding,
    /// 1x1 and 2x2 kernels, widths below and above the 16-pixel vector.
    pub(in crate::conv) fn shapes() -> Vec<Geometry> {
        let mut v = vec![];
        for (cin, cout, h, w, k, pads) in [
            (1, 16, 20, 20, 3, [1, 1, 1, 1]),
            (16, 16, 17, 23, 3, [1, 1, 1, 1]),
            (3, 7, 5, 9, 3, [1, 1, 1, 1]),
            (5, 13, 8, 8, 3, [1, 1, 1, 1]),
            (32, 1, 12, 12, 1, [0, 0, 0, 0]),
            (8, 9, 11, 6, 2, [0, 0, 1, 1]),
            (12, 24, 4, 4, 2, [1, 1, 0, 0]),
            (64, 40, 6, 7, 3, [1, 1, 1, 1]),
            (2, 3, 3, 3, 3, [0, 0, 0, 0]),
            (4, 8, 1, 1, 3, [1, 1, 1, 1]),
            (256, 16, 4, 4, 3, [2, 0, 1, 2]),
        ] {
            v.push(Geometry {
                cin,
                cout,
                hw: (h, w),
                kernel: (k, k),
                pads,
            });
        }
        v
    }

    #[test]
    fn every_detected_path_is_bit_exact_against_the_reference() {
        let Some(path) = KernelPath::detect_int8() else {
            eprintln!("no project kernel on this CPU: tract's lowering runs instead");
            return;
        };
        for (i, geo) in shapes().into_iter().enumerate() {
            for x0 in [-128i8, -3, 0, 77] {
                let seed = 100 + i as u64;
                let fast = random_conv(geo, x0, seed, path);
                let reference = fast.with_path(KernelPath::Reference).unwrap();
                let x = random_input(&geo, seed + 1);
                let (a, b) = (run(&reference, &x), run(&fast, &x));
                assert_eq!(
                    a, b,
                    "{path} differs from the reference on {geo:?}, x0 {x0}"
                );
                // Not all saturated: the test sees real values.
                let distinct: std::collections::BTreeSet<i8> = a.iter().copied().collect();
                assert!(distinct.len() > 3 || a.len() < 8, "{geo:?}: {distinct:?}");
            }
        }
    }

    #[test]
    fn packed_weights_place_each_tap_where_the_kernel_reads_it() {
        let geo = Geometry {
            cin: 5,
            cout: 9,
            hw: (4, 4),
            kernel: (3, 3),
            pads: [1, 1, 1, 1],
        };
        let w: Vec<i8> = (0..9 * 5 * 9).map(|i| (i % 251) as i8).collect();
        let p = pack_weights(&geo, &w, 8);
        // 2 tiles x 9 taps x 2 groups x 8 x 4.
        assert_eq!(p.len(), 2 * 9 * 2 * 8 * 4);
        // oc 8 (tile 1, slot 0), ci 4 (group 1, lane 0), tap 5.
        let dst = (((2 + 1) * 9 + 5) * 8) * 4;
        assert_eq!(p[dst], w[(8 * 5 + 4) * 9 + 5]);
        // Channel padding of the last group is zero.
        assert_eq!(p[dst + 1], 0);
    }
}
