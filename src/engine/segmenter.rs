//! The frame engine: normalization → tiles → tract → stitched probability map → mask.
//!
//! Buffers are sized on the first frame of a given size and reused; a frame of the same size
//! afterwards allocates nothing in this module (see the counting-allocator test in `tests/`).

use crate::contract::{ModelMeta, OutputKind};
use crate::engine::model::{Model, TilePlan, TileRunner};
use crate::engine::tiling::TileGrid;
use crate::engine::workers::Workers;
use crate::post::instances::Guide;
use crate::post::star::StarMaps;
use anyhow::{bail, Result};
use std::time::Instant;

/// Default overlap margin for 128-px tiles, chosen from the measured seam-error curve of the seed
/// U-Net (see README, "Choosing the margin").
pub const DEFAULT_MARGIN: usize = 24;

/// Largest tile side accepted (`--tile`).
pub const MAX_TILE: usize = 2048;
/// Most tiles per model run accepted (`--batch`).
pub const MAX_BATCH: usize = 64;
/// Most worker threads accepted (`--threads`).
pub const MAX_THREADS: usize = 64;
/// The accepted `--tta` values: how many mirrored copies of a frame run.
pub const TTA_CHOICES: [usize; 3] = [1, 2, 4];

/// How frames are cut and run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentConfig {
    /// Tile side (input of the model).
    pub tile: usize,
    /// Context kept around every output pixel.
    pub margin: usize,
    /// Tiles per model run.
    pub batch: usize,
    /// Worker threads, each with its own tract state.
    pub threads: usize,
    /// Foreground threshold on the probability.
    pub threshold: f32,
    /// Test-time augmentation: the frame runs this many times, mirrored (1 = as is, 2 = also
    /// left-right, 4 = also top-bottom and both), and the probabilities are averaged.
    pub tta: usize,
}

impl SegmentConfig {
    /// The margin used when none is asked for: the model's recorded margin, else
    /// [`DEFAULT_MARGIN`] scaled with the tile side.
    pub fn default_margin(model: &Model, tile: usize) -> usize {
        model.meta.margin.unwrap_or(DEFAULT_MARGIN * tile / 128)
    }

    /// Defaults for a model: its tile size, [`SegmentConfig::default_margin`], batch 1, 1 thread.
    pub fn for_model(model: &Model) -> SegmentConfig {
        let tile = model.default_tile();
        SegmentConfig {
            tile,
            margin: Self::default_margin(model, tile),
            batch: 1,
            threads: 1,
            threshold: model.meta.threshold,
            tta: 1,
        }
    }
}

/// Timing of one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrameTiming {
    /// Tiles run.
    pub tiles: usize,
    /// Wall time of the whole frame (normalize, tiles, stitch, mask), ms.
    pub frame_ms: f32,
    /// Mean model time per tile (all `--tta` passes of it), ms.
    pub ms_per_tile: f32,
    /// Median model time per tile, ms.
    pub ms_per_tile_p50: f32,
    /// Slowest tile, ms.
    pub ms_per_tile_max: f32,
}

/// Something that maps a batch of tiles to a batch of probability tiles: tract's runner in the
/// product, a plain-Rust stand-in where a test must count only this module's allocations.
pub trait TileBackend: Send {
    /// Tiles per run.
    fn batch(&self) -> usize;
    /// The `[batch,1,tile,tile]` input buffer to fill.
    fn input_mut(&mut self) -> &mut [f32];
    /// Output channels per tile (channel 0 is the foreground probability).
    fn channels(&self) -> usize {
        1
    }
    /// Runs the batch; the output is `[batch,channels,tile,tile]`.
    fn run(&mut self) -> Result<&[f32]>;
}

impl TileBackend for TileRunner {
    fn batch(&self) -> usize {
        self.batch
    }
    fn input_mut(&mut self) -> &mut [f32] {
        TileRunner::input_mut(self)
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn run(&mut self) -> Result<&[f32]> {
        TileRunner::run(self)
    }
}

/// Runs a U-Net over whole frames of any size.
pub struct Segmenter<B: TileBackend = TileRunner> {
    meta: ModelMeta,
    cfg: SegmentConfig,
    runners: Vec<B>,
    /// Threads for runners 1.. (runner 0 runs on the caller's thread), started once.
    workers: Workers,
    grid: Option<TileGrid>,
    normalized: Vec<f32>,
    scratch: Vec<f32>,
    prob: Vec<f32>,
    /// Stitched `core` channel, when the model has one (else empty).
    core: Vec<f32>,
    /// Stitched star-ray channels, one plane per ray, when the model has them (else empty).
    rays: Vec<f32>,
    /// With `tta` > 1: the mirrored input of the current pass, and the sums of the passes'
    /// probabilities and core channels (else empty).
    mirrored: Vec<f32>,
    prob_sum: Vec<f32>,
    core_sum: Vec<f32>,
    mask: Vec<u8>,
    tile_ms: Vec<f32>,
}

/// A raw pointer that worker threads share; each writes only the disjoint rectangles its tiles own.
#[derive(Clone, Copy)]
struct SharedOut {
    prob: *mut f32,
    tile_ms: *mut f32,
    /// Where the core channel goes, with its channel index; `None` when not wanted.
    core: Option<(*mut f32, usize)>,
    /// Where the star-ray planes go (plane stride = frame pixels), their first channel and count.
    rays: Option<(*mut f32, usize, usize)>,
}
// SAFETY: every tile owns a disjoint output rectangle and a distinct timing slot (TileGrid::owned).
unsafe impl Send for SharedOut {}
// SAFETY: as for Send: no two threads write the same element.
unsafe impl Sync for SharedOut {}

/// The runners, shared with the worker threads; job `i` uses runner `i` alone.
#[derive(Clone, Copy)]
struct Runners<B>(*mut B);
// SAFETY: each job dereferences a distinct runner, and `B: Send` lets it move between threads.
unsafe impl<B: Send> Send for Runners<B> {}
// SAFETY: as for Send: no two jobs share a runner.
unsafe impl<B: Send> Sync for Runners<B> {}

impl<B> Runners<B> {
    /// Runner `i`.
    ///
    /// # Safety
    /// `i` is in bounds and no other reference to runner `i` is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize) -> &mut B {
        // SAFETY: the caller keeps `i` in bounds and the reference unique.
        unsafe { &mut *self.0.add(i) }
    }
}

impl SegmentConfig {
    /// Checks the options against each other; errors name the offending option.
    pub fn validate(&self) -> Result<()> {
        if self.tile == 0 {
            bail!("--tile must be at least 1");
        }
        if self.threads == 0 || self.batch == 0 {
            bail!("--threads and --batch must be at least 1");
        }
        // Beyond these, a run only costs memory (tract plans a batch's buffers up front): a
        // mistyped value must be an error, not gigabytes or an allocation failure inside tract.
        if self.tile > MAX_TILE {
            bail!("--tile {} is larger than {MAX_TILE} px", self.tile);
        }
        if self.batch > MAX_BATCH {
            bail!(
                "--batch {}: at most {MAX_BATCH} tiles per model run (larger batches gain no speed)",
                self.batch
            );
        }
        if self.threads > MAX_THREADS {
            bail!("--threads {}: at most {MAX_THREADS}", self.threads);
        }
        if !TTA_CHOICES.contains(&self.tta) {
            bail!(
                "--tta {}: choose 1 (no mirroring), 2 (left-right) or 4 (left-right, top-bottom \
                 and both)",
                self.tta
            );
        }
        if let Err(e) = crate::contract::check_threshold(self.threshold) {
            bail!("--threshold {e}");
        }
        if 2 * self.margin >= self.tile {
            bail!(
                "--margin {} is too large for --tile {}: need 2 x margin < tile",
                self.margin,
                self.tile
            );
        }
        Ok(())
    }
}

impl Segmenter<TileRunner> {
    /// Builds the optimized plan and one tract runner per thread.
    pub fn new(model: &Model, cfg: SegmentConfig) -> Result<Segmenter> {
        cfg.validate()?;
        let plan: TilePlan = model.plan(cfg.batch, cfg.tile)?;
        let runners = (0..cfg.threads)
            .map(|_| plan.runner())
            .collect::<Result<Vec<_>>>()?;
        Segmenter::with_backends(model.meta.clone(), cfg, runners)
    }
}

impl<B: TileBackend> Segmenter<B> {
    /// A segmenter over given backends, one per worker thread.
    pub fn with_backends(
        meta: ModelMeta,
        cfg: SegmentConfig,
        runners: Vec<B>,
    ) -> Result<Segmenter<B>> {
        cfg.validate()?;
        if runners.is_empty() || runners.iter().any(|r| r.batch() != cfg.batch) {
            bail!("need at least one backend, each with batch {}", cfg.batch);
        }
        if runners
            .iter()
            .any(|r| r.channels() != meta.output_channels())
        {
            bail!(
                "the model's metadata names {} output channel(s) ({}{}), the backend gives {}",
                meta.output_channels(),
                meta.channels.join(","),
                if meta.star_rays > 0 {
                    format!(" and {} star rays", meta.star_rays)
                } else {
                    String::new()
                },
                runners[0].channels()
            );
        }
        if meta.star_rays > 0 && cfg.tta > 1 {
            bail!(
                "--tta {} is not supported for a model with star-convex rays (mirroring would \
                 have to permute the rays); use --tta 1",
                cfg.tta
            );
        }
        let workers = Workers::new(runners.len() - 1)?;
        Ok(Segmenter {
            meta,
            cfg,
            runners,
            workers,
            grid: None,
            normalized: Vec::new(),
            scratch: Vec::new(),
            prob: Vec::new(),
            core: Vec::new(),
            rays: Vec::new(),
            mirrored: Vec::new(),
            prob_sum: Vec::new(),
            core_sum: Vec::new(),
            mask: Vec::new(),
            tile_ms: Vec::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SegmentConfig {
        &self.cfg
    }

    /// Sizes every buffer for `width`x`height` frames (done on demand by [`Segmenter::segment`]).
    pub fn prepare(&mut self, width: usize, height: usize) -> Result<&TileGrid> {
        let fresh = match &self.grid {
            Some(g) => g.width != width || g.height != height,
            None => true,
        };
        if fresh {
            let grid = TileGrid::new(width, height, self.cfg.tile, self.cfg.margin)?;
            let n = width * height;
            self.normalized.resize(n, 0.0);
            self.prob.resize(n, 0.0);
            let has_core = self.meta.core_channel().is_some();
            if has_core {
                self.core.resize(n, 0.0);
            }
            self.rays.resize(self.meta.star_rays * n, 0.0);
            if self.cfg.tta > 1 {
                self.mirrored.resize(n, 0.0);
                self.prob_sum.resize(n, 0.0);
                if has_core {
                    self.core_sum.resize(n, 0.0);
                }
            }
            self.mask.resize(n, 0);
            self.tile_ms.resize(grid.len(), 0.0);
            self.scratch
                .reserve(crate::engine::normalize::MAX_PERCENTILE_SAMPLES.min(n));
            self.grid = Some(grid);
        }
        Ok(self.grid.as_ref().expect("just set"))
    }

    /// Segments one frame of raw intensities (row-major); results stay in the segmenter.
    pub fn segment(&mut self, frame: &[f32], width: usize, height: usize) -> Result<FrameTiming> {
        if frame.len() != width * height {
            bail!(
                "frame buffer holds {} values, expected {width}x{height}",
                frame.len()
            );
        }
        let t0 = Instant::now();
        self.prepare(width, height)?;
        self.meta
            .normalization
            .apply(frame, &mut self.normalized, &mut self.scratch);
        self.tile_ms.iter_mut().for_each(|t| *t = 0.0);
        if self.cfg.tta == 1 {
            self.run_tiles(false)?;
            self.apply_sigmoid();
        } else {
            self.prob_sum.iter_mut().for_each(|p| *p = 0.0);
            self.core_sum.iter_mut().for_each(|p| *p = 0.0);
            for flip in 0..self.cfg.tta {
                // Pass 0 is the frame as is: it reads the normalized buffer, no copy.
                if flip != 0 {
                    mirror(&self.normalized, &mut self.mirrored, width, height, flip);
                }
                self.run_tiles(flip != 0)?;
                self.apply_sigmoid();
                // Mirroring is its own inverse: reading the pass's output through the same flip
                // puts every pixel back where it came from.
                add_mirrored(&self.prob, &mut self.prob_sum, width, height, flip);
                if !self.core.is_empty() {
                    add_mirrored(&self.core, &mut self.core_sum, width, height, flip);
                }
            }
            let scale = 1.0 / self.cfg.tta as f32;
            for (p, s) in self.prob.iter_mut().zip(&self.prob_sum) {
                *p = s * scale;
            }
            for (p, s) in self.core.iter_mut().zip(&self.core_sum) {
                *p = s * scale;
            }
        }
        if !threshold_into(&self.prob, self.cfg.threshold, &mut self.mask) {
            // NaN compares false with the threshold: without this the frame would come out empty
            // ("0 nuclei") instead of wrong.
            bail!(
                "the model produced NaN or infinite probabilities for this frame (broken or \
                 overflowing weights?); no mask was made"
            );
        }
        let frame_ms = t0.elapsed().as_secs_f32() * 1e3;
        Ok(self.timing(frame_ms))
    }

    /// Logit models: turns the stitched maps into probabilities (averaging passes needs them).
    fn apply_sigmoid(&mut self) {
        if self.meta.output == OutputKind::Logits {
            for p in self
                .prob
                .iter_mut()
                .chain(self.core.iter_mut())
                .chain(self.rays.iter_mut())
            {
                *p = 1.0 / (1.0 + (-*p).exp());
            }
        }
    }

    /// Runs every tile of the normalized frame, or of its mirrored copy, into `prob`/`core`;
    /// each tile's model time adds to its `tile_ms` slot.
    fn run_tiles(&mut self, from_mirrored: bool) -> Result<()> {
        let grid = self.grid.as_ref().expect("prepared");
        let n = grid.len();
        let threads = self.runners.len().min(n.div_ceil(self.cfg.batch)).max(1);
        let per = n.div_ceil(threads);
        let out = SharedOut {
            prob: self.prob.as_mut_ptr(),
            tile_ms: self.tile_ms.as_mut_ptr(),
            core: self
                .meta
                .core_channel()
                .map(|c| (self.core.as_mut_ptr(), c)),
            rays: (self.meta.star_rays > 0).then_some((
                self.rays.as_mut_ptr(),
                self.meta.channels.len(),
                self.meta.star_rays,
            )),
        };
        let normalized = if from_mirrored {
            &self.mirrored
        } else {
            &self.normalized
        };
        let runners = Runners(self.runners.as_mut_ptr());
        let job = move |i: usize| {
            // SAFETY: Workers::run calls each index once, and there are `threads` runners.
            let runner = unsafe { runners.get(i) };
            let range = (i * per).min(n)..((i + 1) * per).min(n);
            run_range(runner, grid, normalized, range, out)
        };
        self.workers.run(threads, &job)
    }

    fn timing(&mut self, frame_ms: f32) -> FrameTiming {
        let tiles = self.tile_ms.len();
        if tiles == 0 {
            return FrameTiming {
                frame_ms,
                ..Default::default()
            };
        }
        let mean = self.tile_ms.iter().sum::<f32>() / tiles as f32;
        let max = self.tile_ms.iter().copied().fold(0.0, f32::max);
        // Sorting in place is fine: the slots are rewritten on every frame.
        self.tile_ms.sort_unstable_by(f32::total_cmp);
        let p50 = self.tile_ms[tiles / 2];
        FrameTiming {
            tiles,
            frame_ms,
            ms_per_tile: mean,
            ms_per_tile_p50: p50,
            ms_per_tile_max: max,
        }
    }

    /// The stitched probability map of the last frame.
    pub fn prob(&self) -> &[f32] {
        &self.prob
    }

    /// The stitched `core` channel of the last frame, when the model has one.
    pub fn core(&self) -> Option<&[f32]> {
        (!self.core.is_empty()).then_some(&self.core[..])
    }

    /// What the instance step should use besides the mask: the star rays when the model has
    /// them, else its core channel, else nothing.
    pub fn guide(&self) -> Guide<'_> {
        match self.core() {
            Some(core) if self.meta.star_rays > 0 => Guide::Star(StarMaps {
                core,
                rays: &self.rays,
                n_rays: self.meta.star_rays,
            }),
            Some(core) => Guide::Core(core),
            None => Guide::Mask,
        }
    }

    /// The binary mask (0/1) of the last frame.
    pub fn mask(&self) -> &[u8] {
        &self.mask
    }

    /// The last frame's mask at another threshold, written into `out` (resized to the frame): for
    /// choosing a threshold on validation images without running the network again.
    pub fn mask_at(&self, threshold: f32, out: &mut Vec<u8>) {
        out.resize(self.prob.len(), 0);
        threshold_into(&self.prob, threshold, out);
    }

    /// The normalized input of the last frame.
    pub fn normalized(&self) -> &[f32] {
        &self.normalized
    }

    /// The tile grid of the current frame size.
    pub fn grid(&self) -> Option<&TileGrid> {
        self.grid.as_ref()
    }

    /// Fraction of pixels above the threshold in the last frame.
    pub fn foreground_fraction(&self) -> f32 {
        if self.mask.is_empty() {
            return 0.0;
        }
        self.mask.iter().map(|&m| m as usize).sum::<usize>() as f32 / self.mask.len() as f32
    }
}

/// The one foreground rule: `mask[i] = prob[i] > threshold`. Returns false when a probability is
/// NaN or infinite.
fn threshold_into(prob: &[f32], threshold: f32, mask: &mut [u8]) -> bool {
    let mut finite = true;
    for (m, p) in mask.iter_mut().zip(prob) {
        finite &= p.is_finite();
        *m = u8::from(*p > threshold);
    }
    finite
}

/// Copies `src` into `dst` mirrored left-right when bit 0 of `flip` is set and top-bottom when
/// bit 1 is.
fn mirror(src: &[f32], dst: &mut [f32], w: usize, h: usize, flip: usize) {
    for_mirrored(src, dst, w, h, flip, |d, s| *d = s);
}

/// Adds `src`, mirrored as [`mirror`] does, to `dst`.
fn add_mirrored(src: &[f32], dst: &mut [f32], w: usize, h: usize, flip: usize) {
    for_mirrored(src, dst, w, h, flip, |d, s| *d += s);
}

/// Applies `op(dst pixel, its mirrored src pixel)` to every pixel.
fn for_mirrored(
    src: &[f32],
    dst: &mut [f32],
    w: usize,
    h: usize,
    flip: usize,
    op: impl Fn(&mut f32, f32),
) {
    for y in 0..h {
        let sy = if flip & 2 != 0 { h - 1 - y } else { y };
        let (s, d) = (&src[sy * w..(sy + 1) * w], &mut dst[y * w..(y + 1) * w]);
        if flip & 1 != 0 {
            d.iter_mut()
                .zip(s.iter().rev())
                .for_each(|(d, &s)| op(d, s));
        } else {
            d.iter_mut().zip(s).for_each(|(d, &s)| op(d, s));
        }
    }
}

/// Runs tiles `range` of the grid through one runner, writing owned outputs and timings.
fn run_range<B: TileBackend>(
    runner: &mut B,
    grid: &TileGrid,
    frame: &[f32],
    range: std::ops::Range<usize>,
    out: SharedOut,
) -> Result<()> {
    let tt = grid.tile * grid.tile;
    let batch = runner.batch();
    let channels = runner.channels();
    let mut k = range.start;
    while k < range.end {
        let m = batch.min(range.end - k);
        let input = runner.input_mut();
        for j in 0..m {
            grid.gather(frame, k + j, &mut input[j * tt..(j + 1) * tt]);
        }
        let t0 = Instant::now();
        let output = runner.run()?;
        let ms = t0.elapsed().as_secs_f32() * 1e3 / m as f32;
        for j in 0..m {
            let (t, w) = (grid.tile, grid.width);
            let tile_out = &output[j * channels * tt..(j + 1) * channels * tt];
            let copy = |dst_base: *mut f32, channel: usize| {
                let src = &tile_out[channel * tt..(channel + 1) * tt];
                grid.for_owned_rows(k + j, |fy, fx, ty, tx, len| {
                    // SAFETY: tile k+j owns this row segment exclusively (see SharedOut).
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(dst_base.add(fy * w + fx), len) };
                    dst.copy_from_slice(&src[ty * t + tx..ty * t + tx + len]);
                });
            };
            copy(out.prob, 0);
            if let Some((core, c)) = out.core {
                copy(core, c);
            }
            if let Some((rays, first, count)) = out.rays {
                let plane = grid.width * grid.height;
                for r in 0..count {
                    // SAFETY: plane r of the ray buffer, which holds `count` planes of the frame.
                    copy(unsafe { rays.add(r * plane) }, first + r);
                }
            }
            // SAFETY: one timing slot per tile, written by the tile's only worker.
            unsafe { *out.tile_ms.add(k + j) += ms };
        }
        k += m;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tile output = the tile's input one pixel to the right: not mirror-symmetric, so `--tta`
    /// changes what it gives.
    struct ShiftLeft {
        tile: usize,
        input: Vec<f32>,
        output: Vec<f32>,
    }

    impl TileBackend for ShiftLeft {
        fn batch(&self) -> usize {
            1
        }
        fn input_mut(&mut self) -> &mut [f32] {
            &mut self.input
        }
        fn run(&mut self) -> Result<&[f32]> {
            let t = self.tile;
            for y in 0..t {
                for x in 0..t {
                    self.output[y * t + x] = self.input[y * t + (x + 1).min(t - 1)];
                }
            }
            Ok(&self.output)
        }
    }

    /// A frame whose every row is the ramp 0, 1, .., w-1.
    fn ramp(w: usize, h: usize) -> Vec<f32> {
        (0..w * h).map(|i| (i % w) as f32).collect()
    }

    fn segmenter(tta: usize) -> Segmenter<ShiftLeft> {
        let tile = 32;
        let cfg = SegmentConfig {
            tile,
            margin: 4,
            batch: 1,
            threads: 1,
            threshold: 0.5,
            tta,
        };
        let backend = ShiftLeft {
            tile,
            input: vec![0.0; tile * tile],
            output: vec![0.0; tile * tile],
        };
        Segmenter::with_backends(ModelMeta::default(), cfg, vec![backend]).unwrap()
    }

    #[test]
    fn mirror_is_its_own_inverse_and_flips_the_named_axes() {
        let (w, h) = (3, 2);
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 6];
        mirror(&src, &mut dst, w, h, 1);
        assert_eq!(dst, [2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        mirror(&src, &mut dst, w, h, 2);
        assert_eq!(dst, [3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
        for flip in 0..4 {
            mirror(&src, &mut dst, w, h, flip);
            let mut back = vec![0.0; 6];
            add_mirrored(&dst, &mut back, w, h, flip);
            assert_eq!(back, src, "flip {flip}");
        }
    }

    #[test]
    fn tta_averages_the_mirrored_passes_back_in_place() {
        // A horizontal ramp: the shift reads x+1, its mirrored pass reads x-1, so their mean
        // is the pixel itself.
        let (w, h) = (90, 50);
        let frame = ramp(w, h);
        let mut one = segmenter(1);
        one.segment(&frame, w, h).unwrap();
        let n = one.normalized().to_vec();
        for tta in [2, 4] {
            let mut seg = segmenter(tta);
            seg.segment(&frame, w, h).unwrap();
            for y in 0..h {
                for x in 1..w - 1 {
                    let i = y * w + x;
                    assert!((one.prob()[i] - n[i + 1]).abs() < 1e-5, "tta 1 at {x},{y}");
                    assert!((seg.prob()[i] - n[i]).abs() < 1e-5, "tta {tta} at {x},{y}");
                }
            }
            assert_eq!(seg.timing(0.0).tiles, one.timing(0.0).tiles);
        }
    }

    #[test]
    fn tta_other_than_1_2_4_is_refused_by_name() {
        let cfg = SegmentConfig {
            tta: 3,
            ..segmenter(1).cfg
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("--tta 3") && e.contains("choose 1"), "{e}");
    }

    #[test]
    fn mask_at_applies_the_segment_rule_at_any_threshold() {
        let (w, h) = (40, 30);
        let mut seg = segmenter(1);
        seg.segment(&ramp(w, h), w, h).unwrap();
        let mut mask = vec![7; 3];
        seg.mask_at(0.5, &mut mask);
        assert_eq!(mask, seg.mask());
        for t in [0.2, 0.7] {
            seg.mask_at(t, &mut mask);
            assert_eq!(mask.len(), w * h);
            for (m, p) in mask.iter().zip(seg.prob()) {
                assert_eq!(*m, u8::from(*p > t), "p {p} at {t}");
            }
        }
        // The normalized ramp spans both sides of the thresholds: the test sees both answers.
        assert!(mask.contains(&0) && mask.contains(&1));
    }

    #[test]
    fn thresholds_outside_0_1_are_refused_by_name() {
        for threshold in [0.0, 1.0, f32::NAN] {
            let cfg = SegmentConfig {
                threshold,
                ..segmenter(1).cfg
            };
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.contains("--threshold") && e.contains("between 0 and 1"),
                "{e}"
            );
        }
    }
}
