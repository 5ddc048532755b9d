//! Measures this CPU's single-core f32 FMA peak (the compute floor the tile latency is compared
//! with): `cargo run --release --example fma_peak`. Uses AVX-512 or AVX2 FMA where available.

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|r| _mm512_reduce_add_ps(*r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = 0.0;
    for r in acc {
        // SAFETY: `out` holds the 8 floats an unaligned 256-bit store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), r) };
        s += out.iter().sum::<f32>();
    }
    s
}

fn main() {
    let iters = 200_000_000u64 / 12;
    #[cfg(target_arch = "x86_64")]
    {
        for (name, lanes, f) in [
            ("avx512", 16u64, fma512 as unsafe fn(u64) -> f32),
            ("avx2", 8u64, fma256 as unsafe fn(u64) -> f32),
        ] {
            let ok = if lanes == 16 {
                is_x86_feature_detected!("avx512f")
            } else {
                is_x86_feature_detected!("fma")
            };
            if !ok {
                continue;
            }
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                // SAFETY: the CPU has the features `f` was compiled for (checked above).
                let s = unsafe { f(iters) };
                best = best.min(t.elapsed().as_secs_f64());
                std::hint::black_box(s);
            }
            let flops = (iters * 12 * lanes * 2) as f64 / best;
            println!(
                "{name}: {:.1} GFLOP/s per core ({:.1} G MAC/s)",
                flops / 1e9,
                flops / 2e9
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("fma_peak measures x86_64 only");
}
