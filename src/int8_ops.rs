//! The project's own int8 operators, put into tract's plans by [`crate::plan_passes`].

use tract_onnx::tract_core::internal::*;

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
        // Values beyond this clamp whatever the rounding, and below it the magic-number
        // rounding is exact (|v| < 2^22), so the fast path equals round-half-even exactly.
        const LIMIT: f32 = 1024.0;
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
                                         // Integers up to 2^24 are exact in f32, so the zero point and the clamp are applied in
                                         // f32 too: SSE2 (the x86-64 baseline) has packed f32 min/max but no packed i32 ones.
        let (zp, lo, hi) = (self.zero_point as f32, self.min as f32, self.max as f32);
        for (block, (xs, ys)) in x.chunks(inner).zip(y.chunks_mut(inner)).enumerate() {
            let s = scales[if scales.len() == 1 {
                0
            } else {
                block % channels
            }];
            // Branch-free so it vectorizes.
            for (o, &v) in ys.iter_mut().zip(xs) {
                let f = v as f32;
                let a = (f.abs() * s).min(LIMIT);
                let q = (((a + MAGIC) - MAGIC).copysign(f) + zp).max(lo).min(hi);
                // SAFETY: q is finite and within [lo, hi] ⊂ i8's range.
                *o = unsafe { q.to_int_unchecked::<i32>() } as i8;
            }
        }
        Ok(())
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
        let mut y = unsafe { Tensor::uninitialized_dt(x.datum_type(), &out_shape)? };
        {
            let mut plain = y.try_as_plain_ram_mut()?;
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
}
