//! Fakes for the live-loop tests: a network stand-in and a scripted camera.

use std::time::Duration;
use unet_edge::contract::ModelMeta;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter, TileBackend};
use unet_edge::io::gpio::{NoPin, Pins};
use unet_edge::io::source::{FrameBuf, FrameSource, Next, SourceError};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

/// Thresholds the tile's own pixels: a network stand-in that allocates nothing.
pub struct Passthrough {
    input: Vec<f32>,
}

impl TileBackend for Passthrough {
    fn batch(&self) -> usize {
        1
    }
    fn input_mut(&mut self) -> &mut [f32] {
        &mut self.input
    }
    fn run(&mut self) -> anyhow::Result<&[f32]> {
        for v in &mut self.input {
            *v = (*v - 0.3).clamp(0.0, 1.0);
        }
        Ok(&self.input)
    }
}

/// A camera that plays prepared frames, with scripted faults first.
pub struct FakeCamera {
    frames: Vec<Vec<f32>>,
    width: usize,
    height: usize,
    faults: Vec<SourceError>,
    served: usize,
    limit: usize,
}

impl FrameSource for FakeCamera {
    fn next_into(&mut self, out: &mut FrameBuf, _t: Duration) -> Result<Next, SourceError> {
        if let Some(f) = self.faults.pop() {
            return Err(f);
        }
        if self.served == self.limit {
            return Ok(Next::End);
        }
        std::thread::sleep(Duration::from_millis(1));
        out.resize(self.width, self.height);
        out.data
            .copy_from_slice(&self.frames[self.served % self.frames.len()]);
        out.index = self.served as u64;
        self.served += 1;
        Ok(Next::Frame)
    }
}

pub fn camera(limit: usize, faults: Vec<SourceError>) -> FakeCamera {
    let (width, height) = (160, 120);
    let frames = (0..4)
        .map(|i| generate(&mut Rng::new(i), width, height, &SynthConfig::default()).image)
        .collect();
    FakeCamera {
        frames,
        width,
        height,
        faults,
        served: 0,
        limit,
    }
}

pub fn segmenter() -> Segmenter<Passthrough> {
    let cfg = SegmentConfig {
        tile: 64,
        margin: 8,
        batch: 1,
        threads: 1,
        threshold: 0.5,
        tta: 1,
    };
    Segmenter::with_backends(
        ModelMeta::default(),
        cfg,
        vec![Passthrough {
            input: vec![0.0; 64 * 64],
        }],
    )
    .unwrap()
}

pub fn no_pins() -> Pins<NoPin, NoPin, NoPin> {
    Pins::new(None, None, None, usize::MAX)
}
