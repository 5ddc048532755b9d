//! The model contract: what a U-Net ONNX file must look like for unet-edge, and the
//! `metadata_props` keys by which the trainer tells the runtime how to use it.

use crate::engine::normalize::Normalization;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// Metadata key: input normalization, see [`Normalization`]'s string form.
pub const KEY_NORMALIZATION: &str = "unet_edge.normalization";
/// Metadata key: `probability` (sigmoid applied in the graph) or `logits`.
pub const KEY_OUTPUT: &str = "unet_edge.output";
/// Metadata key: default foreground threshold on the probability.
pub const KEY_THRESHOLD: &str = "unet_edge.threshold";
/// Metadata key: the tile size the model was trained on.
pub const KEY_TILE: &str = "unet_edge.tile";
/// Metadata key: nucleus diameter range in pixels the model expects, e.g. `4-60`.
pub const KEY_DIAMETER: &str = "unet_edge.nucleus_diameter_px";
/// Metadata key: how many pixels the instance step grows each nucleus by default (0..=8), the
/// boundary correction chosen on validation images for a model whose masks run inside the
/// annotated outlines; see [`crate::post::instances::InstanceConfig::grow`].
pub const KEY_GROW: &str = "unet_edge.grow_px";
/// Largest accepted [`KEY_GROW`] (and `--grow`): beyond a few pixels growth is no correction.
pub const MAX_GROW: usize = 8;

/// Metadata key: the receptive-field-derived margin the runtime uses by default.
pub const KEY_MARGIN: &str = "unet_edge.margin";
/// Metadata key: what each output channel means, comma-separated, e.g. `foreground,core`.
/// Channel 0 is always the foreground probability; `core` is the probability that a pixel lies in
/// the inner half of its nucleus (see [`crate::post::targets::core_target`]), which is zero along the
/// line where two nuclei touch and so separates them. Absent: one `foreground` channel.
pub const KEY_CHANNELS: &str = "unet_edge.channels";

/// Metadata key: how many star-convex ray-distance channels follow the named channels (see
/// [`crate::post::star`]); they need the `core` channel, whose scores rank the polygons.
/// Absent: none.
pub const KEY_STAR_RAYS: &str = "unet_edge.star_rays";

/// Metadata key (informational): the architecture that wrote the graph, e.g. `unet base=16 depth=4`.
pub const KEY_ARCHITECTURE: &str = "unet_edge.architecture";
/// Metadata key (informational): what the model was trained on (`synthetic` or a folder).
pub const KEY_TRAINING_DATA: &str = "unet_edge.training_data";
/// Metadata key (informational): the trainer and its version.
pub const KEY_TRAINER: &str = "unet_edge.trainer";
/// Metadata key (informational): optimisation steps of the exported checkpoint's run.
pub const KEY_TRAIN_STEPS: &str = "unet_edge.train_steps";
/// Metadata key (informational): the validation figures the checkpoint was selected on.
pub const KEY_VALIDATION: &str = "unet_edge.validation";
/// Metadata key (informational): the training seed.
pub const KEY_SEED: &str = "unet_edge.seed";
/// Metadata key (informational): how `unet-quantize` made an int8 model from a float one.
pub const KEY_QUANTIZATION: &str = "unet_edge.quantization";

/// The parser of the `--grow` flags (`segment`, `live`, `unet-train export`): 0..=[`MAX_GROW`].
pub fn grow_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(0..=MAX_GROW as u64)
}

/// Checks a foreground threshold: strictly between 0 and 1, since at 0 or 1 every pixel or none
/// would be foreground. The one rule for `--threshold`, `unet-train export --threshold` and
/// [`KEY_THRESHOLD`].
pub fn check_threshold(t: f32) -> Result<f32, String> {
    if t > 0.0 && t < 1.0 {
        Ok(t)
    } else {
        Err(format!(
            "{t} is not a foreground threshold; expected a probability strictly between 0 and 1, \
             e.g. 0.4"
        ))
    }
}

/// The parser of the `--threshold` flags (`segment`, `live`, `unet-train export`).
pub fn parse_threshold(s: &str) -> Result<f32, String> {
    let t = s.trim().parse::<f32>().map_err(|_| {
        format!("{s:?} is not a number; expected a probability strictly between 0 and 1, e.g. 0.4")
    })?;
    check_threshold(t)
}

/// Channel names the runtime understands.
pub const CHANNEL_NAMES: [&str; 2] = ["foreground", "core"];

/// What the model's output means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Values in [0, 1].
    Probability,
    /// Pre-sigmoid scores; the runtime applies the sigmoid.
    Logits,
}

/// How the runtime uses a model, read from its `metadata_props` with sensible defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelMeta {
    /// Input normalization.
    pub normalization: Normalization,
    /// Output meaning.
    pub output: OutputKind,
    /// Foreground threshold on the probability.
    pub threshold: f32,
    /// Training tile size, when known.
    pub tile: Option<usize>,
    /// Default overlap margin, when the producer recorded one.
    pub margin: Option<usize>,
    /// Output channels by name; the first is `foreground`.
    pub channels: Vec<String>,
    /// Default growth of each nucleus in px ([`KEY_GROW`]; 0 when absent).
    pub grow: usize,
    /// Star-convex ray channels after the named ones ([`KEY_STAR_RAYS`]; 0 when absent).
    pub star_rays: usize,
    /// All metadata entries, verbatim.
    pub props: BTreeMap<String, String>,
}

impl Default for ModelMeta {
    fn default() -> Self {
        ModelMeta {
            normalization: Normalization::default(),
            output: OutputKind::Probability,
            threshold: 0.5,
            tile: None,
            margin: None,
            channels: vec![CHANNEL_NAMES[0].to_string()],
            grow: 0,
            star_rays: 0,
            props: BTreeMap::new(),
        }
    }
}

impl ModelMeta {
    /// Reads the contract keys from metadata entries; a present but malformed key is an error.
    pub fn from_props(props: BTreeMap<String, String>) -> Result<ModelMeta> {
        let mut m = ModelMeta::default();
        if let Some(v) = props.get(KEY_NORMALIZATION) {
            m.normalization = v
                .parse()
                .with_context(|| format!("metadata {KEY_NORMALIZATION}"))?;
        }
        if let Some(v) = props.get(KEY_OUTPUT) {
            m.output = match v.as_str() {
                "probability" => OutputKind::Probability,
                "logits" => OutputKind::Logits,
                other => bail!(
                    "metadata {KEY_OUTPUT} is {other:?}; expected \"probability\" or \"logits\""
                ),
            };
        }
        if let Some(v) = props.get(KEY_THRESHOLD) {
            m.threshold =
                parse_threshold(v).map_err(|e| anyhow::anyhow!("metadata {KEY_THRESHOLD}: {e}"))?;
        }
        let usize_key = |k: &str| -> Result<Option<usize>> {
            props
                .get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .with_context(|| format!("metadata {k} is {v:?}; expected an integer"))
                })
                .transpose()
        };
        m.tile = usize_key(KEY_TILE)?;
        m.margin = usize_key(KEY_MARGIN)?;
        if let Some(g) = usize_key(KEY_GROW)? {
            if g > MAX_GROW {
                bail!("metadata {KEY_GROW} is {g}; expected 0..={MAX_GROW} px");
            }
            m.grow = g;
        }
        if let Some(v) = props.get(KEY_CHANNELS) {
            let names: Vec<String> = v.split(',').map(|c| c.trim().to_string()).collect();
            if names.first().map(String::as_str) != Some(CHANNEL_NAMES[0])
                || names.iter().any(|n| !CHANNEL_NAMES.contains(&n.as_str()))
                || (1..names.len()).any(|i| names[..i].contains(&names[i]))
            {
                bail!(
                    "metadata {KEY_CHANNELS} is {v:?}; expected \"foreground\" or \"foreground,core\""
                );
            }
            m.channels = names;
        }
        if let Some(r) = usize_key(KEY_STAR_RAYS)? {
            if r != 0
                && (!(3..=crate::post::star::MAX_RAYS).contains(&r) || m.core_channel().is_none())
            {
                bail!(
                    "metadata {KEY_STAR_RAYS} is {r}; expected 3..={} rays after a core channel",
                    crate::post::star::MAX_RAYS
                );
            }
            m.star_rays = r;
        }
        m.props = props;
        Ok(m)
    }

    /// The contract keys as metadata entries, merged over `props`.
    pub fn to_props(&self) -> BTreeMap<String, String> {
        let mut p = self.props.clone();
        p.insert(KEY_NORMALIZATION.into(), self.normalization.to_string());
        p.insert(
            KEY_OUTPUT.into(),
            match self.output {
                OutputKind::Probability => "probability",
                OutputKind::Logits => "logits",
            }
            .into(),
        );
        p.insert(KEY_THRESHOLD.into(), self.threshold.to_string());
        if let Some(t) = self.tile {
            p.insert(KEY_TILE.into(), t.to_string());
        }
        if let Some(m) = self.margin {
            p.insert(KEY_MARGIN.into(), m.to_string());
        }
        p.insert(KEY_CHANNELS.into(), self.channels.join(","));
        if self.grow > 0 {
            p.insert(KEY_GROW.into(), self.grow.to_string());
        }
        if self.star_rays > 0 {
            p.insert(KEY_STAR_RAYS.into(), self.star_rays.to_string());
        }
        p
    }

    /// Output channels the model's graph must give: the named ones, then the star rays.
    pub fn output_channels(&self) -> usize {
        self.channels.len() + self.star_rays
    }

    /// Index of the `core` channel, when the model has one.
    pub fn core_channel(&self) -> Option<usize> {
        self.channels.iter().position(|c| c == "core")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_absent_and_round_trip() {
        let m = ModelMeta::from_props(BTreeMap::new()).unwrap();
        assert_eq!(m.threshold, 0.5);
        assert_eq!(m.output, OutputKind::Probability);
        let mut m2 = m.clone();
        m2.output = OutputKind::Logits;
        m2.tile = Some(128);
        m2.margin = Some(24);
        m2.channels = vec!["foreground".into(), "core".into()];
        m2.grow = 1;
        m2.star_rays = 32;
        let back = ModelMeta::from_props(m2.to_props()).unwrap();
        assert_eq!((back.star_rays, back.output_channels()), (32, 34));
        assert_eq!((m.star_rays, m.output_channels()), (0, 1));
        assert_eq!(back.core_channel(), Some(1));
        assert_eq!(m.core_channel(), None);
        assert_eq!(back.output, OutputKind::Logits);
        assert_eq!(back.tile, Some(128));
        assert_eq!(back.margin, Some(24));
        assert_eq!((back.grow, m.grow), (1, 0));
    }

    #[test]
    fn malformed_keys_are_named() {
        for (k, v) in [
            (KEY_OUTPUT, "softmax"),
            (KEY_THRESHOLD, "2"),
            (KEY_THRESHOLD, "0"),
            (KEY_THRESHOLD, "NaN"),
            (KEY_TILE, "big"),
            (KEY_CHANNELS, "core,foreground"),
            (KEY_CHANNELS, "foreground,edges"),
            (KEY_CHANNELS, "foreground,core,core"),
            (KEY_CHANNELS, "foreground,distance"),
            (KEY_GROW, "9"),
            (KEY_GROW, "-1"),
        ] {
            let e = ModelMeta::from_props([(k.to_string(), v.to_string())].into()).unwrap_err();
            assert!(format!("{e:#}").contains(k), "{e:#}");
        }
        // Star rays need the core channel that ranks their polygons, and 3..=MAX_RAYS of them.
        let with_core = |rays: &str| {
            ModelMeta::from_props(
                [
                    (KEY_CHANNELS.to_string(), "foreground,core".to_string()),
                    (KEY_STAR_RAYS.to_string(), rays.to_string()),
                ]
                .into(),
            )
        };
        assert_eq!(with_core("32").unwrap().star_rays, 32);
        for bad in ["2", "65", "x"] {
            let e = with_core(bad).unwrap_err();
            assert!(format!("{e:#}").contains(KEY_STAR_RAYS), "{bad}: {e:#}");
        }
        let e = ModelMeta::from_props([(KEY_STAR_RAYS.to_string(), "32".to_string())].into())
            .unwrap_err();
        assert!(format!("{e:#}").contains("core channel"), "{e:#}");
    }

    #[test]
    fn thresholds_must_lie_strictly_inside_0_1() {
        for ok in ["0.4", " 0.5", "0.999"] {
            assert!(parse_threshold(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "1", "-0.1", "3", "NaN", "inf", "0,4", ""] {
            let e = parse_threshold(bad).unwrap_err();
            assert!(e.contains("strictly between 0 and 1"), "{bad}: {e}");
        }
        assert_eq!(check_threshold(0.3), Ok(0.3));
    }
}
