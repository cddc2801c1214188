//! The toy example of `higher.innerloop_ctx` (a learned-lr-and-momentum fit in the style of higher's
//! README example), in metaloop, with its two
//! lost lines restored (`diffopt.step(loss)` after the inner loss, `meta_opt.step()` before the
//! third run).
//!
//! A model `y = w x` (no bias) is fitted to `y = 3.5 x` by 5 inner SGD steps with lr 0.3 and
//! momentum 0.5, both overridden by tensors that receive hypergradients; the meta-loss is
//! `(w_5 - 3.5)^2`. It runs the inner loop three times: with `copy_initial_weights(true)` (no
//! meta-gradient reaches w), with `false` (it does), and after one outer SGD step, to compare the
//! meta-gradient with a finite difference. The data and the initial weight are those of
//! tests/fixtures/higher/gen_higher.py, so the printout equals higher's.
//!
//! Run: `cargo run --example higher_toy`.

use metaloop::runtime::nn::{self, Module};
use metaloop::runtime::optim::{HParams, Optimizer, Sgd};
use metaloop::runtime::{InnerLoop, Params};
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

pub const ACTUAL_MULTIPLIER: f64 = 3.5;
pub const META_LR: f64 = 0.00001;
pub const LOOPS: usize = 5;

/// What one run of the inner loop produced.
pub struct Run {
    /// w at times 0..=LOOPS.
    pub history: Vec<f64>,
    pub meta_loss: f64,
    pub lr_grad: f64,
    pub momentum_grad: f64,
}

/// Everything the toy prints.
pub struct Toy {
    pub runs: [Run; 3],
    /// w's gradient after the second run (none after the first).
    pub weight_grad_after_run1: Option<f64>,
    pub weight_grad_after_run2: f64,
    pub weight_after_meta_step: f64,
    pub fd_approximation: f64,
}

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/higher/toy.safetensors"
    );
    Tensor::read_safetensors(path)
        .expect("the toy fixture")
        .into_iter()
        .collect()
}

fn run_inner_loop_once(
    model: &nn::Linear,
    params: &Params,
    x: &Tensor,
    y: &Tensor,
    copy_initial_weights: bool,
    verbose: bool,
) -> Run {
    // As in the original example: float32 hyperparameter tensors ([1]) on a float64 model.
    let lr = Tensor::from_slice(&[0.3f32]).set_requires_grad(true);
    let momentum = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
    let mut inner = InnerLoop::new(model, params, Sgd::new(0.3).momentum(0.5))
        .copy_initial_weights(copy_initial_weights)
        .override_hparam("lr", &lr)
        .override_hparam("momentum", &momentum)
        .build()
        .expect("a valid inner loop");
    for j in 0..LOOPS {
        if verbose {
            println!("Starting inner loop step j=={j}");
            println!(
                "    Representation of fmodel.parameters(time={j}): {:.4}",
                w_of(inner.params_at(j).unwrap())
            );
        }
        let out = inner.forward(x).unwrap();
        if verbose {
            println!(
                "    Notice how `out` is `x` multiplied by the latest version of weight: {:.4} * {:.4} == {:.4}",
                x.double_value(&[0, 0]),
                w_of(inner.params()),
                out.double_value(&[0, 0])
            );
        }
        let loss = (&out - y).square().mean(Kind::Double);
        inner.step(&loss).unwrap();
    }
    let history: Vec<f64> = (0..=LOOPS)
        .map(|j| w_of(inner.params_at(j).unwrap()))
        .collect();
    if verbose {
        println!("Let's print all intermediate parameters versions after inner loop is done:");
        for (j, w) in history.iter().enumerate() {
            println!("    For j=={j} parameter is: {w:.4}");
        }
    }
    let w = inner.params().get("weight").unwrap();
    let meta_loss = (w - ACTUAL_MULTIPLIER).square();
    println!("  Final meta-loss: {}", meta_loss.double_value(&[0, 0]));
    // Like PyTorch's backward(): gradients accumulate into every leaf that requires grad.
    meta_loss.sum(Kind::Double).backward();
    let (lr_grad, momentum_grad) = (
        lr.grad().double_value(&[0]),
        momentum.grad().double_value(&[0]),
    );
    if verbose {
        println!(
            "  Gradient of final loss we got for lr and momentum: {lr_grad} and {momentum_grad}"
        );
    }
    Run {
        history,
        meta_loss: meta_loss.double_value(&[0, 0]),
        lr_grad,
        momentum_grad,
    }
}

fn w_of(p: &Params) -> f64 {
    p.get("weight").unwrap().double_value(&[0, 0])
}

fn grad_of(p: &Params) -> Option<f64> {
    p.grad("weight")
        .filter(|g| g.defined())
        .map(|g| g.double_value(&[0, 0]))
}

/// Runs the toy example and returns what it printed.
pub fn toy() -> Toy {
    let fx = fixture();
    let x = fx["x"].shallow_clone();
    let y = &x * ACTUAL_MULTIPLIER;
    let model = nn::Linear::new(1, 1).no_bias();
    let layout = Arc::new(model.layout().unwrap());
    let params = Params::from_flat(
        layout.clone(),
        fx["w0"].reshape([1]).copy().set_requires_grad(true),
    )
    .unwrap();
    // The outer optimizer: SGD(lr=meta_lr, momentum=0), the same pure update as the inner steps.
    let meta_opt = Sgd::new(META_LR).momentum(0.0);
    let meta_hparams = HParams::defaults(&meta_opt);
    let mut meta_state = meta_opt.init_state(params.flat()).unwrap();

    println!("=================== Run Inner Loop First Time (copy_initial_weights=True) =================\n");
    let run1 = run_inner_loop_once(&model, &params, &x, &y, true, true);
    let weight_grad_after_run1 = grad_of(&params);
    println!("\nLet's see if we got any gradient for initial model parameters: {weight_grad_after_run1:?}\n");

    println!("=================== Run Inner Loop Second Time (copy_initial_weights=False) =================\n");
    let run2 = run_inner_loop_once(&model, &params, &x, &y, false, false);
    let weight_grad_after_run2 = grad_of(&params).expect("copy_initial_weights(false) reaches w");
    println!("\nLet's see if we got any gradient for initial model parameters: {weight_grad_after_run2}\n");

    println!("=================== Run Inner Loop Third Time (copy_initial_weights=False) =================\n");
    let meta_step = -META_LR * weight_grad_after_run2;
    // meta_opt.step(): the second lost line.
    tch::no_grad(|| {
        let (next, state) = meta_opt
            .update(
                params.flat(),
                &params.flat().grad(),
                &meta_state,
                &meta_hparams,
            )
            .unwrap();
        params.set("weight", &next.view([1, 1])).unwrap();
        meta_state = state;
    });
    let weight_after_meta_step = w_of(&params);
    let run3 = run_inner_loop_once(&model, &params, &x, &y, false, false);
    let fd_approximation = (run3.meta_loss - run2.meta_loss) / meta_step;
    println!(
        "Side-by-side meta_loss_gradient_approximation and gradient computed by `metaloop`: {fd_approximation:.4} VS {weight_grad_after_run2:.4}"
    );
    Toy {
        runs: [run1, run2, run3],
        weight_grad_after_run1,
        weight_grad_after_run2,
        weight_after_meta_step,
        fd_approximation,
    }
}

#[allow(dead_code)]
fn main() {
    toy();
}
