//! unet-edge: overlap-tile U-Net nuclei segmentation on tract, for microscope cameras on edge boards.
//!
//! Data flows one way: frame source → [`normalize`] → [`tiling`] → [`model`] (tract) →
//! stitched probability map ([`segmenter`]) → mask → sinks ([`imageio`]). The library also owns what
//! the trainer and the quantizer share: the [`contract`], the [`onnx_writer`], the [`unet`]
//! architecture, and the synthetic nuclei generator.

pub mod arena;
pub mod camera;
pub mod contract;
pub mod gpio;
pub mod im2col_i8;
pub mod imageio;
pub mod instances;
pub mod int8_ops;
pub mod live;
pub mod maxpool;
pub mod metrics;
pub mod model;
pub mod normalize;
pub mod onnx_writer;
pub mod plan_passes;
pub mod preview;
pub mod reframe;
pub mod rng;
pub mod segmenter;
pub mod source;
pub mod synth;
#[cfg(test)]
mod test_util;
pub mod tiling;
pub mod unet;
pub mod upsample_fold;
pub mod workers;
