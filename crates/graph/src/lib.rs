//! unet-graph: the project's extensions to tract, apart from the runtime so that a tract upgrade
//! breaks one small crate.
//!
//! Everything here works on graphs, not frames: the [`onnx_writer`] that builds and encodes ONNX
//! (the trainer's export, the quantizer's rewrites, the tests' models), the decoder's
//! [`upsample_fold`] applied to float graphs before tract sees them, and the [`plan_passes`] that
//! put the project's operators ([`int8_ops`], [`im2col_i8`], [`maxpool`]) into tract's optimized
//! plan. The small API: [`optimize`] a typed model, [`fold`] a graph, build one with
//! [`onnx_writer::GraphBuilder`].

pub mod conv;
pub mod im2col_i8;
pub mod int8_ops;
pub mod maxpool;
pub mod onnx_writer;
pub mod plan_passes;
#[doc(hidden)]
pub mod testing;
pub mod upsample_fold;

pub use plan_passes::optimize;
pub use upsample_fold::fold;
