//! The seed U-Net as a burn module, in the layer order of `unet_edge::unet::UNetSpec`.

use anyhow::Result;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::Distribution;
use unet_edge::unet::{ConvLayer, UNetSpec, UNetWeights};

/// U-Net whose forward pass returns logits `[N,C,H,W]`; the exported graph adds the sigmoid.
#[derive(Module, Debug)]
pub struct UNet {
    convs: Vec<Conv2d>,
    /// Batch normalization after every convolution but the head's, or none; the export folds
    /// each into its convolution, so the runtime's graph is the same either way.
    norms: Vec<BatchNorm>,
    base: usize,
    depth: usize,
    outputs: usize,
}

impl UNet {
    /// A freshly initialised network of the given shape.
    pub fn new(spec: UNetSpec, device: &Device) -> UNet {
        let convs = spec
            .layer_shapes()
            .into_iter()
            .map(|(_, o, i, k)| {
                Conv2dConfig::new([i, o], [k, k])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device)
            })
            .collect();
        UNet {
            convs,
            norms: Vec::new(),
            base: spec.base,
            depth: spec.depth,
            outputs: spec.outputs,
        }
    }

    /// This network with batch normalization (running statistics at their identity start)
    /// between every convolution but the head and its ReLU.
    pub fn with_batch_norm(mut self, device: &Device) -> UNet {
        let last = self.convs.len() - 1;
        self.norms = self.convs[..last]
            .iter()
            .map(|c| BatchNormConfig::new(c.weight.dims()[0]).init(device))
            .collect();
        self
    }

    /// Whether the network normalizes its activations by batch statistics while training.
    pub fn has_batch_norm(&self) -> bool {
        !self.norms.is_empty()
    }

    /// The network holding `w` (e.g. read from a shipped ONNX model by
    /// [`UNetWeights::from_onnx`]), so a run can fine-tune it.
    pub fn from_weights(w: &UNetWeights, device: &Device) -> Result<UNet> {
        w.validate()?;
        let mut net = UNet::new(w.spec, device);
        for (conv, l) in net.convs.iter_mut().zip(&w.layers) {
            let shape = [l.out_ch, l.in_ch, l.kernel, l.kernel];
            conv.weight = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(l.weight.clone(), shape),
                device,
            ));
            conv.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(l.bias.clone(), [l.out_ch]),
                device,
            )));
        }
        Ok(net)
    }

    /// This network with its 1x1 head grown to `outputs` channels: the existing channels keep
    /// their weights, new ones start from a fresh initialisation. Fine-tuning a trained
    /// foreground net for the core channel starts from everything it already knows.
    pub fn with_outputs(mut self, outputs: usize, device: &Device) -> Result<UNet> {
        if outputs < self.outputs {
            anyhow::bail!(
                "cannot shrink the head from {} to {outputs} outputs",
                self.outputs
            );
        }
        if outputs == self.outputs {
            return Ok(self);
        }
        let old = self.convs.pop().expect("head");
        let fresh = Conv2dConfig::new([self.base, outputs], [1, 1])
            .with_padding(PaddingConfig2d::Same)
            .init(device);
        let keep = self.outputs;
        let weight = Tensor::cat(
            vec![
                old.weight.val(),
                fresh.weight.val().narrow(0, keep, outputs - keep),
            ],
            0,
        )
        // A leaf again, so the optimiser can track it.
        .detach();
        let bias = match (&old.bias, &fresh.bias) {
            (Some(o), Some(f)) => Some(burn::module::Param::from_tensor(
                Tensor::cat(vec![o.val(), f.val().narrow(0, keep, outputs - keep)], 0).detach(),
            )),
            _ => None,
        };
        let mut head = fresh;
        head.weight = burn::module::Param::from_tensor(weight);
        head.bias = bias;
        self.convs.push(head);
        self.outputs = outputs;
        Ok(self)
    }

    /// This network with the biases of head channels `from..` set to `value`: new star-ray
    /// channels start at a typical distance instead of half the longest ray, which Adam's
    /// bounded steps would take thousands of steps to walk down.
    pub fn with_head_bias(mut self, from: usize, value: f32) -> UNet {
        let head = self.convs.last_mut().expect("head");
        if let Some(b) = &head.bias {
            let v = b.val();
            let n = v.dims()[0];
            if from < n {
                let device = v.device();
                let fill = Tensor::<1>::full([n - from], value, &device);
                let joined = Tensor::cat(vec![v.narrow(0, 0, from), fill], 0).detach();
                head.bias = Some(burn::module::Param::from_tensor(joined));
            }
        }
        self
    }

    /// The architecture.
    pub fn spec(&self) -> UNetSpec {
        UNetSpec {
            base: self.base,
            depth: self.depth,
            outputs: self.outputs,
        }
    }

    /// Logits for a normalized `[N,1,H,W]` batch (H, W multiples of 2^depth).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_dropout(x, 0.0)
    }

    /// [`UNet::forward`] with dropout between the two convolutions of every level, for training:
    /// the Keras DSB2018 tutorial's rates (0.1 on the upper half of the levels, 0.2 on the lower,
    /// 0.3 at the bottleneck, the decoder as its encoder level) times `scale`; 0 is no dropout.
    pub fn forward_dropout(&self, x: Tensor<4>, scale: f32) -> Tensor<4> {
        let depth = self.depth;
        let rate = |level: usize| -> f32 {
            scale
                * if level == depth {
                    0.3
                } else if 2 * level < depth {
                    0.1
                } else {
                    0.2
                }
        };
        let drop = |x: Tensor<4>, p: f32| -> Tensor<4> {
            if p <= 0.0 {
                return x;
            }
            let keep = 1.0 - f64::from(p.min(0.9));
            let mask = x.random_like(Distribution::Bernoulli(keep));
            x * mask * (1.0 / keep)
        };
        let mut convs = self.convs.iter();
        let mut norms = self.norms.iter();
        let mut cr = |x: Tensor<4>| {
            let y = convs.next().expect("layer").forward(x);
            relu(match norms.next() {
                Some(n) => n.forward(y),
                None => y,
            })
        };
        let mut x = x;
        let mut skips = Vec::with_capacity(depth);
        for level in 0..depth {
            x = cr(x);
            x = drop(x, rate(level));
            x = cr(x);
            skips.push(x.clone());
            x = max_pool2d(x, MaxPoolOptions::new([2, 2]));
        }
        x = cr(x);
        x = drop(x, rate(depth));
        x = cr(x);
        for (level, skip) in skips.into_iter().enumerate().rev() {
            let up = interpolate(
                x,
                InterpolateOptions::new(InterpolateMode::Nearest).with_scale_factor([2.0, 2.0]),
            );
            x = Tensor::cat(vec![up, skip], 1);
            x = cr(x);
            x = drop(x, rate(level));
            x = cr(x);
        }
        self.convs.last().expect("head").forward(x)
    }

    /// The weights as plain data for the runtime's ONNX writer, batch normalization folded in
    /// with its running statistics (what inference uses).
    pub fn to_weights(&self) -> Result<UNetWeights> {
        let spec = self.spec();
        let layers = spec
            .layer_shapes()
            .into_iter()
            .zip(&self.convs)
            .enumerate()
            .map(
                |(l, ((name, out_ch, in_ch, kernel), c))| -> Result<ConvLayer> {
                    let mut weight = values(c.weight.val())?;
                    let mut bias = match &c.bias {
                        Some(b) => values(b.val())?,
                        None => vec![0.0; out_ch],
                    };
                    if let Some(n) = self.norms.get(l) {
                        let (gamma, beta) = (values(n.gamma.val())?, values(n.beta.val())?);
                        let mean = values(n.running_mean.value())?;
                        let var = values(n.running_var.value())?;
                        let per_out = weight.len() / out_ch;
                        for o in 0..out_ch {
                            let s = gamma[o] / (var[o] + n.epsilon as f32).sqrt();
                            weight[o * per_out..(o + 1) * per_out]
                                .iter_mut()
                                .for_each(|w| *w *= s);
                            bias[o] = (bias[o] - mean[o]) * s + beta[o];
                        }
                    }
                    Ok(ConvLayer {
                        name,
                        out_ch,
                        in_ch,
                        kernel,
                        weight,
                        bias,
                    })
                },
            )
            .collect::<Result<Vec<_>>>()?;
        let w = UNetWeights { spec, layers };
        w.validate()?;
        Ok(w)
    }
}

/// A tensor's values, for the export.
fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}
