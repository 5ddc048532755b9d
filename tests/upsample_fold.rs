//! The decoder's upsample fold (`unet_graph::upsample_fold`) on U-Net graphs the runtime builds:
//! random-weight networks and the shipped model, against tract running the original graph.

use tract_onnx::pb;
use tract_onnx::prelude::*;
use unet_edge::contract::ModelMeta;
use unet_edge::unet::UNetSpec;
use unet_graph::testing::max_abs_diff;
use unet_graph::upsample_fold::fold;

fn run(model: &pb::ModelProto, input: &Tensor) -> Tensor {
    let plan = tract_onnx::onnx()
        .model_for_proto_model(model)
        .unwrap()
        .with_input_fact(0, f32::fact(input.shape()).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    plan.run(tvec!(input.clone().into()))
        .unwrap()
        .remove(0)
        .into_tensor()
}

#[test]
fn phase_kernels_reproduce_a_conv_over_the_upsampled_map() {
    for seed in [1, 2] {
        let spec = UNetSpec {
            base: 4,
            depth: 2,
            ..UNetSpec::default()
        };
        let model = spec
            .random_weights(seed)
            .to_onnx(&ModelMeta::default())
            .unwrap();
        let (folded, n) = fold(&model).unwrap();
        assert_eq!(n, 2, "both decoder levels fold");
        let ops: Vec<&str> = folded
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_str())
            .collect();
        assert!(!ops.contains(&"Resize"), "{ops:?}");
        assert_eq!(ops.iter().filter(|o| **o == "DepthToSpace").count(), 2);
        let mut rng = unet_edge::rng::Rng::new(seed);
        let data: Vec<f32> = (0..2 * 40 * 36).map(|_| rng.uniform()).collect();
        let input = Tensor::from_shape(&[2, 1, 40, 36], &data).unwrap();
        let a = run(&model, &input);
        let b = run(&folded, &input);
        let (a, b) = (
            a.to_plain_array_view::<f32>().unwrap().to_owned(),
            b.to_plain_array_view::<f32>().unwrap().to_owned(),
        );
        let worst = max_abs_diff(&a, &b);
        assert!(worst < 1e-5, "folded graph differs by {worst}");
        let spread = a.iter().fold(0.0f32, |m, &v| m.max((v - 0.5).abs()));
        assert!(spread > 1e-3, "degenerate test: flat output");
    }
}

#[test]
fn the_shipped_model_runs_folded_within_1e4_of_the_original_graph() {
    let Some(bytes) = unet_edge::engine::model::embedded_model() else {
        return;
    };
    let model = unet_edge::engine::model::Model::from_bytes(bytes, "embedded").unwrap();
    let (_, n) = fold(model.proto()).unwrap();
    assert_eq!(n, 4, "the four decoder levels fold");
    let s = unet_edge::synth::generate(
        &mut unet_edge::rng::Rng::new(5),
        128,
        128,
        &unet_edge::synth::SynthConfig::default(),
    );
    let mut x = vec![0.0; 128 * 128];
    model
        .meta
        .normalization
        .apply(&s.image, &mut x, &mut Vec::new());
    let input = Tensor::from_shape(&[1, 1, 128, 128], &x).unwrap();
    let original = run(model.proto(), &input);
    let mut runner = model.plan(1, 128).unwrap().runner().unwrap();
    runner.input_mut().copy_from_slice(&x);
    let folded = runner.run().unwrap();
    let original = original.to_plain_array_view::<f32>().unwrap().to_owned();
    let worst = max_abs_diff(&original, folded);
    assert!(worst <= 1e-4, "folded plan differs by {worst}");
    assert!(original.iter().any(|&p| p > 0.5) && original.iter().any(|&p| p < 0.5));
}
