//! Loading a U-Net ONNX into tract: contract checks, metadata, and the fixed-shape optimized plan.

use crate::contract::ModelMeta;
use crate::engine::arena::{Arena, ArenaStats};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::Cost;
use unet_graph::onnx_writer;

/// The model the binary embeds, when one was present at build time.
pub fn embedded_model() -> Option<&'static [u8]> {
    #[cfg(has_default_model)]
    {
        Some(include_bytes!(env!("UNET_EDGE_DEFAULT_MODEL")))
    }
    #[cfg(not(has_default_model))]
    {
        None
    }
}

/// A loaded, contract-checked U-Net model, not yet bound to a tile size.
#[derive(Clone)]
pub struct Model {
    /// Where it came from (path, or `<embedded>`).
    pub source: String,
    /// Contract metadata.
    pub meta: ModelMeta,
    proto: Arc<pb::ModelProto>,
    /// Declared input dims: `Some(n)` fixed, `None` symbolic.
    declared_input: Vec<Option<i64>>,
}

impl Model {
    /// Loads a model from a file.
    pub fn from_path(path: &Path) -> Result<Model> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
        Model::from_bytes(&bytes, &path.display().to_string())
    }

    /// Loads the model named by `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Model> {
        match path {
            Some(p) => Model::from_path(p),
            None => match embedded_model() {
                Some(bytes) => Model::from_bytes(bytes, "<embedded>"),
                None => bail!(
                    "no model: this build embeds no default model, so --model PATH (a U-Net ONNX file) is required"
                ),
            },
        }
    }

    /// Loads a model from ONNX bytes; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Model> {
        let proto =
            onnx_writer::decode(bytes).with_context(|| format!("loading model {source}"))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| anyhow!("model {source}: ONNX file has no graph"))?;
        let init: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !init.contains(i.name.as_str()))
            .collect();
        if inputs.len() != 1 {
            bail!(
                "model {source}: has {} inputs ({}); expected exactly one image input [N,1,H,W]",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if graph.output.len() != 1 {
            bail!(
                "model {source}: has {} outputs; expected exactly one probability map [N,C,H,W]",
                graph.output.len()
            );
        }
        let declared_input = declared_dims(inputs[0]);
        if !declared_input.is_empty() {
            if declared_input.len() != 4 {
                bail!(
                    "model {source}: input {:?} has rank {}; expected rank 4 [N,1,H,W]",
                    inputs[0].name,
                    declared_input.len()
                );
            }
            if let Some(c) = declared_input[1] {
                if c != 1 {
                    bail!(
                        "model {source}: input has {c} channels; expected 1 (greyscale) [N,1,H,W]"
                    );
                }
            }
        }
        let props: BTreeMap<String, String> = proto
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let meta = ModelMeta::from_props(props).with_context(|| format!("model {source}"))?;
        Ok(Model {
            source: source.to_string(),
            meta,
            proto: Arc::new(proto),
            declared_input,
        })
    }

    /// The decoded ONNX proto.
    pub fn proto(&self) -> &pb::ModelProto {
        &self.proto
    }

    /// The tile size to use when the user gives none: the fixed input size, else the trained one, else 128.
    pub fn default_tile(&self) -> usize {
        match (
            self.declared_input.get(2).copied().flatten(),
            self.meta.tile,
        ) {
            (Some(h), _) => h as usize,
            (None, Some(t)) => t,
            (None, None) => 128,
        }
    }

    /// Parameter count over float initializers.
    pub fn parameters(&self) -> usize {
        let g = self.proto.graph.as_ref().expect("checked at load");
        g.initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(1) as usize)
            .sum()
    }

    /// The typed model for `[batch,1,tile,tile]` input, decluttered (not yet optimized).
    pub fn typed(&self, batch: usize, tile: usize) -> Result<TypedModel> {
        self.typed_from(&self.proto, batch, tile)
    }

    /// The graph the runtime executes: the model's, with the decoder's upsample + concat +
    /// convolution folded (see [`unet_graph::upsample_fold`]).
    fn executed_graph(&self) -> Result<pb::ModelProto> {
        let (folded, _) = unet_graph::upsample_fold::fold(&self.proto)
            .with_context(|| format!("model {}: folding the decoder's upsampling", self.source))?;
        Ok(folded)
    }

    fn typed_from(&self, proto: &pb::ModelProto, batch: usize, tile: usize) -> Result<TypedModel> {
        if batch == 0 || tile == 0 {
            bail!("batch and tile must be at least 1 (got batch {batch}, tile {tile})");
        }
        for (axis, what) in [(2usize, "height"), (3, "width")] {
            if let Some(Some(d)) = self.declared_input.get(axis) {
                if *d as usize != tile {
                    bail!(
                        "model {} has a fixed input {what} of {d}; --tile {tile} needs a model with dynamic spatial size (use --tile {d})",
                        self.source
                    );
                }
            }
        }
        if let Some(Some(b)) = self.declared_input.first() {
            if *b as usize != batch {
                bail!(
                    "model {} has a fixed batch of {b}; use --batch {b}",
                    self.source
                );
            }
        }
        let model = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .with_context(|| format!("model {}: tract could not read the graph", self.source))?
            .with_input_fact(0, f32::fact([batch, 1, tile, tile]).into())?
            .into_typed()
            .with_context(|| {
                format!(
                    "model {}: shapes do not resolve for a {tile}x{tile} tile",
                    self.source
                )
            })?
            .into_decluttered()?;
        let out = model.output_fact(0)?;
        let c = self.meta.output_channels();
        let want: TVec<TDim> = [batch, c, tile, tile].iter().map(|&d| d.into()).collect();
        if out.shape.to_tvec() != want || out.datum_type != f32::datum_type() {
            bail!(
                "model {}: output for a {tile}x{tile} tile is {:?} {:?}; expected f32 [{batch},{c},{tile},{tile}] ({c} channel(s) of the input's size: {}{})",
                self.source,
                out.datum_type,
                out.shape,
                self.meta.channels.join(", "),
                if self.meta.star_rays > 0 {
                    format!(" and {} star rays", self.meta.star_rays)
                } else {
                    String::new()
                }
            );
        }
        Ok(model)
    }

    /// The optimized, runnable plan for `[batch,1,tile,tile]` input.
    pub fn plan(&self, batch: usize, tile: usize) -> Result<TilePlan> {
        let typed = self.typed_from(&self.executed_graph()?, batch, tile)?;
        let optimized = unet_graph::plan_passes::optimize(typed)
            .with_context(|| format!("optimizing model {}", self.source))?;
        let plan = optimized.into_runnable_with_options(&RunOptions::default())?;
        Ok(TilePlan {
            plan,
            batch,
            tile,
            channels: self.meta.output_channels(),
        })
    }

    /// Reference run on a whole frame at once (no tiling): mirrors `pad` pixels onto every side,
    /// rounds the padded size up to a multiple of `multiple`, runs, and crops back. Slow and
    /// allocating; for measuring what tiling changes, not for the frame loop.
    pub fn run_whole(
        &self,
        frame: &[f32],
        w: usize,
        h: usize,
        pad: usize,
        multiple: usize,
    ) -> Result<Vec<f32>> {
        use crate::engine::tiling::reflect;
        let m = multiple.max(1);
        let pw = (w + 2 * pad).div_ceil(m) * m;
        let ph = (h + 2 * pad).div_ceil(m) * m;
        let mut padded = vec![0.0f32; pw * ph];
        for y in 0..ph {
            for x in 0..pw {
                padded[y * pw + x] = frame[reflect(y as isize - pad as isize, h) * w
                    + reflect(x as isize - pad as isize, w)];
            }
        }
        let typed = tract_onnx::onnx()
            .model_for_proto_model(&self.executed_graph()?)?
            .with_input_fact(0, f32::fact([1, 1, ph, pw]).into())?
            .into_typed()?
            .into_decluttered()?;
        let plan = unet_graph::plan_passes::optimize(typed)?
            .into_runnable_with_options(&RunOptions::default())?;
        let input = Tensor::from_shape(&[1, 1, ph, pw], &padded)?;
        let out = plan.run(tvec!(input.into()))?.remove(0);
        let view = out.to_plain_array_view::<f32>()?;
        let o = view
            .as_slice()
            .ok_or_else(|| anyhow!("output is not contiguous"))?;
        let mut crop = Vec::with_capacity(w * h);
        for y in 0..h {
            crop.extend_from_slice(&o[(y + pad) * pw + pad..(y + pad) * pw + pad + w]);
        }
        Ok(crop)
    }

    /// Multiply-accumulates per tile, from tract's own cost model.
    pub fn macs_per_tile(&self, tile: usize) -> Result<u64> {
        let typed = self.typed(1, tile)?;
        let mut macs = 0u64;
        for node in typed.nodes() {
            let inputs = typed.node_input_facts(node.id)?;
            for (cost, n) in node.op.cost(&inputs)? {
                if let Cost::FMA(_) = cost {
                    macs += n.to_i64().unwrap_or(0) as u64;
                }
            }
        }
        Ok(macs)
    }
}

fn declared_dims(v: &pb::ValueInfoProto) -> Vec<Option<i64>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return vec![];
    };
    let Some(shape) = t.shape.as_ref() else {
        return vec![];
    };
    shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(n)) if n > 0 => Some(n),
            _ => None,
        })
        .collect()
}

/// An optimized plan for a fixed `[batch,1,tile,tile]` input; spawn one [`TileRunner`] per thread.
#[derive(Clone)]
pub struct TilePlan {
    plan: Arc<TypedSimplePlan>,
    /// Tiles per run.
    pub batch: usize,
    /// Tile side.
    pub tile: usize,
    /// Output channels.
    pub channels: usize,
}

impl TilePlan {
    /// A runner with its own tract state and input buffer.
    pub fn runner(&self) -> Result<TileRunner> {
        let state = self.plan.spawn()?;
        let input = Arc::new(Tensor::zero::<f32>(&[self.batch, 1, self.tile, self.tile])?);
        Ok(TileRunner {
            state,
            input,
            output: vec![0.0; self.batch * self.channels * self.tile * self.tile],
            arena: crate::engine::arena::installed().then(Arena::new),
            batch: self.batch,
            tile: self.tile,
            channels: self.channels,
        })
    }

    /// The optimized model behind the plan.
    pub fn model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// The plan's convolution and matmul kernels split by arithmetic: (integer, float) node names.
    /// A quantized model whose float list is not empty runs some convolution in f32.
    pub fn kernel_precision(&self) -> (Vec<String>, Vec<String>) {
        let (mut int, mut float) = (vec![], vec![]);
        for node in self.model().nodes() {
            let op = node.op.name();
            let is_kernel = (op.contains("MatMul") || op.contains("Conv")) && !op.ends_with("Pack");
            if !is_kernel {
                continue;
            }
            let dt = node.outputs[0].fact.datum_type;
            if dt.is_float() {
                float.push(node.name.clone());
            } else {
                int.push(node.name.clone());
            }
        }
        (int, float)
    }

    /// Optimized-plan operators counted by (operator, output datum type), most frequent first.
    pub fn op_census(&self) -> Vec<(String, String, usize)> {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for node in self.model().nodes() {
            let op = node.op.name().to_string();
            if op == "Source" || op == "Const" {
                continue;
            }
            let dt = node
                .outputs
                .first()
                .map(|o| format!("{:?}", o.fact.datum_type))
                .unwrap_or_default();
            *counts.entry((op, dt)).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().map(|((o, d), n)| (o, d, n)).collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        v
    }
}

/// Runs batches of tiles through one tract state, reusing its input tensor; tract's
/// allocations during a run come from the runner's [`Arena`] when the binary installs it.
pub struct TileRunner {
    state: TypedSimpleState,
    input: Arc<Tensor>,
    /// The last run's output, copied out of tract's tensor so that tensor is freed in the run.
    output: Vec<f32>,
    arena: Option<Arena>,
    /// Tiles per run.
    pub batch: usize,
    /// Tile side.
    pub tile: usize,
    /// Output channels.
    pub channels: usize,
}

impl TileRunner {
    /// The `[batch,1,tile,tile]` input buffer to fill before [`TileRunner::run`].
    pub fn input_mut(&mut self) -> &mut [f32] {
        let t = Arc::get_mut(&mut self.input).expect("tract released the input after the run");
        t.to_plain_array_view_mut::<f32>()
            .ok()
            .and_then(|v| v.into_slice())
            .expect("input is a contiguous f32 tensor")
    }

    /// Runs the model `runs` times on the input buffer, timing every node of the plan; returns
    /// one entry per node that ran, in plan order, with its mean time per run.
    pub fn profile(&mut self, runs: usize) -> Result<Vec<NodeTime>> {
        use std::time::{Duration, Instant};
        let mut spent: BTreeMap<usize, Duration> = BTreeMap::new();
        for _ in 0..runs.max(1) {
            let input = TValue::from_const(self.input.clone());
            self.state
                .run_plan_with_eval(tvec!(input), |ctx, state, node, inputs| {
                    let t = Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                    *spent.entry(node.id).or_default() += t.elapsed();
                    r
                })?;
        }
        let model = self.state.model();
        Ok(spent
            .into_iter()
            .map(|(id, d)| {
                let node = model.node(id);
                NodeTime {
                    name: node.name.clone(),
                    op: node.op.name().to_string(),
                    info: node.op.info().map(|i| i.join("; ")).unwrap_or_default(),
                    datum_type: node
                        .outputs
                        .first()
                        .map(|o| format!("{:?}", o.fact.datum_type))
                        .unwrap_or_default(),
                    ms: d.as_secs_f64() * 1e3 / runs.max(1) as f64,
                }
            })
            .collect())
    }

    /// Runs the model on the input buffer; the output is `[batch,channels,tile,tile]`.
    pub fn run(&mut self) -> Result<&[f32]> {
        let (state, input, output) = (&mut self.state, &self.input, &mut self.output);
        let mut run = || -> Result<()> {
            let outputs = state.run(tvec!(TValue::from_const(input.clone())))?;
            let out = outputs
                .first()
                .ok_or_else(|| anyhow!("model produced no output"))?;
            let out = out
                .to_plain_array_view::<f32>()?
                .to_slice()
                .ok_or_else(|| anyhow!("model output is not a contiguous f32 tensor"))?;
            if out.len() != output.len() {
                bail!(
                    "model output holds {} values, expected {}",
                    out.len(),
                    output.len()
                );
            }
            output.copy_from_slice(out);
            Ok(())
        };
        match &mut self.arena {
            Some(arena) => arena.run(run)?,
            None => run()?,
        }
        Ok(&self.output)
    }

    /// Runs without an arena from now on (tract allocates from the system), for comparison.
    pub fn disable_arena(&mut self) {
        self.arena = None;
    }

    /// Sizes of the runner's arena after its last run; `None` when it runs without one.
    pub fn arena_stats(&self) -> Option<ArenaStats> {
        self.arena.as_ref().map(Arena::stats)
    }
}

/// Time one plan node took, averaged over the profiled runs.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// Node name in the optimized plan.
    pub name: String,
    /// Operator name.
    pub op: String,
    /// The operator's own description (e.g. a convolution's shape and kernel path).
    pub info: String,
    /// Output datum type.
    pub datum_type: String,
    /// Mean milliseconds per run.
    pub ms: f64,
}
