//! An optimizer's options under torch.optim's names, for the outer optimizer (`[outer]`) and the
//! inner one (`algorithm.inner_optimizer`, `[algorithm.inner_options]`): which optimizer takes
//! which, their checks, and the runtime::optim optimizer they build. An option left out takes
//! torch.optim's default for the chosen optimizer. Nothing here prints or reads files.

use metaloop_runtime::optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, Optimizer, RAdam, RMSprop, Rprop, Sgd,
};

use crate::config::{
    AlgorithmConfig, ConfigError, OptimizerName, OptimizerOptions, OuterConfig, Schedule,
};

/// The options `optimizer` takes, torch.optim's keyword arguments after `lr`.
pub fn options(optimizer: OptimizerName) -> &'static [&'static str] {
    match optimizer {
        OptimizerName::Sgd => &["momentum", "dampening", "weight_decay", "nesterov"],
        OptimizerName::Adam | OptimizerName::Adamw => &["betas", "eps", "weight_decay", "amsgrad"],
        OptimizerName::Adamax => &["betas", "eps", "weight_decay"],
        OptimizerName::Adagrad => &[
            "lr_decay",
            "weight_decay",
            "initial_accumulator_value",
            "eps",
        ],
        OptimizerName::Adadelta => &["rho", "eps", "weight_decay"],
        OptimizerName::Rmsprop => &["alpha", "eps", "weight_decay", "momentum", "centered"],
        OptimizerName::Rprop => &["etas", "step_sizes"],
        OptimizerName::Radam => &["betas", "eps", "weight_decay", "decoupled_weight_decay"],
    }
}

/// Where a set of options sits in the config: the prefix of each option's key, the key of the
/// optimizer and the key of the momentum.
#[derive(Clone, Copy)]
struct Place {
    options: &'static str,
    optimizer: &'static str,
    momentum: &'static str,
}

const OUTER: Place = Place {
    options: "outer.",
    optimizer: "outer.optimizer",
    momentum: "outer.momentum",
};

const INNER: Place = Place {
    options: "algorithm.inner_options.",
    optimizer: "algorithm.inner_optimizer",
    momentum: "algorithm.inner_momentum",
};

impl Place {
    /// The error of option `key` at this place.
    fn err(self, key: &str, message: impl Into<String>) -> ConfigError {
        let key = match key {
            "momentum" => self.momentum.to_string(),
            _ => format!("{}{key}", self.options),
        };
        ConfigError {
            key,
            message: message.into(),
        }
    }
}

/// The options that `o` sets, by name.
fn set_options(o: &OptimizerOptions) -> Vec<&'static str> {
    let set = [
        ("momentum", o.momentum.is_some()),
        ("dampening", o.dampening.is_some()),
        ("nesterov", o.nesterov.is_some()),
        ("weight_decay", o.weight_decay.is_some()),
        ("betas", o.betas.is_some()),
        ("eps", o.eps.is_some()),
        ("amsgrad", o.amsgrad.is_some()),
        ("lr_decay", o.lr_decay.is_some()),
        (
            "initial_accumulator_value",
            o.initial_accumulator_value.is_some(),
        ),
        ("rho", o.rho.is_some()),
        ("alpha", o.alpha.is_some()),
        ("centered", o.centered.is_some()),
        ("etas", o.etas.is_some()),
        ("step_sizes", o.step_sizes.is_some()),
        ("decoupled_weight_decay", o.decoupled_weight_decay.is_some()),
    ];
    set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect()
}

/// Checks `outer`'s optimizer options (each one the optimizer takes, in torch's ranges), its
/// schedule and its clipping.
pub(crate) fn validate(outer: &OuterConfig) -> Result<(), ConfigError> {
    validate_options(outer.optimizer, &outer.options(), OUTER)?;
    let scalars = [
        ("min_lr", outer.min_lr),
        ("clip_grad_norm", outer.clip_grad_norm),
    ];
    for (key, v) in scalars {
        if !(v.is_finite() && v >= 0.0) {
            return Err(OUTER.err(key, format!("must be finite and >= 0, got {v}")));
        }
    }
    validate_schedule(outer)
}

/// Checks the inner optimizer's options: each one the optimizer takes, in torch's ranges, the
/// momentum only in `algorithm.inner_momentum`, and momentum (set or learned) only for an
/// optimizer that has one.
pub(crate) fn validate_inner(a: &AlgorithmConfig) -> Result<(), ConfigError> {
    let name = a.inner_optimizer;
    if a.inner_options
        .as_ref()
        .is_some_and(|o| o.momentum.is_some())
    {
        return Err(ConfigError {
            key: "algorithm.inner_options.momentum".into(),
            message: "set algorithm.inner_momentum instead".into(),
        });
    }
    if !name.has_momentum() {
        let why = format!(
            "algorithm.inner_optimizer = \"{name}\" has no momentum (sgd and rmsprop have one)"
        );
        if a.inner_momentum != 0.0 {
            return Err(INNER.err("momentum", format!("must be 0: {why}")));
        }
        if a.learn_momentum {
            return Err(ConfigError {
                key: "algorithm.learn_momentum".into(),
                message: format!("must be false: {why}"),
            });
        }
    }
    validate_options(name, &inner_options(a), INNER)
}

/// Checks that `o` holds only options of `optimizer`, each in torch's range.
fn validate_options(
    optimizer: OptimizerName,
    o: &OptimizerOptions,
    at: Place,
) -> Result<(), ConfigError> {
    let allowed = options(optimizer);
    if let Some(bad) = set_options(o).into_iter().find(|n| !allowed.contains(n)) {
        return Err(at.err(
            bad,
            format!(
                "not an option of {} = \"{optimizer}\" (its options: {})",
                at.optimizer,
                allowed.join(", ")
            ),
        ));
    }
    let scalars = [
        ("momentum", o.momentum),
        ("dampening", o.dampening),
        ("weight_decay", o.weight_decay),
        ("eps", o.eps),
        ("lr_decay", o.lr_decay),
        ("initial_accumulator_value", o.initial_accumulator_value),
        ("alpha", o.alpha),
    ];
    for (key, value) in scalars {
        if let Some(v) = value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(at.err(key, format!("must be finite and >= 0, got {v}")));
        }
    }
    if let Some(rho) = o.rho.filter(|r| !(0.0..=1.0).contains(r)) {
        return Err(at.err("rho", format!("must be in [0, 1], got {rho}")));
    }
    if let Some([b1, b2]) = o.betas {
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(at.err("betas", format!("must be in [0, 1), got [{b1}, {b2}]")));
        }
    }
    validate_pairs(o, at)?;
    if o.nesterov == Some(true)
        && (o.momentum.unwrap_or(0.0) <= 0.0 || o.dampening.unwrap_or(0.0) != 0.0)
    {
        return Err(at.err(
            "nesterov",
            format!("needs {} > 0 and {}dampening = 0", at.momentum, at.options),
        ));
    }
    Ok(())
}

/// Rprop's `etas` and `step_sizes`.
fn validate_pairs(o: &OptimizerOptions, at: Place) -> Result<(), ConfigError> {
    if let Some([minus, plus]) = o.etas {
        if !(0.0 < minus && minus < 1.0 && 1.0 < plus && plus.is_finite()) {
            return Err(at.err(
                "etas",
                format!("must be 0 < etas[0] < 1 < etas[1], got [{minus}, {plus}]"),
            ));
        }
    }
    if let Some([low, high]) = o.step_sizes {
        if !(0.0 <= low && low <= high && high.is_finite()) {
            return Err(at.err(
                "step_sizes",
                format!("must be 0 <= step_sizes[0] <= step_sizes[1], got [{low}, {high}]"),
            ));
        }
    }
    Ok(())
}

fn validate_schedule(outer: &OuterConfig) -> Result<(), ConfigError> {
    if outer.warmup_iterations >= outer.iterations {
        return Err(OUTER.err(
            "warmup_iterations",
            format!(
                "must be below outer.iterations ({}), got {}",
                outer.iterations, outer.warmup_iterations
            ),
        ));
    }
    let f = outer.warmup_start_factor;
    if !(f > 0.0 && f <= 1.0) {
        return Err(OUTER.err("warmup_start_factor", format!("must be in (0, 1], got {f}")));
    }
    if outer.schedule == Schedule::Linear && outer.min_lr > outer.lr {
        return Err(OUTER.err(
            "min_lr",
            format!(
                "must be <= outer.lr ({}) with the linear schedule, got {}",
                outer.lr, outer.min_lr
            ),
        ));
    }
    if outer.step_every == 0 {
        return Err(OUTER.err("step_every", "must be >= 1, got 0"));
    }
    if !(outer.gamma.is_finite() && outer.gamma > 0.0) {
        return Err(OUTER.err(
            "gamma",
            format!("must be finite and > 0, got {}", outer.gamma),
        ));
    }
    Ok(())
}

/// Sets each option of `$o` that is given, with the setter of the same name.
macro_rules! with {
    ($opt:expr, $o:ident, [$($field:ident),*], [$($pair:ident),*]) => {{
        let mut o = $opt;
        $(if let Some(v) = $o.$field { o = o.$field(v); })*
        $(if let Some([a, b]) = $o.$pair { o = o.$pair(a, b); })*
        Box::new(o)
    }};
}

/// The optimizer of `outer` (fused kernels when `fused`), at its base learning rate.
pub(crate) fn build_outer(outer: &OuterConfig, fused: bool) -> Box<dyn Optimizer> {
    build(outer.optimizer, outer.lr, &outer.options(), fused)
}

/// The inner optimizer of `a` (fused kernels when `fused`): `algorithm.inner_optimizer` at
/// `inner_lr`, with `inner_options` and, for sgd and rmsprop, `inner_momentum`.
pub fn build_inner(a: &AlgorithmConfig, fused: bool) -> Box<dyn Optimizer> {
    build(a.inner_optimizer, a.inner_lr, &inner_options(a), fused)
}

/// The inner options with the momentum of `algorithm.inner_momentum` where the optimizer has
/// one.
fn inner_options(a: &AlgorithmConfig) -> OptimizerOptions {
    let mut o = a.inner_options.clone().unwrap_or_default();
    if a.inner_optimizer.has_momentum() {
        o.momentum = Some(a.inner_momentum);
    }
    o
}

/// `optimizer` at rate `lr` with the options `o` (fused kernels when `fused`).
fn build(
    optimizer: OptimizerName,
    lr: f64,
    o: &OptimizerOptions,
    fused: bool,
) -> Box<dyn Optimizer> {
    match optimizer {
        OptimizerName::Sgd => with!(
            Sgd::new(lr).fused(fused),
            o,
            [momentum, dampening, weight_decay, nesterov],
            []
        ),
        OptimizerName::Adam => with!(
            Adam::new(lr).fused(fused),
            o,
            [eps, weight_decay, amsgrad],
            [betas]
        ),
        OptimizerName::Adamw => with!(
            AdamW::new(lr).fused(fused),
            o,
            [eps, weight_decay, amsgrad],
            [betas]
        ),
        OptimizerName::Adamax => with!(
            Adamax::new(lr).fused(fused),
            o,
            [eps, weight_decay],
            [betas]
        ),
        OptimizerName::Adagrad => with!(
            Adagrad::new(lr).fused(fused),
            o,
            [lr_decay, weight_decay, initial_accumulator_value, eps],
            []
        ),
        OptimizerName::Adadelta => with!(
            Adadelta::new(lr).fused(fused),
            o,
            [rho, eps, weight_decay],
            []
        ),
        OptimizerName::Rmsprop => with!(
            RMSprop::new(lr).fused(fused),
            o,
            [alpha, eps, weight_decay, momentum, centered],
            []
        ),
        OptimizerName::Rprop => with!(Rprop::new(lr).fused(fused), o, [], [etas, step_sizes]),
        OptimizerName::Radam => with!(
            RAdam::new(lr).fused(fused),
            o,
            [eps, weight_decay, decoupled_weight_decay],
            [betas]
        ),
    }
}
