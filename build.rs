//! Embeds the default model: `models/unet-nuclei.onnx` when it is present, or the ONNX file named
//! by `UNET_EDGE_EMBED` (e.g. `models/unet-nuclei.int8.onnx`; relative to the package root).
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("cargo::rustc-check-cfg=cfg(has_default_model)");
    println!("cargo::rerun-if-env-changed=UNET_EDGE_EMBED");
    // The integration tests find the cross runner (qemu) of the target they were built for.
    println!(
        "cargo::rustc-env=UNET_EDGE_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    let path = match std::env::var_os("UNET_EDGE_EMBED") {
        Some(p) => {
            let p = root.join(p);
            if !p.is_file() {
                panic!(
                    "UNET_EDGE_EMBED={}: no such model file (give an ONNX path relative to {})",
                    p.display(),
                    root.display()
                );
            }
            p
        }
        None => root.join("models/unet-nuclei.onnx"),
    };
    println!("cargo::rerun-if-changed={}", path.display());
    if path.exists() {
        println!("cargo::rustc-cfg=has_default_model");
        println!(
            "cargo::rustc-env=UNET_EDGE_DEFAULT_MODEL={}",
            path.display()
        );
    }
}
