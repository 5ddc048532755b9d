//! The project's own convolutions, put into tract's plan in place of tract's `Conv` before
//! tract lowers it to im2col + matrix product: [`int8`] (quantized, `vpdpbusd`) and [`float`]
//! (f32, FMA). Both read their input in place instead of materializing a patch matrix.
//!
//! The common layout trick: the input is copied once into zero-point- or zero-padded planes of
//! `(H + pads) x (W + pads)`, and output pixels are numbered along the *padded* width
//! (`n = oy·Wp + ox`). Every kernel tap is then one constant offset `ky·Wp + kx` from the output
//! pixel, also across rows, so a micro-kernel computes 16·PX consecutive outputs with plain
//! vector loads; the `Wp − Wo` columns per row computed past the right edge are dropped when the
//! result is stored (2 of 130 at 128 px, 2 of 10 at the bottleneck's 8 px).
//!
//! Kernel paths are chosen when the plan is built, from the CPU's features
//! ([`KernelPath::detect_int8`], [`KernelPath::detect_float`]); where the project has no kernel
//! for the CPU, the convolution is left to tract. Each path has a scalar reference
//! ([`KernelPath::Reference`]) that the tests compare it with over many shapes.

use std::fmt;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

pub mod float;
pub mod int8;
#[cfg(target_arch = "x86_64")]
mod x86_float;
#[cfg(target_arch = "x86_64")]
mod x86_int8;

/// Which implementation of a convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Scalar loops over the definition: the tests' reference.
    Reference,
    /// x86-64 AVX-512F/BW + AVX-512 VNNI int8 micro-kernel (8 output channels x 48 pixels).
    Avx512Vnni,
    /// x86-64 AVX-512F f32 micro-kernel (8 output channels x 48 pixels).
    Avx512F,
}

impl KernelPath {
    /// The int8 path this CPU runs, or `None` where tract's lowering runs instead.
    pub fn detect_int8() -> Option<KernelPath> {
        match forced() {
            Forced::Tract => return None,
            Forced::Reference => return Some(KernelPath::Reference),
            Forced::Auto => {}
        }
        #[cfg(target_arch = "x86_64")]
        if x86_int8::avx512_vnni_available() {
            return Some(KernelPath::Avx512Vnni);
        }
        None
    }

    /// The f32 path this CPU runs, or `None` where tract's lowering runs instead.
    pub fn detect_float() -> Option<KernelPath> {
        match forced() {
            Forced::Tract => return None,
            Forced::Reference => return Some(KernelPath::Reference),
            Forced::Auto => {}
        }
        #[cfg(target_arch = "x86_64")]
        if x86_float::avx512f_available() {
            return Some(KernelPath::Avx512F);
        }
        None
    }

    /// A short name for `bench` and `info`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Reference => "reference",
            KernelPath::Avx512Vnni => "avx512-vnni",
            KernelPath::Avx512F => "avx512f",
        }
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that, set to `tract`, leaves every convolution to tract's own
/// lowering (for A/B measurements and as an escape hatch on a CPU where a kernel misbehaves), and
/// set to `reference`, runs every convolution on the scalar reference (slow: a third opinion when
/// two paths disagree).
pub const ENV_CONV: &str = "UNET_EDGE_CONV";

/// What [`ENV_CONV`] asks for.
enum Forced {
    Auto,
    Tract,
    Reference,
}

/// [`ENV_CONV`], read when each plan is built.
fn forced() -> Forced {
    match std::env::var(ENV_CONV) {
        Ok(v) if v.eq_ignore_ascii_case("tract") => Forced::Tract,
        Ok(v) if v.eq_ignore_ascii_case("reference") => Forced::Reference,
        _ => Forced::Auto,
    }
}

/// What the plan runs for each convolution type on this CPU, e.g. `int8 avx512-vnni, f32
/// avx512f` or `int8 tract, f32 tract`.
pub fn kernel_report() -> String {
    let name = |p: Option<KernelPath>| p.map_or("tract", KernelPath::name);
    format!(
        "int8 {}, f32 {}",
        name(KernelPath::detect_int8()),
        name(KernelPath::detect_float())
    )
}

/// Shape of one stride-1, dilation-1, single-group NCHW convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height and width.
    pub hw: (usize, usize),
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Padding (top, left, bottom, right).
    pub pads: [usize; 4],
}

impl Geometry {
    /// Padded input height and width.
    fn padded(&self) -> (usize, usize) {
        (
            self.hw.0 + self.pads[0] + self.pads[2],
            self.hw.1 + self.pads[1] + self.pads[3],
        )
    }

    /// Output height and width (None when the kernel is larger than the padded input).
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let (hp, wp) = self.padded();
        Some((
            (hp + 1).checked_sub(self.kernel.0)?,
            (wp + 1).checked_sub(self.kernel.1)?,
        ))
    }

    /// Taps per output channel and input channel.
    fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    // Used by the SIMD paths only (x86-64 for now).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    /// Tap offsets along the padded plane, in pixels: `ky·Wp + kx`.
    fn tap_offsets(&self) -> Vec<usize> {
        let (_, wp) = self.padded();
        (0..self.kernel.0)
            .flat_map(|ky| (0..self.kernel.1).map(move |kx| ky * wp + kx))
            .collect()
    }

    /// Output pixels computed along the padded width, rounded up to whole blocks of `block`.
    fn out_pixels(&self, block: usize) -> usize {
        let (ho, _) = self.out_hw().expect("checked when the op was built");
        (ho * self.padded().1).div_ceil(block) * block
    }

    // Used by the SIMD paths only (x86-64 for now).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    /// Length in pixels of one padded input plane: the last block of `out_pixels` outputs reads
    /// up to `out_pixels − 1 + (kh − 1)·Wp + kw − 1`.
    fn plane_len(&self, out_pixels: usize) -> usize {
        out_pixels + (self.kernel.0 - 1) * self.padded().1 + self.kernel.1
    }

    /// Output shape `[batch, cout, Ho, Wo]` for the op's output fact.
    fn output_shape(&self, batch: TDim) -> TVec<TDim> {
        let (ho, wo) = self.out_hw().expect("checked when the op was built");
        tvec!(batch, self.cout.to_dim(), ho.to_dim(), wo.to_dim())
    }

    /// Multiply-accumulates per image, for tract's cost model.
    fn macs(&self) -> TDim {
        let (ho, wo) = self.out_hw().expect("checked when the op was built");
        (self.cin * self.cout * self.taps() * ho * wo).to_dim()
    }

    /// Checks that `x` is `[N, cin, H, W]`; returns N.
    fn check_input(&self, op: &str, x: &Tensor) -> TractResult<usize> {
        ensure!(
            x.rank() == 4 && x.shape()[1..] == [self.cin, self.hw.0, self.hw.1],
            "{op}: input {:?} is not [N, {}, {}, {}]",
            x.shape(),
            self.cin,
            self.hw.0,
            self.hw.1
        );
        Ok(x.shape()[0])
    }

    /// The definition both references compute: for output channel `oc`, pixel `(oy, ox)`, calls
    /// `tap(input index, weight index)` for every tap that falls inside the input (padding
    /// contributes nothing, or the zero point's nothing in int8).
    fn for_each_tap(&self, oc: usize, oy: usize, ox: usize, mut tap: impl FnMut(usize, usize)) {
        let (h, w) = self.hw;
        let (kh, kw) = self.kernel;
        for ci in 0..self.cin {
            for ky in 0..kh {
                let Some(iy) = (oy + ky).checked_sub(self.pads[0]).filter(|&iy| iy < h) else {
                    continue;
                };
                for kx in 0..kw {
                    let Some(ix) = (ox + kx).checked_sub(self.pads[1]).filter(|&ix| ix < w) else {
                        continue;
                    };
                    tap(
                        (ci * h + iy) * w + ix,
                        ((oc * self.cin + ci) * kh + ky) * kw + kx,
                    );
                }
            }
        }
    }

    // Used by the SIMD paths only (x86-64 for now).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    /// Copies the rows computed along the padded width (`rows`: `live` channels of
    /// `out_pixels`) into channels `oc0..` of the NCHW output `y`.
    fn store_rows<T: Copy>(
        &self,
        rows: &[T],
        out_pixels: usize,
        oc0: usize,
        live: usize,
        y: &mut [T],
    ) {
        let (ho, wo) = self.out_hw().expect("checked when the op was built");
        let wp = self.padded().1;
        for o in 0..live {
            let src = &rows[o * out_pixels..];
            let dst = &mut y[(oc0 + o) * ho * wo..(oc0 + o + 1) * ho * wo];
            for (oy, d) in dst.chunks_mut(wo).enumerate() {
                d.copy_from_slice(&src[oy * wp..oy * wp + wo]);
            }
        }
    }
}

/// Output channels per micro-kernel call (the accumulators are `oc_tile x 24/oc_tile` vectors
/// of 16 pixels): 8 channels x 3 vectors where the image is large, 4 x 6 where all its output
/// pixels fit in one or two blocks of 48 (the 8x8 bottleneck), so that each weight is loaded once
/// per image instead of once per block — those layers' weights (up to 2.4 MB) do not stay in
/// cache between blocks.
pub(super) fn oc_tile_for(geo: &Geometry) -> usize {
    if geo.out_pixels(48) <= 96 {
        4
    } else {
        8
    }
}

/// The geometry of a tract `Conv` node this module covers (one group, OIHW weights, NCHW, stride
/// and dilation 1, explicit or no padding, concrete 4-d input), or `None`.
fn conv_geometry(model: &TypedModel, node: &TypedNode, op: &Conv) -> TractResult<Option<Geometry>> {
    let ps = &op.pool_spec;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&s| s == 1));
    let x_fact = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = x_fact.shape.as_concrete().map(|s| s.to_vec()) else {
        return Ok(None);
    };
    if op.group != 1
        || op.kernel_fmt != KernelFormat::OIHW
        || ps.data_format != DataFormat::NCHW
        || ps.kernel_shape.len() != 2
        || shape.len() != 4
        || !ones(&ps.strides)
        || !ones(&ps.dilations)
    {
        return Ok(None);
    }
    let (before, after) = match &ps.padding {
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => {
            (b.clone(), a.clone())
        }
        PaddingSpec::Valid => (tvec!(0, 0), tvec!(0, 0)),
        _ => return Ok(None),
    };
    if before.len() != 2 || after.len() != 2 {
        return Ok(None);
    }
    let geo = Geometry {
        cin: shape[1],
        cout: ps.output_channels,
        hw: (shape[2], shape[3]),
        kernel: (ps.kernel_shape[0], ps.kernel_shape[1]),
        pads: [before[0], before[1], after[0], after[1]],
    };
    Ok(geo.out_hw().map(|_| geo))
}

/// The values of a plain f32 vector an op keeps as a tensor (f32 has no `Hash`, tensors do).
fn f32s(t: &Tensor) -> &[f32] {
    t.try_as_plain_ram()
        .and_then(|p| p.as_slice::<f32>())
        .expect("conv op constants are plain f32 vectors")
}

/// `node` (a `Conv`) replaced by `op`, which takes only its data input.
fn swap_in<O: TypedOp>(
    model: &TypedModel,
    node: &TypedNode,
    op: O,
) -> TractResult<TypedModelPatch> {
    TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)
}

/// The constant value of `outlet`, if it has one.
pub(super) fn konst(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Arc<Tensor>>> {
    Ok(model.outlet_fact(outlet)?.konst.clone())
}

/// Values of an integer or quantized-integer constant as i32 (quantization parameters of the
/// datum type ignored: the graph passes them as separate inputs).
pub(super) fn ints(t: &Tensor) -> TractResult<Vec<i32>> {
    let plain = t.try_as_plain_ram()?;
    Ok(match t.datum_type().unquantized() {
        // SAFETY: the storage holds i8 (the datum type, quantized or not).
        DatumType::I8 => unsafe { plain.as_slice_unchecked::<i8>() }
            .iter()
            .map(|&v| v as i32)
            .collect(),
        // SAFETY: the storage holds u8.
        DatumType::U8 => unsafe { plain.as_slice_unchecked::<u8>() }
            .iter()
            .map(|&v| v as i32)
            .collect(),
        // SAFETY: the storage holds i32.
        DatumType::I32 => unsafe { plain.as_slice_unchecked::<i32>() }.to_vec(),
        other => bail!("integer constant expected, found {other:?}"),
    })
}

/// `v` broadcast to `n` values (a scalar or a one-element tensor), or as is when it has `n`.
pub(super) fn per_channel<T: Copy>(v: Vec<T>, n: usize) -> Option<Vec<T>> {
    match v.len() {
        1 => Some(vec![v[0]; n]),
        l if l == n => Some(v),
        _ => None,
    }
}
