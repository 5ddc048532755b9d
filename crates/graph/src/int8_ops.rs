//! The project's own int8 operators, put into tract's plans by [`crate::plan_passes`].

use tract_onnx::tract_core::internal::*;

/// tract's requantization of one accumulator: `round_half_even(|v|·s)·sign(v) + zp`, clamped
/// to `[min, max]`; every int8 operator of the project rounds through this definition.
#[inline(always)]
pub fn requantize(v: i32, s: f32, zero_point: i32, min: i32, max: i32) -> i8 {
    let f = v as f32;
    let r = (f.abs() * s).round_ties_even().copysign(f);
    // Beyond ±2^15 the clamp decides anyway; this keeps the float→int cast in range.
    let r = r.clamp(-32768.0, 32767.0) as i32;
    (r + zero_point).clamp(min, max) as i8
}

/// Per-channel requantization of an i32 accumulator to i8: `clamp(round_even(x·s[c]) + zp)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requantize {
    /// One factor per channel along `axis` (or one for all).
    pub scales: Arc<Tensor>,
    /// Channel axis of the input.
    pub axis: usize,
    /// Added after scaling.
    pub zero_point: i32,
    /// Lower clamp (inclusive).
    pub min: i32,
    /// Upper clamp (inclusive).
    pub max: i32,
}

impl Requantize {
    fn run(&self, x: &[i32], y: &mut [i8], channels: usize, inner: usize) -> TractResult<()> {
        let scales = self.scales.try_as_plain_ram()?.as_slice::<f32>()?;
        for (block, (xs, ys)) in x.chunks(inner).zip(y.chunks_mut(inner)).enumerate() {
            let s = scales[if scales.len() == 1 {
                0
            } else {
                block % channels
            }];
            let done = self.run_simd(xs, ys, s);
            for (o, &v) in ys[done..].iter_mut().zip(&xs[done..]) {
                *o = self.one(v, s);
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn one(&self, v: i32, s: f32) -> i8 {
        requantize(v, s, self.zero_point, self.min, self.max)
    }

    /// 16 values at a time with SSE2 (x86-64's baseline): the conversion rounds half to even
    /// like `one`, and the saturating packs plus an i16 clamp do the rest. Returns how many
    /// leading values it handled.
    #[cfg(target_arch = "x86_64")]
    fn run_simd(&self, xs: &[i32], ys: &mut [i8], s: f32) -> usize {
        use std::arch::x86_64::*;
        let n = xs.len() / 16 * 16;
        // SAFETY: SSE2 is part of x86-64; every load reads 16 bytes within xs[..n] and every
        // store writes 16 bytes within ys[..n].
        unsafe {
            let scale = _mm_set1_ps(s);
            let (fmin, fmax) = (_mm_set1_ps(-32768.0), _mm_set1_ps(32767.0));
            let zp = _mm_set1_epi32(self.zero_point);
            let (lo, hi) = (
                _mm_set1_epi16(self.min as i16),
                _mm_set1_epi16(self.max as i16),
            );
            let quant = |p: *const i32| {
                let f = _mm_cvtepi32_ps(_mm_loadu_si128(p as *const __m128i));
                let f = _mm_max_ps(_mm_min_ps(_mm_mul_ps(f, scale), fmax), fmin);
                // Default MXCSR rounding: to nearest, ties to even.
                _mm_add_epi32(_mm_cvtps_epi32(f), zp)
            };
            for i in (0..n).step_by(16) {
                let p = xs.as_ptr().add(i);
                let a = _mm_packs_epi32(quant(p), quant(p.add(4)));
                let b = _mm_packs_epi32(quant(p.add(8)), quant(p.add(12)));
                let a = _mm_min_epi16(_mm_max_epi16(a, lo), hi);
                let b = _mm_min_epi16(_mm_max_epi16(b, lo), hi);
                _mm_storeu_si128(
                    ys.as_mut_ptr().add(i) as *mut __m128i,
                    _mm_packs_epi16(a, b),
                );
            }
        }
        n
    }

    /// The same with NEON (aarch64: Raspberry Pi 4/5, Jetson); `vcvtnq` rounds half to even.
    #[cfg(target_arch = "aarch64")]
    fn run_simd(&self, xs: &[i32], ys: &mut [i8], s: f32) -> usize {
        use std::arch::aarch64::*;
        let n = xs.len() / 16 * 16;
        // SAFETY: NEON is part of aarch64; every load reads 16 bytes within xs[..n] and every
        // store writes 16 bytes within ys[..n].
        unsafe {
            let scale = vdupq_n_f32(s);
            let (fmin, fmax) = (vdupq_n_f32(-32768.0), vdupq_n_f32(32767.0));
            let zp = vdupq_n_s32(self.zero_point);
            let (lo, hi) = (vdupq_n_s16(self.min as i16), vdupq_n_s16(self.max as i16));
            let quant = |p: *const i32| {
                let f = vcvtq_f32_s32(vld1q_s32(p));
                let f = vmaxq_f32(vminq_f32(vmulq_f32(f, scale), fmax), fmin);
                vaddq_s32(vcvtnq_s32_f32(f), zp)
            };
            for i in (0..n).step_by(16) {
                let p = xs.as_ptr().add(i);
                let a = vcombine_s16(vqmovn_s32(quant(p)), vqmovn_s32(quant(p.add(4))));
                let b = vcombine_s16(vqmovn_s32(quant(p.add(8))), vqmovn_s32(quant(p.add(12))));
                let a = vminq_s16(vmaxq_s16(a, lo), hi);
                let b = vminq_s16(vmaxq_s16(b, lo), hi);
                vst1q_s8(
                    ys.as_mut_ptr().add(i),
                    vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)),
                );
            }
        }
        n
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn run_simd(&self, _xs: &[i32], _ys: &mut [i8], _s: f32) -> usize {
        0
    }
}

impl Op for Requantize {
    fn name(&self) -> StaticName {
        "Requantize".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Requantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        let channels = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        let xs = x.try_as_plain_ram()?.as_slice::<i32>()?;
        // SAFETY: `run` writes every element of `y` before it is read.
        let mut y = unsafe { Tensor::uninitialized::<i8>(shape)? };
        self.run(
            xs,
            y.try_as_plain_ram_mut()?.as_slice_mut::<i8>()?,
            channels,
            inner.max(1),
        )?;
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Requantize {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == i32::datum_type());
        Ok(tvec!(i8::fact(inputs[0].shape.clone())))
    }
}

/// Nearest-neighbour upsampling of an int8 NCHW tensor by integer factors on H and W.
///
/// tract's `NearestUpsample` has a fast path for f32 only; on i8 it took 13 ms for the four
/// upsamplings of a seed U-Net tile. This one builds each output row once and copies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpsampleI8 {
    /// Factor along H.
    pub sy: usize,
    /// Factor along W.
    pub sx: usize,
}

impl UpsampleI8 {
    /// `y` holds `x`'s planes of `h`x`w` pixels upsampled.
    pub fn run(&self, x: &[i8], y: &mut [i8], w: usize) {
        let ow = w * self.sx;
        for (src, dst) in x.chunks(w).zip(y.chunks_mut(ow * self.sy)) {
            let (first, rest) = dst.split_at_mut(ow);
            for (v, out) in src.iter().zip(first.chunks_mut(self.sx)) {
                out.fill(*v);
            }
            for copy in rest.chunks_mut(ow) {
                copy.copy_from_slice(first);
            }
        }
    }
}

impl Op for UpsampleI8 {
    fn name(&self) -> StaticName {
        "UpsampleI8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for UpsampleI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.rank() == 4 && x.datum_type().unquantized() == i8::datum_type());
        let s = x.shape();
        let out_shape = [s[0], s[1], s[2] * self.sy, s[3] * self.sx];
        let plain = x.try_as_plain_ram()?;
        // SAFETY: the datum type is i8 (possibly carrying quantization parameters).
        let xs = unsafe { plain.as_slice_unchecked::<i8>() };
        // SAFETY: `run` writes every output pixel (each input pixel fills its sy x sx block).
        let mut y = unsafe { Tensor::uninitialized_dt(x.datum_type(), &out_shape)? };
        {
            let mut plain = y.try_as_plain_ram_mut()?;
            // SAFETY: `y` has the input's datum type, i8 (possibly quantized).
            let ys = unsafe { plain.as_slice_mut_unchecked::<i8>() };
            self.run(xs, ys, s[3]);
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for UpsampleI8 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.len() == 4);
        shape[2] = shape[2].clone() * self.sy;
        shape[3] = shape[3].clone() * self.sx;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_repeats_pixels_and_rows() {
        let op = UpsampleI8 { sy: 2, sx: 3 };
        let x = [1i8, 2, 3, 4, 5, 6, 7, 8];
        let mut y = [0i8; 48];
        // Two planes of 2x2.
        op.run(&x, &mut y, 2);
        assert_eq!(y[..6], [1, 1, 1, 2, 2, 2]);
        assert_eq!(y[6..12], [1, 1, 1, 2, 2, 2]);
        assert_eq!(y[12..18], [3, 3, 3, 4, 4, 4]);
        assert_eq!(y[42..], [7, 7, 7, 8, 8, 8]);
    }

    #[test]
    fn requantize_rounds_half_to_even_and_clamps() {
        let op = Requantize {
            scales: tensor1(&[0.5f32, 1.0]).into_arc_tensor(),
            axis: 1,
            zero_point: -128,
            min: -128,
            max: 127,
        };
        let x = [1, 3, -1, 5, 400, 255, 256, -7, i32::MIN, i32::MAX];
        let mut y = [0i8; 10];
        // Two channels of five; channel 0 scales by 0.5, channel 1 by 1.
        op.run(&x, &mut y, 2, 5).unwrap();
        // 0.5 → 0, 1.5 → 2, -0.5 → -0, 2.5 → 2, 200 → clamps; then + zp.
        assert_eq!(y[..5], [-128, -126, -128, -126, 72]);
        assert_eq!(y[5..], [127, 127, -128, -128, 127]);
    }

    #[test]
    fn the_vector_path_matches_the_scalar_definition() {
        let op = Requantize {
            scales: tensor1(&[0.5f32, 0.013, 3.0]).into_arc_tensor(),
            axis: 1,
            zero_point: -3,
            min: -128,
            max: 100,
        };
        let mut rng = crate::testing::Lcg::new(5);
        // 37 per channel: two vector blocks and a scalar tail; odd values hit the ties at 0.5.
        let mut x: Vec<i32> = (0..3 * 37)
            .map(|i| match i % 5 {
                0 => (rng.uniform() * 2000.0 - 1000.0) as i32 | 1,
                1 => (rng.uniform() * 2e9 - 1e9) as i32,
                _ => (rng.uniform() * 600.0 - 300.0) as i32,
            })
            .collect();
        x[3] = i32::MIN;
        x[40] = i32::MAX;
        let mut y = vec![0i8; x.len()];
        op.run(&x, &mut y, 3, 37).unwrap();
        let s = [0.5f32, 0.013, 3.0];
        for (i, (&v, &q)) in x.iter().zip(&y).enumerate() {
            assert_eq!(q, op.one(v, s[i / 37]), "x[{i}] = {v}");
        }
    }
}
