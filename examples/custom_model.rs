//! Meta-training your own model on your own tasks with your own loss, through the same Trainer
//! the `metaloop train` command uses.
//!
//! - The model, `Fourier`, is defined here: fixed sine/cosine features of the input followed by a
//!   linear head (a runtime `Linear`), whose weights the inner loop adapts.
//! - The tasks, `Waves`, are defined here: `y = a·sin(2x) + b·cos(x)` with `a`, `b` drawn per task
//!   as a pure function of (seed, split, iteration, task index), as a `TaskSource` must be.
//! - The loss, `HalfSquaredError` (least squares' ½·mean r²), is defined here.
//!
//! The config supplies the rest (algorithm, inner steps, outer optimizer, meta-batch, seed).
//! Run: `cargo run --release --example custom_model`.

use std::ops::Range;

use metaloop::engine::config::{AlgorithmName, TrainConfig};
use metaloop::engine::data::{MetaBatch, Split, TaskRng, TaskSource};
use metaloop::engine::loss::{self, Loss, TaskLosses};
use metaloop::engine::train::{EvalReport, Trainer};
use metaloop::runtime::nn::{Linear, Module, ParamDef, Scope};
use tch::{Kind, Tensor};

/// Sine and cosine features of `frequencies` harmonics, then a linear head: `[.., 1] -> [.., 1]`.
#[derive(Debug)]
pub struct Fourier {
    frequencies: i64,
    head: Linear,
}

impl Fourier {
    pub fn new(frequencies: i64) -> Fourier {
        Fourier {
            frequencies,
            head: Linear::new(2 * frequencies, 1),
        }
    }
}

impl Module for Fourier {
    fn param_defs(&self) -> Vec<ParamDef> {
        let mut defs = self.head.param_defs();
        for d in &mut defs {
            d.name = format!("head.{}", d.name);
        }
        defs
    }

    fn forward_scoped(
        &self,
        scope: &mut Scope<'_>,
        x: &Tensor,
    ) -> metaloop::runtime::Result<Tensor> {
        let k = Tensor::f_arange_start(1, self.frequencies + 1, (x.kind(), x.device()))?;
        let kx = x.f_mul(&k)?;
        let features = Tensor::f_cat(&[kx.f_sin()?, kx.f_cos()?], -1)?;
        scope.child("head", |s| self.head.forward_scoped(s, &features))
    }
}

/// Regression tasks `y = a·sin(2x) + b·cos(x)`, `a`, `b` uniform in [-2, 2], x uniform in [-π, π].
pub struct Waves {
    pub shots: i64,
    pub queries: i64,
}

impl Waves {
    fn points(rng: &mut TaskRng, n: i64, a: f64, b: f64) -> (Vec<f64>, Vec<f64>) {
        let pi = std::f64::consts::PI;
        let x: Vec<f64> = (0..n).map(|_| rng.uniform(-pi, pi)).collect();
        let y = x
            .iter()
            .map(|x| a * (2.0 * x).sin() + b * x.cos())
            .collect();
        (x, y)
    }
}

impl TaskSource for Waves {
    fn meta_batch(
        &self,
        seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        split: Split,
    ) -> metaloop::engine::Result<MetaBatch> {
        let mut columns: [Vec<f64>; 4] = Default::default();
        for task in tasks.clone() {
            let mut rng = TaskRng::for_task(seed, split, iteration, task);
            let (a, b) = (rng.uniform(-2.0, 2.0), rng.uniform(-2.0, 2.0));
            let (xs, ys) = Waves::points(&mut rng, self.shots, a, b);
            let (xq, yq) = Waves::points(&mut rng, self.queries, a, b);
            for (column, values) in columns.iter_mut().zip([xs, ys, xq, yq]) {
                column.extend(values);
            }
        }
        let t = tasks.len() as i64;
        let shape = |column: &[f64], n: i64| -> metaloop::engine::Result<Tensor> {
            Ok(Tensor::f_from_slice(column)?
                .f_to_kind(Kind::Float)?
                .f_reshape([t, n, 1])?)
        };
        Ok(MetaBatch {
            support_x: shape(&columns[0], self.shots)?,
            support_y: shape(&columns[1], self.shots)?,
            query_x: shape(&columns[2], self.queries)?,
            query_y: shape(&columns[3], self.queries)?,
            iteration,
            tasks,
        })
    }

    fn input_shape(&self) -> Vec<i64> {
        vec![1]
    }

    fn num_outputs(&self) -> usize {
        1
    }
}

/// Half the mean squared error of each task's predictions.
#[derive(Debug)]
pub struct HalfSquaredError;

impl Loss for HalfSquaredError {
    fn task_losses(&self, pred: &Tensor, y: &Tensor) -> loss::Result<TaskLosses> {
        Ok(TaskLosses {
            loss: pred
                .f_sub(y)?
                .f_square()?
                .f_mean_dim(&[1i64, 2][..], false, pred.kind())?
                .f_mul_scalar(0.5)?,
            accuracy: None,
        })
    }

    fn classification(&self) -> bool {
        false
    }

    fn metric(&self) -> &'static str {
        "half_mse"
    }
}

/// Meta-trains `Fourier` on `Waves` for `iterations` outer iterations with MAML++'s learned
/// per-step rates (LSLR), and meta-tests on 100 held-out tasks.
pub fn train(iterations: u64) -> metaloop::engine::Result<EvalReport> {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.name = AlgorithmName::Lslr;
    cfg.algorithm.inner_steps = 2;
    cfg.algorithm.inner_lr = 0.5;
    cfg.outer.lr = 0.003;
    cfg.outer.meta_batch = 10;
    cfg.outer.iterations = iterations;
    let mut trainer = Trainer::builder(&cfg)
        .model(Fourier::new(3))
        .tasks(Waves {
            shots: 10,
            queries: 10,
        })
        .loss(HalfSquaredError)
        .build()?;
    trainer.fit(None, &mut ())?;
    trainer.evaluate(Split::Test, 100)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report = train(300)?;
    println!(
        "half squared error on 100 new tasks: {:.3} before adaptation, {:.3} after 2 steps",
        report.loss_before.mean, report.loss_after.mean
    );
    Ok(())
}
