//! Frames in and results out: image files always; with the `live` feature the camera, pipes,
//! region of interest, preview server and GPIO.

#[cfg(feature = "live")]
pub mod camera;
#[cfg(feature = "live")]
pub mod faults;
#[cfg(feature = "live")]
pub mod gpio;
pub mod imageio;
#[cfg(feature = "live")]
pub mod metrics;
#[cfg(feature = "live")]
pub mod mqtt;
#[cfg(feature = "live")]
pub mod preview;
pub mod record;
#[cfg(feature = "live")]
pub mod reframe;
#[cfg(feature = "live")]
pub mod source;
