//! Support-only BatchNorm at meta-test (`Module::forward_query_with_support_stats`) against
//! PyTorch (tests/fixtures/nn14/gen_support_bn.py): each task's query normalised at every
//! BatchNorm with the support set's mean and biased variance at that layer equals
//! `F.batch_norm(query, mean_s, var_s, training=False)` layer by layer, for Conv-4 and ResNet-12,
//! task-batched and single-task, f64 at 1e-10.

mod nn_support;

use metaloop_runtime::nn::{conv4_sized, Module, ResNet12};
use nn_support::{assert_close, io, load, TOL};
use tch::Tensor;

fn check(model: &dyn Module, case: &str) {
    let io = io(case);
    let (params, _) = load(model, case);
    let (support, query) = (&io["support"], &io["query"]);
    let tasks = support.size()[0];
    let batched = params.expand_tasks(tasks).unwrap();
    let out = model
        .forward_query_with_support_stats(&batched, support, query)
        .unwrap();
    assert_close(&format!("{case} query"), &out, &io["query_output"], TOL);
    // One task at a time, without the task dimension.
    for t in 0..tasks {
        let out = model
            .forward_query_with_support_stats(&params, &support.get(t), &query.get(t))
            .unwrap();
        let want = io["query_output"].get(t);
        assert_close(&format!("{case} task {t} query"), &out, &want, TOL);
    }
    // The support alone with its own statistics: the fixture's recording pass.
    let own = model.forward(&batched, support, true).unwrap();
    assert_close(&format!("{case} support"), &own, &io["support_output"], TOL);
    // Transductive BatchNorm (the query's own statistics) gives other logits: the mode matters.
    let transductive = model.forward(&batched, query, false).unwrap();
    let gap = (&transductive - &io["query_output"]).abs().max();
    assert!(gap.double_value(&[]) > 1e-3, "{case}: modes agree");
}

#[test]
fn conv4_query_with_support_statistics_matches_pytorch() {
    check(&conv4_sized(3, 5, 4, 16), "support_bn_conv4");
}

#[test]
fn resnet12_query_with_support_statistics_matches_pytorch() {
    check(&ResNet12::new([4, 6, 8, 10], 5, 3), "support_bn_resnet12");
}

#[test]
fn a_support_set_without_a_batch_dimension_is_an_error() {
    let model = conv4_sized(3, 5, 4, 16);
    let (params, _) = load(&model, "support_bn_conv4");
    let empty = Tensor::zeros([0i64; 0], (tch::Kind::Double, tch::Device::Cpu));
    let query = io("support_bn_conv4")["query"].get(0);
    assert!(model
        .forward_query_with_support_stats(&params, &empty, &query)
        .is_err());
}
