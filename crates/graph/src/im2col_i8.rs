//! The project's im2col for int8 convolutions, a drop-in for tract's `Im2col` node.
//!
//! tract packs the patch matrix of a quantized convolution element by element through a
//! generic writer; on the seed U-Net that took 27 ms of a 44 ms int8 tile while the integer
//! matmul itself took 7.5 ms. This op packs the same matrix a panel at a time, in the layout the
//! kernel reads (tract's `PackedI8K4` for the x86 VNNI kernels, or the K-major `PackedFormat`
//! the ARM kernels read). For NCHW input with stride 1 the `r` columns of a panel
//! are `r` neighbouring pixels of one output row, so each patch row is one contiguous 8-byte load
//! (borders excepted), and four of them interleave into the K=4-inner layout with two rounds of
//! byte/word unpacking.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;
use tract_onnx::tract_core::ops::cnn::PaddingSpec;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};
use tract_onnx::tract_core::tract_linalg::pack::{PackedFormat, PackedI8K4};

/// How the packed matrix is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// K=4-inner panels of `r` columns: element (k, j) at `(k/4)·4r + 4j + k%4`.
    K4 {
        /// Columns per panel (the kernel's width).
        r: usize,
        /// Alignment of each panel in bytes.
        align: usize,
    },
    /// K-major panels: element (k, j) at `k·r + j`.
    KMajor {
        /// Columns per panel (the kernel's width).
        r: usize,
        /// Alignment of each panel in bytes.
        align: usize,
        /// Bytes per panel.
        panel: usize,
    },
}

impl Layout {
    fn r(&self) -> usize {
        match *self {
            Layout::K4 { r, .. } | Layout::KMajor { r, .. } => r,
        }
    }

    fn panel_len(&self, k: usize) -> usize {
        match *self {
            Layout::K4 { r, .. } => k.div_ceil(4) * 4 * r,
            Layout::KMajor { panel, .. } => panel,
        }
    }

    fn align(&self) -> usize {
        match *self {
            Layout::K4 { align, .. } | Layout::KMajor { align, .. } => align,
        }
    }
}

/// Patches of a stride-1, dilation-1, single-group NCHW int8 convolution, packed for tract's
/// integer matmul.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Patches {
    /// Input channels.
    pub channels: usize,
    /// Input (= output) height and width before padding.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Padding before (top, left); output size is `in + before + after − kernel + 1`.
    pub pad_before: (usize, usize),
    /// Padding after (bottom, right).
    pub pad_after: (usize, usize),
    /// Packed layout the matmul expects.
    pub layout: Layout,
    /// The packed fact tract's matmul was planned with (copied from the replaced node).
    pub fact: PackedExoticFact,
    /// Value of padded pixels (the input's zero point).
    pub pad_value: i8,
    /// Where each row of the patch matrix reads (`None` for K's zero padding rows), by row.
    taps: Vec<Option<Tap>>,
    /// For interior K4 panels: each block of four rows as offsets from the output pixel.
    offsets: Vec<Option<[isize; 4]>>,
}

impl Patches {
    /// The packer for one convolution geometry.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        (height, width): (usize, usize),
        kernel: (usize, usize),
        pad_before: (usize, usize),
        pad_after: (usize, usize),
        layout: Layout,
        fact: PackedExoticFact,
        pad_value: i8,
    ) -> Patches {
        let mut op = Patches {
            channels,
            height,
            width,
            kernel,
            pad_before,
            pad_after,
            layout,
            fact,
            pad_value,
            taps: vec![],
            offsets: vec![],
        };
        let rows = op.k().div_ceil(4) * 4;
        op.taps = (0..rows).map(|kk| op.tap(kk)).collect();
        op.offsets = op
            .taps
            .chunks(4)
            .map(|t4| {
                let mut o = [0isize; 4];
                for (o, t) in o.iter_mut().zip(t4) {
                    let t = (*t)?;
                    *o = t.plane as isize + t.dy * width as isize + t.dx;
                }
                Some(o)
            })
            .collect();
        op
    }

    fn out_hw(&self) -> (usize, usize) {
        (
            self.height + self.pad_before.0 + self.pad_after.0 + 1 - self.kernel.0,
            self.width + self.pad_before.1 + self.pad_after.1 + 1 - self.kernel.1,
        )
    }

    fn k(&self) -> usize {
        self.channels * self.kernel.0 * self.kernel.1
    }

    /// Row `kk` of the patch matrix for the `row.len()` output pixels from (oy, ox) on (pad
    /// value outside the input, zeros beyond the last pixel or the last row of K).
    #[inline(always)]
    fn patch_row(&self, x: &[i8], tap: Option<Tap>, oy: usize, ox: usize, row: &mut [i8]) {
        let (oh, ow) = self.out_hw();
        let Some(tap) = tap else {
            row.fill(0);
            return;
        };
        let plane = &x[tap.plane..tap.plane + self.height * self.width];
        let r = row.len();
        // Fast path: the whole panel lies in one output row.
        if ox + r <= ow {
            let iy = oy as isize + tap.dy;
            if iy < 0 || iy >= self.height as isize {
                row.fill(self.pad_value);
                return;
            }
            let ix0 = ox as isize + tap.dx;
            let src = &plane[iy as usize * self.width..(iy as usize + 1) * self.width];
            if ix0 >= 0 && ix0 as usize + r <= self.width {
                row.copy_from_slice(&src[ix0 as usize..ix0 as usize + r]);
                return;
            }
            for (j, v) in row.iter_mut().enumerate() {
                let ix = ix0 + j as isize;
                *v = if ix >= 0 && (ix as usize) < self.width {
                    src[ix as usize]
                } else {
                    self.pad_value
                };
            }
            return;
        }
        let n0 = oy * ow + ox;
        for (j, v) in row.iter_mut().enumerate() {
            let n = n0 + j;
            if n >= oh * ow {
                *v = 0;
                continue;
            }
            let iy = (n / ow) as isize + tap.dy;
            let ix = (n % ow) as isize + tap.dx;
            *v = if iy >= 0 && ix >= 0 && (iy as usize) < self.height && (ix as usize) < self.width
            {
                plane[iy as usize * self.width + ix as usize]
            } else {
                self.pad_value
            };
        }
    }

    /// Where row `kk` of the patch matrix reads: `None` for the zero rows padding K.
    fn tap(&self, kk: usize) -> Option<Tap> {
        let (kh, kw) = self.kernel;
        (kk < self.k()).then(|| Tap {
            plane: (kk / (kh * kw)) * self.height * self.width,
            dy: ((kk / kw) % kh) as isize - self.pad_before.0 as isize,
            dx: (kk % kw) as isize - self.pad_before.1 as isize,
        })
    }

    /// Packs one image's patches into `out` (`panels × panel_len` bytes), all panels at once.
    pub fn pack(&self, x: &[i8], out: &mut [i8]) {
        let panel_len = self.layout.panel_len(self.k());
        for (p, panel) in out.chunks_mut(panel_len).enumerate() {
            self.pack_panel(x, p, panel);
        }
    }

    /// Packs panel `p` (output pixels `p·r .. p·r + r`) into `out` (`panel_len` bytes).
    pub fn pack_panel(&self, x: &[i8], p: usize, out: &mut [i8]) {
        let (_, ow) = self.out_hw();
        let r = self.layout.r();
        let k = self.k();
        let (oy, ox) = ((p * r) / ow, (p * r) % ow);
        let mut rows = [[0i8; 64]; 4];
        match self.layout {
            Layout::K4 { .. } => {
                let (kh, kw) = self.kernel;
                let (pt, pl) = self.pad_before;
                let interior = r == 8
                    && ox + r <= ow
                    && oy >= pt
                    && oy + kh - pt <= self.height
                    && ox >= pl
                    && ox + r + kw - 1 - pl <= self.width;
                for (kb, block) in out.chunks_mut(4 * r).enumerate() {
                    if interior {
                        if let Some(o4) = self.offsets[kb] {
                            let base = (oy * self.width + ox) as isize;
                            // SAFETY: the panel's pixels shifted by any tap stay inside the
                            // image (`interior`), so each 8-byte read lies inside that tap's
                            // channel plane of `x`.
                            let words = o4.map(|o| unsafe {
                                std::ptr::read_unaligned(x.as_ptr().offset(base + o) as *const u64)
                            });
                            interleave_words(&words, block);
                            continue;
                        }
                    }
                    for (row, tap) in rows.iter_mut().zip(&self.taps[kb * 4..kb * 4 + 4]) {
                        self.patch_row(x, *tap, oy, ox, &mut row[..r]);
                    }
                    interleave4(&rows, r, block);
                }
            }
            Layout::KMajor { .. } => {
                let (body, tail) = out.split_at_mut(k * r);
                for (kk, row) in body.chunks_mut(r).enumerate() {
                    self.patch_row(x, self.taps[kk], oy, ox, row);
                }
                tail.fill(0);
            }
        }
    }
}

/// `out[4j + i] = byte j of words[i]`, for 8 bytes per word.
#[inline(always)]
fn interleave_words(words: &[u64; 4], out: &mut [i8]) {
    assert!(out.len() >= 32);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; `out` holds at least 32 bytes (checked above).
        unsafe {
            let a = _mm_cvtsi64_si128(words[0] as i64);
            let b = _mm_cvtsi64_si128(words[1] as i64);
            let c = _mm_cvtsi64_si128(words[2] as i64);
            let d = _mm_cvtsi64_si128(words[3] as i64);
            let ab = _mm_unpacklo_epi8(a, b);
            let cd = _mm_unpacklo_epi8(c, d);
            let dst = out.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(dst, _mm_unpacklo_epi16(ab, cd));
            _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(ab, cd));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::aarch64::*;
        // SAFETY: NEON is part of aarch64; `out` holds at least 32 bytes (checked above).
        unsafe {
            let ab = vzip_s8(vcreate_s8(words[0]), vcreate_s8(words[1]));
            let cd = vzip_s8(vcreate_s8(words[2]), vcreate_s8(words[3]));
            let ab = vreinterpretq_s16_s8(vcombine_s8(ab.0, ab.1));
            let cd = vreinterpretq_s16_s8(vcombine_s8(cd.0, cd.1));
            let dst = out.as_mut_ptr();
            vst1q_s8(dst, vreinterpretq_s8_s16(vzip1q_s16(ab, cd)));
            vst1q_s8(dst.add(16), vreinterpretq_s8_s16(vzip2q_s16(ab, cd)));
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    for j in 0..8 {
        for (i, w) in words.iter().enumerate() {
            out[4 * j + i] = (w >> (8 * j)) as u8 as i8;
        }
    }
}

/// Where one row of the patch matrix reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tap {
    /// Offset of the input channel's plane.
    plane: usize,
    /// Row offset from the output pixel (kernel row − top padding).
    dy: isize,
    /// Column offset (kernel column − left padding).
    dx: isize,
}

/// `out[4j + i] = rows[i][j]` for `j < r`: four patch rows into the K=4-inner layout.
#[inline(always)]
fn interleave4(rows: &[[i8; 64]; 4], r: usize, out: &mut [i8]) {
    if r.is_multiple_of(8) {
        for (g, block) in out.chunks_mut(32).take(r / 8).enumerate() {
            let words = rows.map(|row| {
                let b: [i8; 8] = row[g * 8..g * 8 + 8].try_into().expect("8 bytes");
                u64::from_le_bytes(b.map(|v| v as u8))
            });
            interleave_words(&words, block);
        }
        return;
    }
    for j in 0..r {
        for (i, row) in rows.iter().enumerate() {
            out[4 * j + i] = row[j];
        }
    }
}

/// The operator tract's plan runs in place of its `Im2col`.
///
/// It materializes the packed patch matrix like tract's. (A lazy input packing each panel when
/// the matmul asks for it was measured too: tract's matmul asks for the same activation panel
/// once per weight panel, so the deep layers packed each panel up to 32 times and the int8 tile
/// took 61 ms instead of 24.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Im2colI8 {
    /// Geometry and packer.
    pub patches: Arc<Patches>,
}

impl Op for Im2colI8 {
    fn name(&self) -> StaticName {
        "Im2colI8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Im2colI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let p = &self.patches;
        let batch = x.shape()[0];
        ensure!(x.datum_type().unquantized() == i8::datum_type());
        let plain = x.try_as_plain_ram()?;
        // SAFETY: the datum type is i8 (possibly carrying quantization parameters).
        let xs = unsafe { plain.as_slice_unchecked::<i8>() };
        let per_image = p.channels * p.height * p.width;
        ensure!(
            xs.len() == batch * per_image,
            "Im2colI8: input of unexpected size"
        );
        let (oh, ow) = p.out_hw();
        let n = oh * ow;
        let panel_len = p.layout.panel_len(p.k());
        let mut values: TVec<Box<dyn MMMInputValue>> = TVec::with_capacity(batch);
        for b in 0..batch {
            let len = n.div_ceil(p.layout.r()) * panel_len;
            // SAFETY: `pack` writes every byte of the blob (padding lanes included).
            let mut blob = unsafe { Blob::new_for_size_and_align(len, p.layout.align()) };
            // SAFETY: the blob owns `len` bytes; i8 has the size and alignment of u8.
            let out = unsafe {
                std::slice::from_raw_parts_mut(blob.as_bytes_mut().as_mut_ptr() as *mut i8, len)
            };
            p.pack(&xs[b * per_image..(b + 1) * per_image], out);
            values.push(Box::new(EagerPackedInput {
                fact: p.fact.clone(),
                packed: Arc::new(blob),
                panel_bytes: panel_len,
                mn: n,
            }));
        }
        let storage = PackedMatrixStorage::new_batched(&[batch, 1], values);
        Ok(tvec!(storage.into_tensor(x.datum_type()).into_tvalue()))
    }
}

impl TypedOp for Im2colI8 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let batch = inputs[0].shape[0].clone();
        Ok(tvec!(inputs[0]
            .datum_type
            .fact(&[batch, 1.to_dim()])
            .with_exotic_fact(self.patches.fact.clone())))
    }
}

/// The [`Im2colI8`] equivalent of a tract `Im2col` node, when the convolution is one it covers.
pub fn replacement(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Im2colI8>> {
    let Some(op) = node.op_as::<Im2Col>() else {
        return Ok(None);
    };
    let input = model.outlet_fact(node.inputs[0])?;
    let ps = &op.pool_spec;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&s| s == 1));
    if input.datum_type.unquantized() != i8::datum_type()
        || op.group != 1
        || ps.data_format != DataFormat::NCHW
        || shape.len() != 4
        || ps.kernel_shape.len() != 2
        || !ones(&ps.strides)
        || !ones(&ps.dilations)
    {
        return Ok(None);
    }
    let (before, after) = match &ps.padding {
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => (b, a),
        PaddingSpec::Valid => (&tvec!(0, 0), &tvec!(0, 0)),
        _ => return Ok(None),
    };
    let Some(fact) = node.outputs[0]
        .fact
        .exotic_fact()
        .and_then(|f| f.downcast_ref::<PackedExoticFact>())
        .cloned()
    else {
        return Ok(None);
    };
    let layout = if let Some(f) = fact.format.downcast_ref::<PackedI8K4>() {
        Layout::K4 {
            r: f.r,
            align: f.alignment(),
        }
    } else if let Some(f) = fact.format.downcast_ref::<PackedFormat>() {
        if f.dt.unquantized() != i8::datum_type() {
            return Ok(None);
        }
        Layout::KMajor {
            r: f.r,
            align: f.alignment(),
            panel: f.single_panel_len(fact.k),
        }
    } else {
        return Ok(None);
    };
    let pad_value = match node.inputs.get(1) {
        Some(o) => match &model.outlet_fact(*o)?.konst {
            Some(t) => t.cast_to_scalar::<i8>()?,
            None => return Ok(None),
        },
        None => 0,
    };
    let im = Patches::new(
        shape[1],
        (shape[2], shape[3]),
        (ps.kernel_shape[0], ps.kernel_shape[1]),
        (before[0], before[1]),
        (after[0], after[1]),
        layout,
        fact,
        pad_value,
    );
    let (oh, ow) = im.out_hw();
    if layout.r() > 64 || im.k() != im.fact.k || im.fact.mn != (oh * ow).to_dim() {
        return Ok(None);
    }
    Ok(Some(Im2colI8 {
        patches: Arc::new(im),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Lcg;

    /// The patch matrix element (kk, n), computed the obvious way.
    fn reference(op: &Patches, x: &[i8], kk: usize, n: usize) -> i8 {
        let (_, ow) = op.out_hw();
        let (kh, kw) = op.kernel;
        let (ci, ky, kx) = (kk / (kh * kw), (kk / kw) % kh, kk % kw);
        let iy = (n / ow + ky) as isize - op.pad_before.0 as isize;
        let ix = (n % ow + kx) as isize - op.pad_before.1 as isize;
        if iy < 0 || ix < 0 || iy as usize >= op.height || ix as usize >= op.width {
            op.pad_value
        } else {
            x[(ci * op.height + iy as usize) * op.width + ix as usize]
        }
    }

    fn op(c: usize, h: usize, w: usize, kernel: usize, pad: usize, layout: Layout) -> Patches {
        let k = c * kernel * kernel;
        let fact = PackedExoticFact {
            format: Box::new(PackedI8K4::new(layout.r())),
            mn: (h * w).to_dim(),
            k,
        };
        Patches::new(
            c,
            (h, w),
            (kernel, kernel),
            (pad, pad),
            (pad, pad),
            layout,
            fact,
            -77,
        )
    }

    #[test]
    fn packs_like_the_definition_in_both_layouts_with_borders_and_ragged_panels() {
        let mut rng = Lcg::new(3);
        // (channels, height, width, kernel, pad): rows that split panels (w = 5, 12), K not a
        // multiple of 4 (1 channel, 3x3 → 9), unpadded and 1x1 kernels.
        for (c, h, w, kernel, pad) in [
            (1, 7, 5, 3, 1),
            (3, 16, 16, 3, 1),
            (2, 9, 12, 3, 1),
            (5, 6, 8, 1, 0),
            (2, 10, 24, 3, 0),
        ] {
            let x: Vec<i8> = (0..c * h * w)
                .map(|_| (rng.uniform() * 255.0 - 128.0) as i8)
                .collect();
            for layout in [
                Layout::K4 { r: 8, align: 16 },
                Layout::K4 { r: 16, align: 16 },
                Layout::KMajor {
                    r: 8,
                    align: 16,
                    panel: (c * kernel * kernel + 1) * 8,
                },
            ] {
                let op = op(c, h, w, kernel, pad, layout);
                let (oh, ow) = op.out_hw();
                let n = oh * ow;
                let k = op.k();
                let r = layout.r();
                let panel = layout.panel_len(k);
                let mut out = vec![99i8; n.div_ceil(r) * panel];
                op.pack(&x, &mut out);
                for p in 0..n.div_ceil(r) {
                    for j in 0..r {
                        for kk in 0..panel / r {
                            let at = p * panel
                                + match layout {
                                    Layout::K4 { .. } => (kk / 4) * 4 * r + 4 * j + kk % 4,
                                    Layout::KMajor { .. } => kk * r + j,
                                };
                            let want = if kk < k && p * r + j < n {
                                reference(&op, &x, kk, p * r + j)
                            } else {
                                0
                            };
                            assert_eq!(
                                out[at], want,
                                "{c}x{h}x{w} k{kernel} {layout:?}: panel {p} col {j} row {kk}"
                            );
                        }
                    }
                }
            }
        }
    }
}
