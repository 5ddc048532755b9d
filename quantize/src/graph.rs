//! The float U-Net as the quantizer sees it: a chain of the contract's operators, with the
//! convolution weights read out and every value's producer and consumers known.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use tract_onnx::pb;
use unet_edge::engine::model::Model;
use unet_edge::onnx_writer::tensor_f32;

/// Operators a unet-edge U-Net is made of; the quantizer knows how to carry each into int8.
pub const SUPPORTED_OPS: [&str; 6] = ["Conv", "Relu", "MaxPool", "Resize", "Concat", "Sigmoid"];

/// A convolution's parameters, read from the initializers.
#[derive(Clone, Debug)]
pub struct ConvWeights {
    /// Layer name shown to users and accepted by `--keep-f32` (e.g. `enc0.conv1`, `head`).
    pub layer: String,
    /// OIHW dims.
    pub dims: Vec<usize>,
    /// OIHW weights.
    pub weight: Vec<f32>,
    /// One bias per output channel (zeros when the node has none).
    pub bias: Vec<f32>,
}

/// One node of the float graph.
#[derive(Clone, Debug)]
pub struct FloatNode {
    /// The ONNX node (attributes are carried over verbatim).
    pub proto: pb::NodeProto,
    /// Data inputs (initializers and empty optional inputs removed).
    pub inputs: Vec<String>,
    /// Its single output.
    pub output: String,
    /// Weights, for a Conv.
    pub conv: Option<ConvWeights>,
}

impl FloatNode {
    /// The ONNX operator type.
    pub fn op(&self) -> &str {
        &self.proto.op_type
    }
}

/// A float U-Net of the contract, checked and ready to calibrate and rewrite.
pub struct FloatGraph {
    /// The loaded model (contract metadata, source name).
    pub model: Model,
    /// The image input's name.
    pub input: String,
    /// The probability output's name.
    pub output: String,
    /// Nodes in topological order.
    pub nodes: Vec<FloatNode>,
    /// Initializers by name (Resize scales and the like are copied from here).
    pub initializers: HashMap<String, pb::TensorProto>,
}

impl FloatGraph {
    /// Reads and checks a float U-Net; errors name what is not of the contract.
    pub fn new(model: Model) -> Result<FloatGraph> {
        let source = model.source.clone();
        let graph = model
            .proto()
            .graph
            .clone()
            .ok_or_else(|| anyhow!("model {source}: ONNX file has no graph"))?;
        let initializers: HashMap<String, pb::TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let input = graph
            .input
            .iter()
            .find(|i| !initializers.contains_key(&i.name))
            .map(|i| i.name.clone())
            .ok_or_else(|| anyhow!("model {source}: no image input"))?;
        let output = graph
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| anyhow!("model {source}: no output"))?;
        let mut nodes = Vec::with_capacity(graph.node.len());
        let mut produced: HashMap<String, usize> = HashMap::new();
        let mut conv_index = 0usize;
        let conv_count = graph.node.iter().filter(|n| n.op_type == "Conv").count();
        for n in &graph.node {
            if !SUPPORTED_OPS.contains(&n.op_type.as_str()) || !n.domain.is_empty() {
                bail!(
                    "model {source}: node {:?} is a {}{} operator; the quantizer handles U-Nets of the unet-edge contract, made of {}",
                    n.name,
                    if n.domain.is_empty() { "" } else { "custom " },
                    n.op_type,
                    SUPPORTED_OPS.join(", ")
                );
            }
            if n.output.len() != 1 {
                bail!(
                    "model {source}: node {:?} ({}) has {} outputs; expected 1",
                    n.name,
                    n.op_type,
                    n.output.len()
                );
            }
            let inputs: Vec<String> = n
                .input
                .iter()
                .filter(|i| !i.is_empty() && !initializers.contains_key(*i))
                .cloned()
                .collect();
            for i in &inputs {
                if *i != input && !produced.contains_key(i) {
                    bail!(
                        "model {source}: node {:?} reads {i:?}, which no earlier node produces (graph not in topological order?)",
                        n.name
                    );
                }
            }
            let conv = if n.op_type == "Conv" {
                let c = read_conv(n, &initializers, conv_index)
                    .with_context(|| format!("model {source}: Conv node {:?}", n.name))?;
                conv_index += 1;
                Some(c)
            } else {
                None
            };
            let arity_ok = if n.op_type == "Concat" {
                inputs.len() >= 2
            } else {
                inputs.len() == 1
            };
            if !arity_ok {
                bail!(
                    "model {source}: node {:?} ({}) has {} data inputs",
                    n.name,
                    n.op_type,
                    inputs.len()
                );
            }
            produced.insert(n.output[0].clone(), nodes.len());
            nodes.push(FloatNode {
                proto: n.clone(),
                inputs,
                output: n.output[0].clone(),
                conv,
            });
        }
        if conv_count == 0 {
            bail!("model {source}: has no convolution; not a U-Net");
        }
        if !produced.contains_key(&output) {
            bail!("model {source}: output {output:?} is produced by no node");
        }
        Ok(FloatGraph {
            model,
            input,
            output,
            nodes,
            initializers,
        })
    }

    /// Nodes reading `value`.
    pub fn consumers(&self, value: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].inputs.iter().any(|v| v == value))
            .collect()
    }

    /// Layer names of the convolutions, in graph order.
    pub fn conv_layers(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter_map(|n| n.conv.as_ref().map(|c| c.layer.as_str()))
            .collect()
    }

    /// Values whose activation ranges the rewrite may need: the input and every node output.
    pub fn values(&self) -> Vec<String> {
        std::iter::once(self.input.clone())
            .chain(self.nodes.iter().map(|n| n.output.clone()))
            .collect()
    }
}

fn read_conv(
    n: &pb::NodeProto,
    inits: &HashMap<String, pb::TensorProto>,
    index: usize,
) -> Result<ConvWeights> {
    let w_name = n
        .input
        .get(1)
        .ok_or_else(|| anyhow!("has no weight input"))?;
    let w = inits.get(w_name).ok_or_else(|| {
        anyhow!("weight {w_name:?} is not an initializer (constant weights are required)")
    })?;
    let (dims, weight) = tensor_f32(w)?;
    if dims.len() != 4 {
        bail!("weight {w_name:?} has dims {dims:?}; expected OIHW (4-D)");
    }
    for a in &n.attribute {
        let bad = match a.name.as_str() {
            "group" => a.i != 1,
            "dilations" => a.ints.iter().any(|&d| d != 1),
            "auto_pad" => !a.s.is_empty() && a.s != b"NOTSET",
            _ => false,
        };
        if bad {
            bail!(
                "attribute {} is not supported (only group 1, dilation 1, explicit pads)",
                a.name
            );
        }
    }
    let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
        Some(b_name) => {
            let b = inits
                .get(b_name)
                .ok_or_else(|| anyhow!("bias {b_name:?} is not an initializer"))?;
            let (bd, bias) = tensor_f32(b)?;
            if bd != [dims[0]] {
                bail!("bias {b_name:?} has dims {bd:?}; expected [{}]", dims[0]);
            }
            bias
        }
        None => vec![0.0; dims[0]],
    };
    Ok(ConvWeights {
        layer: layer_name(w_name, &n.name, index),
        dims,
        weight,
        bias,
    })
}

/// `enc0.conv1.weight_3` → `enc0.conv1`; models from other writers fall back to the node name,
/// then to `convK`.
fn layer_name(weight: &str, node: &str, index: usize) -> String {
    let stem = weight.trim_end_matches(|c: char| c.is_ascii_digit());
    let stem = stem.strip_suffix('_').unwrap_or(stem);
    if let Some(layer) = stem.strip_suffix(".weight") {
        if !layer.is_empty() {
            return layer.to_string();
        }
    }
    if !node.is_empty() {
        return node.to_string();
    }
    format!("conv{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_come_from_the_weight_stem() {
        assert_eq!(layer_name("enc0.conv1.weight_3", "conv_4", 0), "enc0.conv1");
        assert_eq!(layer_name("head.weight_57", "", 18), "head");
        assert_eq!(layer_name("W", "Conv_0", 0), "Conv_0");
        assert_eq!(layer_name("W", "", 2), "conv2");
    }
}
