//! The frame engine: normalization → tiles → tract → stitched probability map → mask.

pub mod arena;
pub mod cpu;
pub mod model;
pub mod normalize;
pub mod segmenter;
pub mod tiling;
pub(crate) mod workers;
