//! Embeds `models/unet-nuclei.onnx` as the default model when it is present.
fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/unet-nuclei.onnx");
    println!("cargo::rustc-check-cfg=cfg(has_default_model)");
    println!("cargo::rerun-if-changed={}", path.display());
    if path.exists() {
        println!("cargo::rustc-cfg=has_default_model");
        println!(
            "cargo::rustc-env=UNET_EDGE_DEFAULT_MODEL={}",
            path.display()
        );
    }
}
