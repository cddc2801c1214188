//! MAML++'s per-step BatchNorm (BNWB and BNRS, Antoniou et al. 2019) against PyTorch
//! (tests/fixtures/nn14/gen_per_step_bn.py): one row of weight, bias and running statistics per
//! inner step. The second-order meta-gradient through 3 inner SGD steps, every task's running
//! statistics after its inner loop and query, and the query in eval mode with step 0's running
//! statistics, for Conv-4 and ResNet-12, task-batched and single-task, f64 at 1e-10.

mod nn_support;

use std::collections::HashMap;

use metaloop_runtime::nn::{conv4_steps, BnState, Module, ResNet12, Scope};
use metaloop_runtime::optim::Sgd;
use metaloop_runtime::{InnerLoop, Params};
use nn_support::{assert_close, io, load, TOL};
use tch::{Kind, Reduction, Tensor};

const STEPS: usize = 3;
const LR: f64 = 0.1;

fn conv4() -> impl Module {
    conv4_steps(3, 5, 4, 16, Some(STEPS as i64))
}

fn resnet12() -> ResNet12 {
    ResNet12::new([4, 6, 8, 10], 5, 3).per_step_batchnorm(STEPS as i64)
}

/// The model at inner step `step` (None: the last row), training mode unless `eval`.
fn run(
    model: &dyn Module,
    params: &Params,
    x: &Tensor,
    state: &mut BnState,
    step: Option<usize>,
    eval: bool,
) -> Tensor {
    let mut scope = Scope::new(params, !eval, Some(state)).with_step(step);
    model.forward_scoped(&mut scope, x).unwrap()
}

/// Sum over tasks of each task's mean cross-entropy (`[T, N, ways]` or `[N, ways]` logits).
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
    let tasks = if logits.dim() == 3 {
        logits.size()[0]
    } else {
        1
    };
    logits
        .reshape([-1, logits.size()[logits.dim() - 1]])
        .cross_entropy_loss::<Tensor>(&y.reshape([-1]), None, Reduction::Mean, -100, 0.0)
        * tasks as f64
}

/// The inner loop on `io`'s tasks (all when `task` is None, else that one without a task
/// dimension): the meta-loss, the running statistics and the eval-mode query output at step 0.
fn adapt(
    model: &dyn Module,
    params: &Params,
    io: &HashMap<String, Tensor>,
    task: Option<i64>,
) -> (Tensor, BnState, Tensor) {
    let pick = |name: &str| match task {
        Some(t) => io[name].get(t),
        None => io[name].shallow_clone(),
    };
    let mut inner = InnerLoop::new(model, params, Sgd::new(LR)).copy_initial_weights(false);
    if task.is_none() {
        inner = inner.tasks(io["support_x"].size()[0]);
    }
    let mut inner = inner.build().unwrap();
    let mut state = BnState::new();
    for step in 0..STEPS {
        let logits = run(
            model,
            inner.params(),
            &pick("support_x"),
            &mut state,
            Some(step),
            false,
        );
        inner
            .step(&cross_entropy(&logits, &pick("support_y")))
            .unwrap();
    }
    let logits = run(
        model,
        inner.params(),
        &pick("query_x"),
        &mut state,
        None,
        false,
    );
    let meta_loss = cross_entropy(&logits, &pick("query_y"));
    let eval = run(
        model,
        inner.params(),
        &pick("query_x"),
        &mut state,
        Some(0),
        true,
    );
    (meta_loss, state, eval)
}

fn check(model: &dyn Module, case: &str) {
    let io = io(case);
    let (params, defaults) = load(model, case);
    // The state_dict's buffers are [S, C]: one row of running statistics per step.
    let (name, mean) = defaults
        .iter()
        .next()
        .expect("running statistics in the state_dict");
    assert_eq!(mean.size()[0], STEPS as i64, "{name}");
    let (meta_loss, state, eval) = adapt(model, &params, &io, None);
    assert_close(
        &format!("{case} meta_loss"),
        &meta_loss.reshape([1]),
        &io["meta_loss"],
        TOL,
    );
    for (name, value) in state.iter() {
        assert_close(
            &format!("{case} {name}"),
            value,
            &io[&format!("running.{name}")],
            TOL,
        );
    }
    assert_eq!(state.len(), defaults.len());
    assert_close(
        &format!("{case} eval output"),
        &eval,
        &io["eval_output"],
        TOL,
    );
    meta_loss.backward();
    let scale = params
        .iter()
        .map(|(n, _)| io[&format!("meta_grad.{n}")].abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    for (name, _) in params.iter() {
        let want = &io[&format!("meta_grad.{name}")];
        let got = params
            .grad(name)
            .expect("a meta-gradient for every parameter");
        assert_close(
            &format!("{case} meta_grad.{name}"),
            &got,
            want,
            TOL * (1.0 + scale),
        );
    }
    // One task alone, without the task dimension.
    let (params, _) = load(model, case);
    let (loss, state, eval) = adapt(model, &params, &io, Some(1));
    let want = io["meta_loss"].shallow_clone();
    assert!(loss.double_value(&[]) < want.double_value(&[0]));
    for (name, value) in state.iter() {
        let want = io[&format!("running.{name}")].get(1);
        assert_close(&format!("{case} task 1 {name}"), value, &want, TOL);
    }
    assert_close(
        &format!("{case} task 1 eval"),
        &eval,
        &io["eval_output"].get(1),
        TOL,
    );
}

#[test]
fn conv4_per_step_batchnorm_matches_pytorch() {
    check(&conv4(), "per_step_bn_conv4");
}

#[test]
fn resnet12_per_step_batchnorm_matches_pytorch() {
    check(&resnet12(), "per_step_bn_resnet12");
}

#[test]
fn steps_past_the_rows_and_no_step_read_the_last_row() {
    let model = conv4();
    let layout = model.layout().unwrap();
    assert_eq!(layout.get("0.1.weight").unwrap().shape, [STEPS as i64, 4]);
    assert_eq!(layout.get("3.1.bias").unwrap().shape, [STEPS as i64, 4]);
    let (params, _) = load(&model, "per_step_bn_conv4");
    let x = io("per_step_bn_conv4")["support_x"].get(0);
    let out = |step| run(&model, &params, &x, &mut BnState::new(), step, false);
    let last = out(Some(STEPS - 1));
    assert_eq!(
        out(Some(STEPS + 4)).double_value(&[0, 0]),
        last.double_value(&[0, 0])
    );
    assert_close("no step", &out(None), &last, 0.0);
    assert_close("past the rows", &out(Some(STEPS + 4)), &last, 0.0);
    // The rows differ (the fixture randomised them), so the step matters.
    let gap = (&out(Some(0)) - &last).abs().max().double_value(&[]);
    assert!(gap > 1e-3, "step 0 and the last step agree");
    let _ = Kind::Double;
}
