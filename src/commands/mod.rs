//! One module per subcommand; each `run` returns the process exit code.

pub mod bench;
pub mod eval;
pub mod info;
pub mod live;
pub mod segment;

use crate::RunArgs;
use anyhow::Result;
use unet_edge::contract::{KEY_MARGIN, KEY_TILE};
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::SegmentConfig;

/// Loads the model and resolves the tiling options against its defaults.
pub fn load(run: &RunArgs, threshold: Option<f32>) -> Result<(Model, SegmentConfig)> {
    let model = Model::load(run.model.as_deref())?;
    let mut cfg = SegmentConfig::for_model(&model);
    if let Some(t) = run.tile {
        cfg.tile = t;
        if run.margin.is_none() {
            cfg.margin = SegmentConfig::default_margin(&model, t);
        }
    }
    if let Some(m) = run.margin {
        cfg.margin = m;
    }
    if let Some(t) = threshold {
        cfg.threshold = t;
    }
    cfg.batch = run.batch;
    cfg.threads = run.threads;
    cfg.tta = run.tta;
    cfg.validate().map_err(|e| {
        // Values the user did not pass came from the model: say so, with the metadata keys.
        let mut from_model = Vec::new();
        if run.tile.is_none() {
            from_model.push(format!("tile {} ({})", cfg.tile, KEY_TILE));
        }
        if run.margin.is_none() && model.meta.margin.is_some() {
            from_model.push(format!("margin {} ({})", cfg.margin, KEY_MARGIN));
        }
        if from_model.is_empty() {
            e
        } else {
            e.context(format!(
                "model {}: {} from its metadata or input shape",
                model.source,
                from_model.join(", ")
            ))
        }
    })?;
    Ok((model, cfg))
}
