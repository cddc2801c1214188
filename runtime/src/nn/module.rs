//! The [`Module`] trait and the [`Scope`] a module reads its weights through during a forward
//! pass. Below every layer: it knows no layer. [`Params::init`] for a model lives here, so that
//! `params` never needs to know what a module is.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::bn_state::BnState;
use crate::params::ParamDef;
use crate::{Error, Layout, Params, Result};

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
    /// which random layers ([`Dropout`](super::Dropout), [`DropBlock`](super::DropBlock)) draw
    /// that task's masks in training. Pass a seed that is a function of the task (never of the
    /// rank) and new seeds for new masks (e.g. one per inner step). `state` as in
    /// [`Module::forward_with_state`].
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
        self.forward_query_with_support_stats_at(params, support, query, None)
    }

    /// [`Module::forward_query_with_support_stats`] at inner step `step` (per-step layers read
    /// its row; see [`Scope::with_step`]).
    fn forward_query_with_support_stats_at(
        &self,
        params: &Params,
        support: &Tensor,
        query: &Tensor,
        step: Option<usize>,
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
        let mut scope = Scope::new(params, false, None).with_step(step);
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
    /// The inner step this forward belongs to, for per-step layers
    /// ([`BatchNorm2d::per_step`](super::BatchNorm2d::per_step)); `None`: their last step's.
    step: Option<usize>,
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
            step: None,
        }
    }

    /// The same scope for inner step `step` (0-based): per-step layers
    /// ([`BatchNorm2d::per_step`](super::BatchNorm2d::per_step)) read that step's row, or their
    /// last row when `step` is past it. Without a step they read their last row.
    pub fn with_step(mut self, step: Option<usize>) -> Scope<'a> {
        self.step = step;
        self
    }

    /// The inner step given with [`Scope::with_step`].
    pub fn step(&self) -> Option<usize> {
        self.step
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

impl Params {
    /// Fresh parameters for `model`: a `requires_grad` leaf `[P]` drawn with PyTorch's default
    /// init distributions. Values come from a ChaCha8 stream seeded with `seed`, drawn in f64 on
    /// the CPU and then converted and moved, so one seed gives the same values on any device, in
    /// any process. (They are not PyTorch's values for `torch.manual_seed(seed)`.)
    pub fn init(
        model: &(impl Module + ?Sized),
        seed: u64,
        kind: Kind,
        device: Device,
    ) -> Result<Params> {
        Params::init_layout(Arc::new(model.layout()?), seed, kind, device)
    }
}
