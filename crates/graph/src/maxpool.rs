//! 2x2 max pooling with stride 2 (the U-Net's downsampling) for f32 and i8 planes.
//!
//! tract's `OptMaxPool` resolves its pooling geometry (patch offsets for every output pixel) on
//! every run: 0.71 ms for the first pool of a 128x128 tile, whose data is 1 MB (profiled here),
//! while onnxruntime pools all four levels in 0.05 ms. This op computes the same maxima directly.

use tract_onnx::tract_core::internal::*;

/// 2x2 max pooling, stride 2, no padding, NCHW; odd trailing rows and columns are dropped.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct MaxPool2x2;

/// The larger of two values (the first one on ties, as tract's pooling keeps it).
#[inline(always)]
fn max<T: PartialOrd + Copy>(a: T, b: T) -> T {
    if b > a {
        b
    } else {
        a
    }
}

impl MaxPool2x2 {
    /// Pools each `h`x`w` plane of `x` into `y`.
    pub fn run<T: PartialOrd + Copy>(x: &[T], y: &mut [T], h: usize, w: usize) {
        let (oh, ow) = (h / 2, w / 2);
        if oh == 0 || ow == 0 {
            return;
        }
        for (src, dst) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
            for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
                let r0 = &src[2 * oy * w..][..2 * ow];
                let r1 = &src[(2 * oy + 1) * w..][..2 * ow];
                for ((o, a), b) in out
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *o = max(max(a[0], a[1]), max(b[0], b[1]));
                }
            }
        }
    }
}

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "MaxPool2x2".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.rank() == 4, "MaxPool2x2 takes NCHW input");
        let s = x.shape();
        let (h, w) = (s[2], s[3]);
        let out_shape = [s[0], s[1], h / 2, w / 2];
        let dt = x.datum_type();
        // SAFETY: every output element is the maximum of its window, written below before any read.
        let mut y = unsafe { Tensor::uninitialized_dt(dt, &out_shape)? };
        let plain = x.try_as_plain_ram()?;
        {
            let mut out = y.try_as_plain_ram_mut()?;
            // SAFETY: the datum type is checked before each reinterpretation.
            unsafe {
                if dt == f32::datum_type() {
                    Self::run(
                        plain.as_slice_unchecked::<f32>(),
                        out.as_slice_mut_unchecked::<f32>(),
                        h,
                        w,
                    );
                } else if dt.unquantized() == i8::datum_type() {
                    Self::run(
                        plain.as_slice_unchecked::<i8>(),
                        out.as_slice_mut_unchecked::<i8>(),
                        h,
                        w,
                    );
                } else {
                    bail!("MaxPool2x2 takes f32 or i8, not {dt:?}");
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.len() == 4);
        shape[2] = shape[2].clone() / 2;
        shape[3] = shape[3].clone() / 2;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_each_plane_and_drops_odd_edges() {
        // Two planes of 3x5: the last row and column fall outside every window.
        let x: Vec<f32> = (0..30).map(|v| ((v * 7) % 11) as f32 - 5.0).collect();
        // Two planes of 1x2 outputs.
        let mut y = vec![0.0; 4];
        MaxPool2x2::run(&x, &mut y, 3, 5);
        for p in 0..2 {
            for ox in 0..2 {
                let at = |r: usize, c: usize| x[p * 15 + r * 5 + c];
                let want = [
                    at(0, 2 * ox),
                    at(0, 2 * ox + 1),
                    at(1, 2 * ox),
                    at(1, 2 * ox + 1),
                ]
                .into_iter()
                .fold(f32::MIN, f32::max);
                assert_eq!(y[p * 2 + ox], want);
            }
        }
        let xi: Vec<i8> = x.iter().map(|&v| v as i8).collect();
        let mut yi = vec![0i8; 4];
        MaxPool2x2::run(&xi, &mut yi, 3, 5);
        assert_eq!(yi, y.iter().map(|&v| v as i8).collect::<Vec<_>>());
    }
}
