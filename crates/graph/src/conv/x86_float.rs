//! x86-64 micro-kernel of [`super::float::ConvF32`].

use super::float::ConvF32;
use std::arch::x86_64::*;

/// Whether this CPU runs the AVX-512F kernel.
pub fn avx512f_available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Runs `conv` on one image with the AVX-512F micro-kernel.
pub fn run_avx512f(conv: &ConvF32, x: &[f32], y: &mut [f32]) {
    assert!(avx512f_available(), "AVX-512F kernel on a CPU without it");
    // 24 accumulators either way, plus the input vectors and a broadcast: within AVX-512's 32
    // registers.
    match conv.oc_tile {
        8 => run::<8, 3>(conv, x, y),
        4 => run::<4, 6>(conv, x, y),
        other => unreachable!("no f32 micro-kernel for {other} output channels"),
    }
}

/// `OC` output channels x `PX` vectors of 16 pixels per micro-kernel call.
fn run<const OC: usize, const PX: usize>(conv: &ConvF32, x: &[f32], y: &mut [f32]) {
    let block_px = 16 * PX;
    let g = &conv.geo;
    let (h, w) = g.hw;
    let (_, wp) = g.padded();
    let out_pixels = g.out_pixels(block_px);
    let plane = g.plane_len(out_pixels);
    let mut planes = vec![0f32; g.cin * plane];
    for c in 0..g.cin {
        for iy in 0..h {
            let src = &x[(c * h + iy) * w..(c * h + iy + 1) * w];
            planes[c * plane + (iy + g.pads[0]) * wp + g.pads[1]..][..w].copy_from_slice(src);
        }
    }
    let taps = g.tap_offsets();
    let tile_len = taps.len() * g.cin * OC;
    let bias = conv.bias();
    let mut rows = vec![0f32; OC * out_pixels];
    for (tile, weights) in conv.packed().chunks(tile_len).enumerate() {
        let oc0 = tile * OC;
        let live = OC.min(g.cout - oc0);
        let mut b = [0f32; OC];
        b[..live].copy_from_slice(&bias[oc0..oc0 + live]);
        for start in (0..out_pixels).step_by(block_px) {
            // SAFETY: the CPU has AVX-512F (asserted above); the block reads pixels
            // `start + tap + 0..16·PX` of each plane, below `plane` by its construction, and
            // writes `16·PX` values at `start` of each of the OC rows of `out_pixels`; the
            // weights hold `taps · cin · OC` values for this tile.
            unsafe {
                block::<OC, PX>(
                    planes.as_ptr().add(start),
                    plane,
                    &taps,
                    g.cin,
                    weights.as_ptr(),
                    &b,
                    conv.relu,
                    rows.as_mut_ptr().add(start),
                    out_pixels,
                )
            };
        }
        g.store_rows(&rows, out_pixels, oc0, live, y);
    }
}

/// One block: `OC` channels x `16·PX` pixels accumulated over every tap and input channel,
/// plus bias and the optional ReLU, stored at `out + o·stride`.
///
/// # Safety
/// The CPU has AVX-512F; `inp + c·plane + tap + 0..16·PX` is readable for every channel `c` and
/// tap, `w` holds `taps.len() · cin · OC` values, and `out + o·stride + 0..16·PX` is
/// writable for `o < OC`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block<const OC: usize, const PX: usize>(
    inp: *const f32,
    plane: usize,
    taps: &[usize],
    cin: usize,
    w: *const f32,
    bias: &[f32; OC],
    relu: bool,
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); PX]; OC];
    let mut wp = w;
    for c in 0..cin {
        for &t in taps {
            // SAFETY: inside the planes (the caller's contract).
            let p = unsafe { inp.add(c * plane + t) };
            // SAFETY: 16 values per vector, inside the plane.
            let v: [__m512; PX] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(p.add(16 * i)) });
            for a in acc.iter_mut() {
                // SAFETY: one value per output channel of the tile (the caller's contract).
                let b = _mm512_set1_ps(unsafe { wp.read() });
                // SAFETY: still within the tile's weights (the caller's contract).
                wp = unsafe { wp.add(1) };
                for (a, v) in a.iter_mut().zip(&v) {
                    *a = _mm512_fmadd_ps(*v, b, *a);
                }
            }
        }
    }
    let zero = _mm512_setzero_ps();
    for (o, a) in acc.iter().enumerate() {
        let b = _mm512_set1_ps(bias[o]);
        for (i, a) in a.iter().enumerate() {
            let mut v = _mm512_add_ps(*a, b);
            if relu {
                v = _mm512_max_ps(v, zero);
            }
            // SAFETY: 16 values inside row `o` (the caller's contract).
            unsafe { _mm512_storeu_ps(out.add(o * stride + 16 * i), v) };
        }
    }
}
