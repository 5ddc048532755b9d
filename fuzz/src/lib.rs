//! unet-edge's fuzz targets (see `targets.rs`).
pub mod targets;
