//! Functional, task-batched layers: a model holds its structure only; its weights live in a
//! [`Params`] passed to every forward call, so the same model runs at θ0 and at every adapted θ.
//!
//! Parameter names follow PyTorch's `state_dict` for the equivalent `torch.nn` module. With
//! `[T, P]` parameters, inputs are `[T, B, ...]` and one call runs all T tasks, each with its own
//! weights and its own BatchNorm statistics. This module must not hold parameter values,
//! optimizer state or anything that depends on datasets; its only mutable state is the optional,
//! caller-owned [`BnState`].

mod batchnorm;
mod block;
mod conv;
mod dropout;
mod layers;
mod linear;
mod resnet;
mod starting;

pub use batchnorm::{BatchNorm2d, BnState};
pub use block::ConvBlock;
pub use conv::{Conv2d, ConvTasks, MaxPool2d};
pub use dropout::{DropBlock, Dropout};
pub use layers::{AdaptiveAvgPool2d, AvgPool2d, LayerNorm, LeakyRelu};
pub use linear::Linear;
pub use resnet::{ResNet12, ResNetBlock};
pub use starting::{load_starting_weights, StartingWeights};

pub use crate::params::{Init, ParamDef};
use crate::{Error, Layout, Params, Result};
use tch::Tensor;

/// A functional layer or model.
///
/// Implementors declare their parameters with [`Module::param_defs`] (names relative to the
/// module) and compute with [`Module::forward_scoped`], reading weights through the [`Scope`].
pub trait Module: std::fmt::Debug + Send + Sync {
    /// This module's parameters in PyTorch's registration order, names relative to the module.
    fn param_defs(&self) -> Vec<ParamDef>;

    /// Runs the module on `x`, its weights read from `scope` (which knows the name prefix).
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor>;

    /// The flat layout of this module's parameters.
    fn layout(&self) -> Result<Layout> {
        Layout::new(self.param_defs())
    }

    /// Runs the model. `train` matters only with a [`BnState`] (see
    /// [`Module::forward_with_state`]): without one, BatchNorm always normalises with the
    /// statistics of the batch (MAML's convention, PyTorch's `track_running_stats=False`).
    fn forward(&self, params: &Params, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_scoped(&mut Scope::new(params, train, None), x)
    }

    /// Runs the model with BatchNorm running statistics kept in `state`: with `train` each
    /// BatchNorm normalises with batch statistics and stores updated running statistics in
    /// `state` (new tensors, so an earlier clone of `state` is left as it was); without `train`
    /// it normalises with the statistics found in `state` (mean 0, variance 1 where `state` has
    /// none yet, as a fresh PyTorch BatchNorm2d). Statistics are per task (`[T, C]`) for
    /// task-batched parameters. Keep one state per inner step by cloning it; nothing is shared
    /// unless the caller shares it.
    fn forward_with_state(
        &self,
        params: &Params,
        x: &Tensor,
        train: bool,
        state: &mut BnState,
    ) -> Result<Tensor> {
        self.forward_scoped(&mut Scope::new(params, train, Some(state)), x)
    }

    /// Runs the model with one seed per task (`[T, P]` parameters: T seeds; `[P]`: one), from
    /// which random layers ([`Dropout`], [`DropBlock`]) draw that task's masks in training. Pass
    /// a seed that is a function of the task (never of the rank) and new seeds for new masks
    /// (e.g. one per inner step). `state` as in [`Module::forward_with_state`].
    fn forward_seeded(
        &self,
        params: &Params,
        x: &Tensor,
        train: bool,
        state: Option<&mut BnState>,
        seeds: &[u64],
    ) -> Result<Tensor> {
        self.forward_scoped(&mut Scope::new(params, train, state).with_seeds(seeds), x)
    }

    /// The query's output in eval mode with support-only BatchNorm (meta-test's
    /// `eval.batchnorm = "support_only"`): every BatchNorm normalises the query with the mean and
    /// biased variance of the support set's activations at that layer, per task, instead of the
    /// query's own statistics (transductive). `support` and `query` are `[T, S, ...]` and
    /// `[T, Q, ...]` (or `[S, ...]`, `[Q, ...]`); they run as one batch, support first, whose
    /// statistics come from the first S examples of each task. Random layers are off (eval).
    fn forward_query_with_support_stats(
        &self,
        params: &Params,
        support: &Tensor,
        query: &Tensor,
    ) -> Result<Tensor> {
        let dim = i64::from(params.tasks().is_some());
        let shots = *support
            .size()
            .get(dim as usize)
            .ok_or_else(|| Error::Shape {
                op: "forward_query_with_support_stats",
                expected: "a support set with a batch dimension".to_string(),
                got: support.size(),
            })?;
        let x = Tensor::f_cat(&[support, query], dim)?;
        let mut scope = Scope::new(params, false, None);
        scope.support = Some(shots);
        let y = self.forward_scoped(&mut scope, &x)?;
        let total = y.size()[dim as usize];
        Ok(y.f_narrow(dim, shots, total - shots)?)
    }
}

/// What a module sees during a forward pass: the parameters, the name prefix of the module
/// being run, train/eval mode and the optional BatchNorm state.
pub struct Scope<'a> {
    params: &'a Params,
    prefix: String,
    train: bool,
    state: Option<&'a mut BnState>,
    /// One seed per task for random layers, when the caller gave them.
    seeds: Option<&'a [u64]>,
    /// Support-only BatchNorm: the number of leading examples per task whose statistics
    /// normalise the batch ([`Module::forward_query_with_support_stats`]).
    support: Option<i64>,
    /// Every parameter's view, split from the flat tensor on the first [`Scope::param`] call
    /// (one split per forward pass, so one concatenation in its backward).
    views: Option<Vec<Tensor>>,
}

impl<'a> Scope<'a> {
    pub fn new(params: &'a Params, train: bool, state: Option<&'a mut BnState>) -> Scope<'a> {
        Scope {
            params,
            prefix: String::new(),
            train,
            state,
            seeds: None,
            support: None,
            views: None,
        }
    }

    /// The same scope with one seed per task for random layers ([`Module::forward_seeded`]).
    pub fn with_seeds(mut self, seeds: &'a [u64]) -> Scope<'a> {
        self.seeds = Some(seeds);
        self
    }

    /// The task seeds, when the caller passed them.
    pub fn seeds(&self) -> Option<&[u64]> {
        self.seeds
    }

    /// With support-only BatchNorm, how many leading examples per task are the support set.
    pub fn support(&self) -> Option<i64> {
        self.support
    }

    pub fn params(&self) -> &Params {
        self.params
    }

    /// `Some(T)` when the parameters (and so the inputs) carry a task dimension.
    pub fn tasks(&self) -> Option<i64> {
        self.params.tasks()
    }

    pub fn train(&self) -> bool {
        self.train
    }

    /// The full name of this module's parameter `local` ("weight" -> "2.weight").
    pub fn name(&self, local: &str) -> String {
        format!("{}{local}", self.prefix)
    }

    /// A view of this module's parameter `local`: `[*shape]` or `[T, *shape]`.
    pub fn param(&mut self, local: &str) -> Result<Tensor> {
        let index = self.params.index_of(&self.name(local))?;
        if self.views.is_none() {
            self.views = Some(self.params.views()?);
        }
        let views = self.views.as_ref().expect("views were just split");
        Ok(views[index].shallow_clone())
    }

    /// The BatchNorm state, when the caller passed one.
    pub fn state(&mut self) -> Option<&mut BnState> {
        self.state.as_deref_mut()
    }

    /// Runs `f` in the scope of child `child` (its names get the prefix "`child`.").
    pub fn child<R>(&mut self, child: &str, f: impl FnOnce(&mut Scope<'a>) -> R) -> R {
        let len = self.prefix.len();
        self.prefix.push_str(child);
        self.prefix.push('.');
        let out = f(self);
        self.prefix.truncate(len);
        out
    }

    /// Checks that `x` has `dims` dimensions per task (plus the task dimension, of size T, when
    /// task-batched); returns the per-task shape.
    pub fn check_input(
        &self,
        op: &'static str,
        x: &Tensor,
        dims: usize,
        what: &str,
    ) -> Result<Vec<i64>> {
        let size = x.size();
        match self.tasks() {
            None if size.len() == dims => Ok(size),
            Some(t) if size.len() == dims + 1 && size[0] == t => Ok(size[1..].to_vec()),
            None => Err(Error::Shape {
                op,
                expected: what.to_string(),
                got: size,
            }),
            Some(t) => Err(Error::Shape {
                op,
                expected: format!("[{t} (tasks), {}", &what[1..]),
                got: size,
            }),
        }
    }
}

/// Runs `f` on a `[N, ...]` tensor made by folding the task dimension of `x` (`[T, B, ...]`)
/// into the batch, then unfolds the result back to `[T, B, ...]`. Without tasks, `f(x)`.
pub(crate) fn fold_tasks(
    tasks: Option<i64>,
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match tasks {
        None => f(x),
        Some(t) => {
            let y = f(&x.f_flatten(0, 1)?)?;
            let mut shape = vec![t, -1];
            shape.extend_from_slice(&y.size()[1..]);
            Ok(y.f_reshape(shape.as_slice())?)
        }
    }
}

/// Rectified linear unit (no parameters).
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl Module for Relu {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, _scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_relu()?)
    }
}

/// Hyperbolic tangent (no parameters).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tanh;

impl Module for Tanh {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, _scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_tanh()?)
    }
}

/// Flattens every dimension after the batch one: `[B, ...] -> [B, F]`, `[T, B, ...] -> [T, B, F]`
/// (PyTorch's `nn.Flatten()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let start = if scope.tasks().is_some() { 2 } else { 1 };
        if (x.dim() as i64) <= start {
            return Err(Error::Shape {
                op: "Flatten",
                expected: if start == 2 {
                    "[tasks, batch, d, ...]"
                } else {
                    "[batch, d, ...]"
                }
                .to_string(),
                got: x.size(),
            });
        }
        Ok(x.f_flatten(start, -1)?)
    }
}

/// Modules run one after the other; child `i`'s parameters are named "`i`.name", as in
/// PyTorch's `nn.Sequential` (parameter-free children take an index too).
#[derive(Debug, Default)]
pub struct Sequential {
    children: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential {
            children: Vec::new(),
        }
    }

    /// Appends a module.
    #[allow(clippy::should_implement_trait)]
    pub fn push(mut self, module: impl Module + 'static) -> Sequential {
        self.children.push(Box::new(module));
        self
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Module for Sequential {
    fn param_defs(&self) -> Vec<ParamDef> {
        let mut defs = Vec::new();
        for (i, child) in self.children.iter().enumerate() {
            for def in child.param_defs() {
                defs.push(ParamDef {
                    name: format!("{i}.{}", def.name),
                    ..def
                });
            }
        }
        defs
    }

    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for (i, child) in self.children.iter().enumerate() {
            x = scope.child(&i.to_string(), |scope| child.forward_scoped(scope, &x))?;
        }
        Ok(x)
    }
}

/// A multilayer perceptron: `Linear(sizes[i], sizes[i + 1])` with a ReLU between layers (none
/// after the last), e.g. MAML's sinusoid regressor `mlp(&[1, 40, 40, 1])`. PyTorch equivalent:
/// `nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))`
/// (names "0.weight", "0.bias", "2.weight", ... "4.bias"). Fewer than two sizes give an empty
/// (identity) model.
pub fn mlp(sizes: &[i64]) -> Sequential {
    let mut model = Sequential::new();
    for (i, pair) in sizes.windows(2).enumerate() {
        if i > 0 {
            model = model.push(Relu);
        }
        model = model.push(Linear::new(pair[0], pair[1]));
    }
    model
}

/// MAML's Conv-4 for 28×28 images (Omniglot): [`conv4_sized`] with `image_hw = 28`, whose
/// features after four 2×2 poolings are `filters` (28 -> 14 -> 7 -> 3 -> 1).
pub fn conv4(in_channels: i64, ways: i64, filters: i64) -> Sequential {
    conv4_sized(in_channels, ways, filters, 28)
}

/// MAML's Conv-4: four blocks of 3×3 convolution (padding 1) -> BatchNorm2d -> ReLU ->
/// MaxPool2d(2) ([`ConvBlock`]), then Flatten -> Linear(filters · s², ways), where s is `image_hw` halved
/// (rounding down) four times (84 -> 5 for miniImageNet). `image_hw` must be at least 16.
/// PyTorch equivalent (names "0.0.weight", "0.1.bias", ..., "5.weight"):
/// `nn.Sequential(block(in, f), block(f, f), block(f, f), block(f, f), nn.Flatten(),
/// nn.Linear(f * s * s, ways))` with `block(i, o) = nn.Sequential(nn.Conv2d(i, o, 3, padding=1),
/// nn.BatchNorm2d(o, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2))`.
pub fn conv4_sized(in_channels: i64, ways: i64, filters: i64, image_hw: i64) -> Sequential {
    let mut model = Sequential::new();
    let mut channels = in_channels;
    let mut side = image_hw;
    for _ in 0..4 {
        model = model.push(ConvBlock::new(channels, filters));
        channels = filters;
        side /= 2;
    }
    model
        .push(Flatten)
        .push(Linear::new(filters * side * side, ways))
}
