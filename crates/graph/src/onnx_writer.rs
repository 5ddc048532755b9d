//! A small ONNX graph writer on tract-onnx's protobuf types.
//!
//! The trainer exports through it, the quantizer rewrites models through it and tests build their
//! models with it, so the project has one way to produce ONNX and no second protobuf schema.

use anyhow::{bail, Context, Result};
use prost::Message;
use tract_onnx::pb;

/// ONNX opset the writer targets (Resize-13 semantics, QuantizeLinear per-axis).
pub const OPSET: i64 = 13;
/// ONNX IR version matching [`OPSET`].
const IR_VERSION: i64 = 7;

/// Element types the writer can declare for graph inputs, outputs and initializers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl ElemType {
    fn code(self) -> i32 {
        use pb::tensor_proto::DataType;
        (match self {
            ElemType::F32 => DataType::Float,
            ElemType::I8 => DataType::Int8,
            ElemType::U8 => DataType::Uint8,
            ElemType::I32 => DataType::Int32,
            ElemType::I64 => DataType::Int64,
        }) as i32
    }
}

/// A dimension of a declared graph input or output: fixed or symbolic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named symbolic size (e.g. "N", "H").
    Symbol(String),
}

/// An attribute value for a node.
#[derive(Clone, Debug)]
pub enum Attr {
    /// One integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// One float.
    Float(f32),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A string.
    Str(String),
}

/// Builds one ONNX graph node by node; names are generated and returned so callers chain them.
#[derive(Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    counter: usize,
    metadata: Vec<(String, String)>,
}

/// Parameters of a 2-D convolution node.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    /// Kernel height and width.
    pub kernel: usize,
    /// Symmetric zero padding on each side.
    pub pad: usize,
    /// Stride in both axes.
    pub stride: usize,
}

impl ConvSpec {
    /// A stride-1 convolution whose output has the input's spatial size.
    pub fn same(kernel: usize) -> ConvSpec {
        ConvSpec {
            kernel,
            pad: kernel / 2,
            stride: 1,
        }
    }
}

impl GraphBuilder {
    /// An empty graph with the given name.
    pub fn new(name: &str) -> GraphBuilder {
        let mut b = GraphBuilder::default();
        b.graph.name = name.to_string();
        b
    }

    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    /// Declares a graph input and returns its name.
    pub fn input(&mut self, name: &str, elem: ElemType, shape: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, shape));
        name.to_string()
    }

    /// Declares `value` as a graph output.
    pub fn output(&mut self, value: &str, elem: ElemType, shape: &[Dim]) {
        self.graph.output.push(value_info(value, elem, shape));
    }

    /// Adds an f32 initializer of the given shape; `data.len()` must match the shape.
    pub fn init_f32(&mut self, stem: &str, shape: &[usize], data: &[f32]) -> Result<String> {
        check_len(stem, shape, data.len())?;
        let name = self.fresh(stem);
        let mut t = tensor_header(&name, shape, ElemType::F32);
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(t);
        Ok(name)
    }

    /// Adds an i8 initializer.
    pub fn init_i8(&mut self, stem: &str, shape: &[usize], data: &[i8]) -> Result<String> {
        check_len(stem, shape, data.len())?;
        let name = self.fresh(stem);
        let mut t = tensor_header(&name, shape, ElemType::I8);
        t.raw_data = data.iter().map(|v| *v as u8).collect();
        self.graph.initializer.push(t);
        Ok(name)
    }

    /// Adds a u8 initializer.
    pub fn init_u8(&mut self, stem: &str, shape: &[usize], data: &[u8]) -> Result<String> {
        check_len(stem, shape, data.len())?;
        let name = self.fresh(stem);
        let mut t = tensor_header(&name, shape, ElemType::U8);
        t.raw_data = data.to_vec();
        self.graph.initializer.push(t);
        Ok(name)
    }

    /// Adds an i32 initializer.
    pub fn init_i32(&mut self, stem: &str, shape: &[usize], data: &[i32]) -> Result<String> {
        check_len(stem, shape, data.len())?;
        let name = self.fresh(stem);
        let mut t = tensor_header(&name, shape, ElemType::I32);
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(t);
        Ok(name)
    }

    /// Adds an i64 initializer.
    pub fn init_i64(&mut self, stem: &str, shape: &[usize], data: &[i64]) -> Result<String> {
        check_len(stem, shape, data.len())?;
        let name = self.fresh(stem);
        let mut t = tensor_header(&name, shape, ElemType::I64);
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(t);
        Ok(name)
    }

    /// Adds a generic node with one output and returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_string(),
            attribute: attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
            ..Default::default()
        });
        out
    }

    /// Adds a node of `template`'s type and attributes on new inputs (e.g. a MaxPool copied from
    /// another graph); returns its output's name.
    pub fn node_like(&mut self, template: &pb::NodeProto, inputs: &[&str]) -> String {
        let out = self.fresh(&template.op_type.to_lowercase());
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: template.op_type.clone(),
            domain: template.domain.clone(),
            attribute: template.attribute.clone(),
            ..Default::default()
        });
        out
    }

    /// Copies an initializer from another graph under a fresh name derived from its own.
    pub fn init_copy(&mut self, t: &pb::TensorProto) -> String {
        let name = self.fresh(&t.name);
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            ..t.clone()
        });
        name
    }

    /// Conv with OIHW weights and an optional bias (both already initializers).
    pub fn conv(&mut self, x: &str, w: &str, b: Option<&str>, spec: ConvSpec) -> String {
        let k = spec.kernel as i64;
        let p = spec.pad as i64;
        let s = spec.stride as i64;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.node(
            "Conv",
            &inputs,
            &[
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("strides", Attr::Ints(vec![s, s])),
            ],
        )
    }

    /// ConvTranspose with IOHW weights, stride = kernel (the classic U-Net up-convolution).
    pub fn conv_transpose(&mut self, x: &str, w: &str, b: Option<&str>, kernel: usize) -> String {
        let k = kernel as i64;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.node(
            "ConvTranspose",
            &inputs,
            &[
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![k, k])),
            ],
        )
    }

    /// Relu.
    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], &[])
    }

    /// Sigmoid.
    pub fn sigmoid(&mut self, x: &str) -> String {
        self.node("Sigmoid", &[x], &[])
    }

    /// 2x2 max pooling with stride 2.
    pub fn maxpool2(&mut self, x: &str) -> String {
        self.node(
            "MaxPool",
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        )
    }

    /// Nearest-neighbour x2 upsampling of an NCHW tensor (Resize-13 with scales).
    pub fn upsample2_nearest(&mut self, x: &str) -> Result<String> {
        let scales = self.init_f32("up_scales", &[4], &[1.0, 1.0, 2.0, 2.0])?;
        Ok(self.node(
            "Resize",
            &[x, "", &scales],
            &[
                ("mode", Attr::Str("nearest".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        ))
    }

    /// Concatenation along the channel axis.
    pub fn concat_channels(&mut self, xs: &[&str]) -> String {
        self.node("Concat", xs, &[("axis", Attr::Int(1))])
    }

    /// Element-wise addition.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], &[])
    }

    /// Records a `metadata_props` entry of the model.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value.to_string()));
    }

    /// Finishes the model proto.
    pub fn finish(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "unet-edge".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| pb::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

/// Renames value `from` to `to` wherever the graph uses it (node inputs and outputs, graph
/// outputs), e.g. to give a built graph's output a stable name tools can rely on.
pub fn rename_value(model: &mut pb::ModelProto, from: &str, to: &str) {
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    for n in &mut graph.node {
        for s in n.input.iter_mut().chain(n.output.iter_mut()) {
            if s == from {
                *s = to.to_string();
            }
        }
    }
    for v in &mut graph.output {
        if v.name == from {
            v.name = to.to_string();
        }
    }
}

/// Encodes a model proto to bytes.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Decodes ONNX bytes into a model proto.
pub fn decode(bytes: &[u8]) -> Result<pb::ModelProto> {
    pb::ModelProto::decode(bytes).context("not an ONNX model (protobuf decoding failed)")
}

/// Reads a float32 initializer: its dims and values (raw little-endian or `float_data`).
pub fn tensor_f32(t: &pb::TensorProto) -> Result<(Vec<usize>, Vec<f32>)> {
    if t.data_type != ElemType::F32.code() {
        bail!(
            "initializer {:?} has ONNX data type {}; expected float32 (1)",
            t.name,
            t.data_type
        );
    }
    if t.dims.iter().any(|&d| d < 0) {
        bail!(
            "initializer {:?} has a negative dimension {:?}",
            t.name,
            t.dims
        );
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n: usize = dims.iter().product();
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if data.len() != n {
        bail!(
            "initializer {:?}: dims {:?} need {n} values but it holds {} (external data is not supported)",
            t.name,
            dims,
            data.len()
        );
    }
    Ok((dims, data))
}

fn check_len(stem: &str, shape: &[usize], len: usize) -> Result<()> {
    let want: usize = shape.iter().product();
    if want != len {
        bail!("initializer {stem}: shape {shape:?} holds {want} values but {len} were given");
    }
    Ok(())
}

fn tensor_header(name: &str, shape: &[usize], elem: ElemType) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: elem.code(),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: ElemType, shape: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dims = shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Symbol(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem.code(),
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, v: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut a = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match v {
        Attr::Int(i) => {
            a.r#type = T::Int as i32;
            a.i = *i;
        }
        Attr::Ints(is) => {
            a.r#type = T::Ints as i32;
            a.ints = is.clone();
        }
        Attr::Float(f) => {
            a.r#type = T::Float as i32;
            a.f = *f;
        }
        Attr::Floats(fs) => {
            a.r#type = T::Floats as i32;
            a.floats = fs.clone();
        }
        Attr::Str(s) => {
            a.r#type = T::String as i32;
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    fn run(model: &pb::ModelProto, input: Tensor) -> Tensor {
        let m = tract_onnx::onnx()
            .model_for_proto_model(model)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable_with_options(&Default::default())
            .unwrap();
        m.run(tvec!(input.into())).unwrap().remove(0).into_tensor()
    }

    #[test]
    fn conv_transpose_stride2_matches_hand_computation() {
        // 1 input channel, 1 output channel, 2x2 kernel of [1,2,3,4], stride 2: each input pixel
        // paints a 2x2 block scaled by the kernel.
        let mut g = GraphBuilder::new("ct");
        let x = g.input(
            "x",
            ElemType::F32,
            &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(2)],
        );
        let w = g
            .init_f32("w", &[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])
            .unwrap();
        let b = g.init_f32("b", &[1], &[0.5]).unwrap();
        let y = g.conv_transpose(&x, &w, Some(&b), 2);
        g.output(
            &y,
            ElemType::F32,
            &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(4)],
        );
        let model = decode(&encode(&g.finish())).unwrap();
        let out = run(
            &model,
            tract_ndarray::arr1(&[1.0f32, 10.0])
                .into_shape_with_order((1, 1, 1, 2))
                .unwrap()
                .into_tensor(),
        );
        let got: Vec<f32> = out
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(got, vec![1.5, 2.5, 10.5, 20.5, 3.5, 4.5, 30.5, 40.5]);
    }

    #[test]
    fn metadata_round_trips() {
        let mut g = GraphBuilder::new("m");
        g.metadata("a", "1");
        g.metadata("a", "2");
        let m = decode(&encode(&g.finish())).unwrap();
        assert_eq!(m.metadata_props.len(), 1);
        assert_eq!(m.metadata_props[0].value, "2");
        assert_eq!(m.opset_import[0].version, OPSET);
    }

    #[test]
    fn wrong_initializer_length_is_an_error() {
        let mut g = GraphBuilder::new("bad");
        let e = g.init_f32("w", &[2, 3], &[0.0; 5]).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains('5'), "{e}");
    }
}
