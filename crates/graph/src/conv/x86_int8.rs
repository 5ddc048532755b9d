//! x86-64 micro-kernels of [`super::ConvI8`].

use super::int8::ConvI8;
use std::arch::x86_64::*;

/// Whether this CPU runs the AVX-512 VNNI kernel.
pub fn avx512_vnni_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Copies `x` (`cin x H x W` i8) into the padded, channel-interleaved unsigned planes the
/// kernel reads (see the module docs of [`super`]); returns them and the plane length in pixels.
fn interleave(conv: &ConvI8, x: &[i8], out_pixels: usize) -> (Vec<u32>, usize) {
    let g = &conv.geo;
    let (h, w) = g.hw;
    let (_, wp) = g.padded();
    let groups = g.cin.div_ceil(4);
    let plane = g.plane_len(out_pixels);
    let pad = u32::from_ne_bytes([(conv.x0 as u8) ^ 0x80; 4]);
    let mut planes = vec![pad; groups * plane];
    for c in 0..g.cin {
        let dst = &mut planes[(c / 4) * plane..(c / 4 + 1) * plane];
        let shift = 8 * (c % 4);
        let keep = !(0xffu32 << shift);
        for iy in 0..h {
            let src = &x[(c * h + iy) * w..(c * h + iy + 1) * w];
            let row = &mut dst[(iy + g.pads[0]) * wp + g.pads[1]..][..w];
            for (d, &v) in row.iter_mut().zip(src) {
                *d = (*d & keep) | ((((v as u8) ^ 0x80) as u32) << shift);
            }
        }
    }
    (planes, plane)
}

/// Runs `conv` on one image with the AVX-512 VNNI micro-kernel.
pub fn run_avx512_vnni(conv: &ConvI8, x: &[i8], y: &mut [i8]) {
    assert!(
        avx512_vnni_available(),
        "AVX-512 VNNI kernel on a CPU without it"
    );
    // 24 accumulators either way, plus the input vectors and a broadcast: within AVX-512's 32
    // registers.
    match conv.oc_tile {
        8 => run::<8, 3>(conv, x, y),
        4 => run::<4, 6>(conv, x, y),
        other => unreachable!("no int8 micro-kernel for {other} output channels"),
    }
}

/// `OC` output channels x `PX` vectors of 16 pixels per micro-kernel call.
fn run<const OC: usize, const PX: usize>(conv: &ConvI8, x: &[i8], y: &mut [i8]) {
    let block_px = 16 * PX;
    let g = &conv.geo;
    let groups = g.cin.div_ceil(4);
    let out_pixels = g.out_pixels(block_px);
    let (planes, plane) = interleave(conv, x, out_pixels);
    let taps = g.tap_offsets();
    let scales = conv.scales();
    let tile_len = taps.len() * groups * OC * 4;
    let mut rows = vec![0i8; OC * out_pixels];
    for (tile, weights) in conv.packed.chunks(tile_len).enumerate() {
        let oc0 = tile * OC;
        let live = OC.min(g.cout - oc0);
        let mut comp = [0i32; OC];
        let mut scale = [0f32; OC];
        comp[..live].copy_from_slice(&conv.epilogue.comp[oc0..oc0 + live]);
        scale[..live].copy_from_slice(&scales[oc0..oc0 + live]);
        let epi = Epi {
            comp,
            scale,
            zero_point: conv.epilogue.zero_point,
        };
        for start in (0..out_pixels).step_by(block_px) {
            // SAFETY: the CPU has the features (asserted above); the block reads pixels
            // `start + tap + 0..16·PX` of each plane, below `plane` by its construction, and
            // writes `16·PX` bytes at `start` of each of the OC rows of `out_pixels`; the
            // weights hold `taps · groups · OC` words for this tile.
            unsafe {
                block::<OC, PX>(
                    planes.as_ptr().add(start),
                    plane,
                    &taps,
                    groups,
                    weights.as_ptr() as *const i32,
                    &epi,
                    rows.as_mut_ptr().add(start),
                    out_pixels,
                )
            };
        }
        g.store_rows(&rows, out_pixels, oc0, live, y);
    }
}

/// The epilogue constants of one tile of output channels.
struct Epi<const OC: usize> {
    comp: [i32; OC],
    scale: [f32; OC],
    zero_point: i32,
}

/// One block: `OC` channels x `16·PX` pixels accumulated over every tap and channel group,
/// requantized, stored at `out + o·stride`.
///
/// # Safety
/// The CPU has AVX-512F/BW and AVX-512 VNNI; `inp + g·plane + tap + 0..16·PX` is readable for
/// every group `g` and tap, `w` holds `taps.len() · groups · OC` words, and
/// `out + o·stride + 0..16·PX` is writable for `o < OC`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block<const OC: usize, const PX: usize>(
    inp: *const u32,
    plane: usize,
    taps: &[usize],
    groups: usize,
    w: *const i32,
    epi: &Epi<OC>,
    out: *mut i8,
    stride: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); PX]; OC];
    let mut wp = w;
    for g in 0..groups {
        for &t in taps {
            // SAFETY: inside the planes (the caller's contract).
            let p = unsafe { inp.add(g * plane + t) };
            // SAFETY: 16 pixels of 4 bytes each per vector, inside the plane.
            let v: [__m512i; PX] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_si512(p.add(16 * i) as *const _) });
            for a in acc.iter_mut() {
                // SAFETY: one word per output channel of the tile (the caller's contract).
                let b = _mm512_set1_epi32(unsafe { wp.read_unaligned() });
                // SAFETY: still within the tile's weights (the caller's contract).
                wp = unsafe { wp.add(1) };
                for (a, v) in a.iter_mut().zip(&v) {
                    *a = _mm512_dpbusd_epi32(*a, *v, b);
                }
            }
        }
    }
    let (fmin, fmax) = (_mm512_set1_ps(-32768.0), _mm512_set1_ps(32767.0));
    let zp = _mm512_set1_epi32(epi.zero_point);
    for (o, a) in acc.iter().enumerate() {
        let c = _mm512_set1_epi32(epi.comp[o]);
        let s = _mm512_set1_ps(epi.scale[o]);
        for (i, a) in a.iter().enumerate() {
            // Same arithmetic as `requantize`: exact i32 → f32 (nearest), one multiply, a
            // clamp to ±2^15, round half to even (the default MXCSR mode), the zero point, and
            // a saturating narrow to i8.
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(*a, c)), s);
            let f = _mm512_max_ps(_mm512_min_ps(f, fmax), fmin);
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), zp);
            // SAFETY: 16 bytes inside row `o` (the caller's contract).
            unsafe {
                _mm_storeu_si128(
                    out.add(o * stride + 16 * i) as *mut __m128i,
                    _mm512_cvtsepi32_epi8(q),
                )
            };
        }
    }
}
