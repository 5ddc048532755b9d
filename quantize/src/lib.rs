//! unet-quantize: post-training static int8 quantization of a unet-edge U-Net.
//!
//! Float model → [`graph`] (checked against the contract) → [`calibrate`] (activation statistics
//! on the runtime's own tiles of [`images`]) → [`rewrite`] (QLinearConv graph) → [`evaluate`]
//! (masks of both models through the runtime's frame engine).

pub mod calibrate;
pub mod evaluate;
pub mod graph;
pub mod images;
pub mod rewrite;
