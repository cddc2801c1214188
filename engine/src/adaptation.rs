//! Adaptation curves of a sinusoid regressor: what the MAML paper's Figure 2 shows.
//!
//! For a few meta-test tasks: the true curve on a grid over the input range, the K support points,
//! and the model's prediction on the grid before adaptation and after a given number of inner
//! steps on the support points. The inner loop is the runtime's [`InnerLoop`] with the run's inner
//! optimizer (learned hyperparameters, such as Meta-SGD's per-element lr or a learned per-tensor
//! lr, are passed as overrides). Pure computation: the launcher draws the figure; this module neither
//! prints nor writes files.

use metaloop_runtime::nn::Module;
use metaloop_runtime::{optim, InnerLoop, Params};
use tch::{Kind, Tensor};

use crate::algorithms::Learned;
use crate::data::sinusoid::{Sinusoid, SinusoidTask};
use crate::data::{Split, TaskSource};
use crate::Result;

/// What to compute: which tasks, how many support points, and the inner loop.
#[derive(Debug, Clone)]
pub struct AdaptationSpec {
    /// The run's seed: tasks are meta-test tasks `0..tasks` of iteration 0 of this seed.
    pub seed: u64,
    /// Number of meta-test tasks (the figure shows 3).
    pub tasks: usize,
    /// Support points per task (K).
    pub shots: usize,
    /// The inner optimizer (a run's: engine::outer_options::build_inner).
    pub optimizer: Box<dyn optim::Optimizer>,
    /// Numbers of inner steps to show, e.g. `[0, 1, 10]` (0: before adaptation).
    pub steps: Vec<usize>,
    /// Grid points over the input range for the curves.
    pub grid_points: usize,
}

impl AdaptationSpec {
    /// The MAML paper's Figure 2: 3 tasks, predictions before and after 1 and 10 steps.
    pub fn figure(seed: u64, shots: usize, optimizer: Box<dyn optim::Optimizer>) -> AdaptationSpec {
        AdaptationSpec {
            seed,
            tasks: 3,
            shots,
            optimizer,
            steps: vec![0, 1, 10],
            grid_points: 200,
        }
    }
}

/// The model's prediction after `steps` inner steps.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Inner steps taken (0: the meta-learned initialisation).
    pub steps: usize,
    /// Predicted y on [`AdaptationCurves::grid`].
    pub y: Vec<f64>,
    /// Mean squared error on the support points at these weights.
    pub support_mse: f64,
    /// Mean squared error against the true curve on the grid.
    pub grid_mse: f64,
}

/// One task's curves.
#[derive(Debug, Clone)]
pub struct AdaptationCurves {
    /// The true function.
    pub task: SinusoidTask,
    /// The support points `(x, y)` the model adapts on.
    pub support: Vec<(f64, f64)>,
    /// Evenly spaced x's over the input range.
    pub grid: Vec<f64>,
    /// The true y's on the grid.
    pub truth: Vec<f64>,
    /// The predictions, in the order of [`AdaptationSpec::steps`].
    pub predictions: Vec<Prediction>,
}

/// The inner-loop overrides of a model's learned inner hyperparameters: the learned `lr`
/// (Meta-SGD's per-element rates, `learn_lr`'s per-tensor ones) as it is, and of per-step rates
/// (LSLR's `[steps, G]`) the first step's row (the figure's steps run past the trained unroll).
/// Other learned hyperparameters are left out: the figure's inner loop is plain SGD.
pub fn overrides(learned: &[Learned]) -> Result<Vec<(String, Tensor)>> {
    learned
        .iter()
        .filter(|h| h.name == "lr")
        .map(|h| {
            let t = h.tensor.f_detach()?;
            let t = if h.per_step { t.f_get(0)? } else { t };
            Ok((h.name.clone(), t))
        })
        .collect()
}

/// Adapts `params` of `model` (a 1-input, 1-output regressor) to each meta-test task and returns
/// its curves. `overrides` are hyperparameter tensors of the inner SGD (e.g. `("lr", lr)`), as
/// given to [`InnerLoop`].
pub fn sinusoid(
    model: &dyn Module,
    params: &Params,
    spec: &AdaptationSpec,
    overrides: &[(String, Tensor)],
) -> Result<Vec<AdaptationCurves>> {
    let kind = params.kind();
    let source = Sinusoid::new(spec.shots, 1)?.with_kind(kind);
    let batch = source.meta_batch(spec.seed, 0, 0..spec.tasks, Split::Test)?;
    (0..spec.tasks)
        .map(|t| {
            let task = source.task_function(spec.seed, 0, t, Split::Test);
            let episode = batch.task(t)?;
            let support_x = episode.support_x.f_to_device(params.device())?;
            let support_y = episode.support_y.f_to_device(params.device())?;
            let (gx, gy) = task.grid(spec.grid_points, kind)?;
            let curves = AdaptationCurves {
                task,
                support: to_vec(&support_x)?
                    .into_iter()
                    .zip(to_vec(&support_y)?)
                    .collect(),
                grid: to_vec(&gx)?,
                truth: to_vec(&gy)?,
                predictions: Vec::new(),
            };
            let gx = gx.f_to_device(params.device())?;
            adapt(
                model,
                params,
                spec,
                overrides,
                (&support_x, &support_y),
                &gx,
                curves,
            )
        })
        .collect()
}

/// Runs the inner loop on one task's support set, recording the predictions at each
/// requested step count.
fn adapt(
    model: &dyn Module,
    params: &Params,
    spec: &AdaptationSpec,
    overrides: &[(String, Tensor)],
    (support_x, support_y): (&Tensor, &Tensor),
    grid_x: &Tensor,
    mut curves: AdaptationCurves,
) -> Result<AdaptationCurves> {
    let mut builder = InnerLoop::with_boxed(model, params, spec.optimizer.clone())
        .copy_initial_weights(true)
        .track_higher_grads(false);
    for (name, value) in overrides {
        builder = builder.override_hparam(name, value);
    }
    let mut inner = builder.build()?;
    let last = spec.steps.iter().copied().max().unwrap_or(0);
    let mut at: Vec<(usize, Prediction)> = Vec::new();
    for step in 0..=last {
        let support_loss = inner
            .forward(support_x)?
            .f_mse_loss(support_y, tch::Reduction::Mean)?;
        if spec.steps.contains(&step) {
            let y = tch::no_grad(|| inner.forward(grid_x))?;
            let y = to_vec(&y)?;
            let grid_mse = y
                .iter()
                .zip(&curves.truth)
                .map(|(p, t)| (p - t) * (p - t))
                .sum::<f64>()
                / y.len().max(1) as f64;
            let support_mse = support_loss.f_double_value(&[])?;
            at.push((
                step,
                Prediction {
                    steps: step,
                    y,
                    support_mse,
                    grid_mse,
                },
            ));
        }
        if step < last {
            inner.step(&support_loss)?;
        }
    }
    curves.predictions = spec
        .steps
        .iter()
        .filter_map(|s| at.iter().find(|(k, _)| k == s).map(|(_, p)| p.clone()))
        .collect();
    Ok(curves)
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t
        .f_detach()?
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Double)?
        .f_reshape([-1])?;
    Ok(Vec::<f64>::try_from(&flat)?)
}
