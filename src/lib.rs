//! unet-edge: overlap-tile U-Net nuclei segmentation on tract, for microscope cameras on edge boards.
//!
//! The modules follow the data, one way:
//!
//! 1. [`io`] — frames in: camera (V4L2), raw or MJPEG pipes, image files; region of interest and
//!    rescaling ([`io::reframe`]).
//! 2. [`engine`] — the frame engine: [`engine::normalize`] → overlap tiles ([`engine::tiling`]) →
//!    the U-Net on tract ([`engine::model`], run by [`engine::workers`] out of a per-run
//!    [`engine::arena`]) → the stitched probability map and mask ([`engine::segmenter`]).
//! 3. [`post`] — nuclei from the mask ([`post::instances`]), training targets
//!    ([`post::targets`]), scores against ground truth ([`post::metrics`]).
//! 4. [`io`] again — results out: image files, the preview server, GPIO; [`live`] joins capture,
//!    engine and sinks for days without growing memory.
//!
//! Shared with the trainer and the quantizer, apart from the stages: the model [`contract`], the
//! [`unet`] architecture, the synthetic nuclei generator ([`synth`], seeded by [`rng`]) and the
//! ONNX writer ([`onnx_writer`], from the `unet-graph` crate, which also holds the tract
//! extensions the engine plans with). The `live` feature (default) brings the live loop and its
//! I/O; without it the library builds no camera, GPIO or signal code.

pub mod contract;
pub mod engine;
pub mod io;
pub mod limits;
#[cfg(feature = "live")]
pub mod live;
pub mod post;
pub mod rng;
pub mod synth;
pub mod unet;

pub use unet_graph::onnx_writer;
