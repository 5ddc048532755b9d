//! What CPU the engine runs on: its model name, the SIMD features it has and the convolution
//! kernels the plan takes on it, so a user on a board can report what they measured on.

use serde::Serialize;

/// The CPU report of `bench` and `info`.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// Model name from /proc/cpuinfo (`model name`, or a board's `Model`/`Hardware` line).
    pub model: String,
    /// SIMD features the kernels care about, as detected at run time.
    pub simd: Vec<&'static str>,
    /// Convolution kernels of the plan, e.g. `int8 avx512-vnni, f32 avx512f` (`tract` where the
    /// project has no kernel for this CPU).
    pub kernels: String,
}

impl CpuReport {
    /// Probes this machine.
    pub fn probe() -> CpuReport {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        CpuReport {
            model: model_name(&info),
            simd: simd_features(&info),
            kernels: unet_graph::conv::kernel_report(),
        }
    }
}

impl std::fmt::Display for CpuReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu {}  simd {}  conv kernels: {}",
            self.model,
            if self.simd.is_empty() {
                "none".to_string()
            } else {
                self.simd.join(" ")
            },
            self.kernels
        )
    }
}

/// The first of `model name` (x86), `Model` (Raspberry Pi) or `Hardware` (other ARM boards).
fn model_name(cpuinfo: &str) -> String {
    for key in ["model name", "Model", "Hardware"] {
        let found = cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        });
        if let Some(v) = found.filter(|v| !v.is_empty()) {
            return v;
        }
    }
    "unknown".to_string()
}

/// Detected features, in the order the kernels prefer them.
#[allow(unused_variables)]
fn simd_features(cpuinfo: &str) -> Vec<&'static str> {
    let mut v = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    v.push($f);
                }
            )*};
        }
        probe!(
            "sse4.1",
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    v.push($f);
                }
            )*};
        }
        probe!("neon", "dotprod", "i8mm", "fp16");
    }
    #[cfg(target_arch = "arm")]
    {
        // The runtime detection macro is unstable on 32-bit ARM; the kernel lists the features.
        let features = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("Features").and_then(|r| r.split_once(':')))
            .map(|(_, f)| f.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default();
        for (name, f) in [("neon", "neon"), ("vfpv4", "vfpv4"), ("dotprod", "asimddp")] {
            if features.contains(&f) {
                v.push(name);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_line_of_x86_and_of_a_raspberry_pi_is_found() {
        let x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu\n";
        assert_eq!(model_name(x86), "Intel(R) Xeon(R) Processor");
        let pi =
            "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\n\nHardware\t: BCM2835\n\
                  Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(model_name(pi), "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(model_name(""), "unknown");
    }

    #[test]
    fn the_report_names_the_kernels() {
        let r = CpuReport::probe();
        assert!(r.kernels.starts_with("int8 "), "{}", r.kernels);
        assert!(r.to_string().contains("conv kernels: int8 "));
        #[cfg(target_arch = "aarch64")]
        assert!(r.simd.contains(&"neon"));
    }
}
