//! Times the project's convolution kernels on each layer shape of the seed U-Net at 128x128 and
//! prints the achieved rate against the core's peak, so a kernel change shows where it gains:
//!
//! ```sh
//! cargo run --release -p unet-graph --example conv_layers            # f32 and int8
//! ```

use std::time::Instant;
use tract_onnx::prelude::*;
use unet_graph::conv::float::ConvF32;
use unet_graph::conv::int8::ConvI8;
use unet_graph::conv::{Geometry, KernelPath};

fn geo(cin: usize, cout: usize, side: usize, k: usize) -> Geometry {
    let p = if k == 3 { 1 } else { 0 };
    Geometry {
        cin,
        cout,
        hw: (side, side),
        kernel: (k, k),
        pads: [p, p, p + (k == 2) as usize, p + (k == 2) as usize],
    }
}

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..10 {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / 10.0);
    }
    best
}

fn main() {
    let layers = [
        geo(1, 16, 128, 3),
        geo(16, 16, 128, 3),
        geo(16, 32, 64, 3),
        geo(32, 32, 64, 3),
        geo(32, 64, 32, 3),
        geo(64, 64, 32, 3),
        geo(64, 128, 16, 3),
        geo(128, 128, 16, 3),
        geo(128, 256, 8, 3),
        geo(256, 256, 8, 3),
        geo(256, 512, 8, 2),
    ];
    let (fp, ip) = (KernelPath::detect_float(), KernelPath::detect_int8());
    println!("kernels: f32 {fp:?}, int8 {ip:?}");
    println!(
        "{:<22} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "layer", "M MAC", "f32 ms", "GMAC/s", "int8 ms", "GMAC/s"
    );
    let (mut tf, mut ti) = (0.0, 0.0);
    for g in layers {
        let (ho, wo) = g.out_hw().unwrap();
        let macs = (g.cin * g.cout * g.kernel.0 * g.kernel.1 * ho * wo) as f64;
        let nw = g.cout * g.cin * g.kernel.0 * g.kernel.1;
        let xf: Vec<f32> = (0..g.cin * g.hw.0 * g.hw.1)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let xi: Vec<i8> = (0..g.cin * g.hw.0 * g.hw.1)
            .map(|i| (i % 200) as i8)
            .collect();
        let mut yf = vec![0f32; g.cout * ho * wo];
        let mut yi = vec![0i8; g.cout * ho * wo];
        let f = fp.map(|p| {
            let c = ConvF32::new(g, vec![0.01; nw], vec![0.0; g.cout], p).unwrap();
            time(|| c.run_image(&xf, &mut yf))
        });
        let i = ip.map(|p| {
            let c = ConvI8::new(
                g,
                -3,
                vec![1; nw],
                &vec![0; g.cout],
                vec![0.001; g.cout],
                0,
                p,
                i8::datum_type(),
            )
            .unwrap();
            time(|| c.run_image(&xi, &mut yi))
        });
        let show = |t: Option<f64>| match t {
            Some(t) => format!("{:>9.3} {:>9.1}", t * 1e3, macs / t / 1e9),
            None => format!("{:>9} {:>9}", "-", "-"),
        };
        tf += f.unwrap_or(0.0);
        ti += i.unwrap_or(0.0);
        println!(
            "{:<22} {:>8.1} {} {}",
            format!(
                "{}→{} {}x{} @{}",
                g.cin, g.cout, g.kernel.0, g.kernel.1, g.hw.0
            ),
            macs / 1e6,
            show(f),
            show(i)
        );
    }
    println!("total: f32 {:.2} ms, int8 {:.2} ms", tf * 1e3, ti * 1e3);
}
