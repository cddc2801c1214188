//! The outer optimizer's options under `[outer]` (torch.optim's names): which optimizer takes
//! which, their checks, and the runtime::optim optimizer they build. An option left out takes
//! torch.optim's default for the chosen optimizer. Nothing here prints or reads files.

use metaloop_runtime::optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, Optimizer, RAdam, RMSprop, Rprop, Sgd,
};

use crate::config::{ConfigError, OuterConfig, OuterOptimizer, Schedule};

/// The options `optimizer` takes, torch.optim's keyword arguments after `lr`.
pub fn options(optimizer: OuterOptimizer) -> &'static [&'static str] {
    match optimizer {
        OuterOptimizer::Sgd => &["momentum", "dampening", "weight_decay", "nesterov"],
        OuterOptimizer::Adam | OuterOptimizer::Adamw => {
            &["betas", "eps", "weight_decay", "amsgrad"]
        }
        OuterOptimizer::Adamax => &["betas", "eps", "weight_decay"],
        OuterOptimizer::Adagrad => &[
            "lr_decay",
            "weight_decay",
            "initial_accumulator_value",
            "eps",
        ],
        OuterOptimizer::Adadelta => &["rho", "eps", "weight_decay"],
        OuterOptimizer::Rmsprop => &["alpha", "eps", "weight_decay", "momentum", "centered"],
        OuterOptimizer::Rprop => &["etas", "step_sizes"],
        OuterOptimizer::Radam => &["betas", "eps", "weight_decay", "decoupled_weight_decay"],
    }
}

/// The options that `outer` sets, by name.
fn set_options(outer: &OuterConfig) -> Vec<&'static str> {
    let set = [
        ("momentum", outer.momentum.is_some()),
        ("dampening", outer.dampening.is_some()),
        ("nesterov", outer.nesterov.is_some()),
        ("weight_decay", outer.weight_decay.is_some()),
        ("betas", outer.betas.is_some()),
        ("eps", outer.eps.is_some()),
        ("amsgrad", outer.amsgrad.is_some()),
        ("lr_decay", outer.lr_decay.is_some()),
        (
            "initial_accumulator_value",
            outer.initial_accumulator_value.is_some(),
        ),
        ("rho", outer.rho.is_some()),
        ("alpha", outer.alpha.is_some()),
        ("centered", outer.centered.is_some()),
        ("etas", outer.etas.is_some()),
        ("step_sizes", outer.step_sizes.is_some()),
        (
            "decoupled_weight_decay",
            outer.decoupled_weight_decay.is_some(),
        ),
    ];
    set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect()
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: format!("outer.{key}"),
        message: message.into(),
    }
}

/// Checks `outer`'s optimizer options (each one the optimizer takes, in torch's ranges), its
/// schedule and its clipping.
pub(crate) fn validate(outer: &OuterConfig) -> Result<(), ConfigError> {
    let allowed = options(outer.optimizer);
    if let Some(bad) = set_options(outer)
        .into_iter()
        .find(|n| !allowed.contains(n))
    {
        return Err(err(
            bad,
            format!(
                "not an option of outer.optimizer = \"{}\" (its options: {})",
                outer.optimizer,
                allowed.join(", ")
            ),
        ));
    }
    let scalars = [
        ("momentum", outer.momentum),
        ("dampening", outer.dampening),
        ("weight_decay", outer.weight_decay),
        ("eps", outer.eps),
        ("lr_decay", outer.lr_decay),
        ("initial_accumulator_value", outer.initial_accumulator_value),
        ("alpha", outer.alpha),
        ("min_lr", Some(outer.min_lr)),
        ("clip_grad_norm", Some(outer.clip_grad_norm)),
    ];
    for (key, value) in scalars {
        if let Some(v) = value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(err(key, format!("must be finite and >= 0, got {v}")));
        }
    }
    if let Some(rho) = outer.rho.filter(|r| !(0.0..=1.0).contains(r)) {
        return Err(err("rho", format!("must be in [0, 1], got {rho}")));
    }
    if let Some([b1, b2]) = outer.betas {
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(err("betas", format!("must be in [0, 1), got [{b1}, {b2}]")));
        }
    }
    if let Some([minus, plus]) = outer.etas {
        if !(0.0 < minus && minus < 1.0 && 1.0 < plus && plus.is_finite()) {
            return Err(err(
                "etas",
                format!("must be 0 < etas[0] < 1 < etas[1], got [{minus}, {plus}]"),
            ));
        }
    }
    if let Some([low, high]) = outer.step_sizes {
        if !(0.0 <= low && low <= high && high.is_finite()) {
            return Err(err(
                "step_sizes",
                format!("must be 0 <= step_sizes[0] <= step_sizes[1], got [{low}, {high}]"),
            ));
        }
    }
    if outer.nesterov == Some(true)
        && (outer.momentum.unwrap_or(0.0) <= 0.0 || outer.dampening.unwrap_or(0.0) != 0.0)
    {
        return Err(err(
            "nesterov",
            "needs outer.momentum > 0 and outer.dampening = 0",
        ));
    }
    validate_schedule(outer)
}

fn validate_schedule(outer: &OuterConfig) -> Result<(), ConfigError> {
    if outer.warmup_iterations >= outer.iterations {
        return Err(err(
            "warmup_iterations",
            format!(
                "must be below outer.iterations ({}), got {}",
                outer.iterations, outer.warmup_iterations
            ),
        ));
    }
    let f = outer.warmup_start_factor;
    if !(f > 0.0 && f <= 1.0) {
        return Err(err(
            "warmup_start_factor",
            format!("must be in (0, 1], got {f}"),
        ));
    }
    if outer.schedule == Schedule::Linear && outer.min_lr > outer.lr {
        return Err(err(
            "min_lr",
            format!(
                "must be <= outer.lr ({}) with the linear schedule, got {}",
                outer.lr, outer.min_lr
            ),
        ));
    }
    if outer.step_every == 0 {
        return Err(err("step_every", "must be >= 1, got 0"));
    }
    if !(outer.gamma.is_finite() && outer.gamma > 0.0) {
        return Err(err(
            "gamma",
            format!("must be finite and > 0, got {}", outer.gamma),
        ));
    }
    Ok(())
}

/// Sets each option of `$outer` that is given, with the setter of the same name.
macro_rules! with {
    ($opt:expr, $outer:ident, [$($field:ident),*], [$($pair:ident),*]) => {{
        let mut o = $opt;
        $(if let Some(v) = $outer.$field { o = o.$field(v); })*
        $(if let Some([a, b]) = $outer.$pair { o = o.$pair(a, b); })*
        Box::new(o)
    }};
}

/// The optimizer of `outer` (fused kernels when `fused`), at its base learning rate.
pub(crate) fn build(outer: &OuterConfig, fused: bool) -> Box<dyn Optimizer> {
    let lr = outer.lr;
    match outer.optimizer {
        OuterOptimizer::Sgd => with!(
            Sgd::new(lr).fused(fused),
            outer,
            [momentum, dampening, weight_decay, nesterov],
            []
        ),
        OuterOptimizer::Adam => with!(
            Adam::new(lr).fused(fused),
            outer,
            [eps, weight_decay, amsgrad],
            [betas]
        ),
        OuterOptimizer::Adamw => with!(
            AdamW::new(lr).fused(fused),
            outer,
            [eps, weight_decay, amsgrad],
            [betas]
        ),
        OuterOptimizer::Adamax => with!(
            Adamax::new(lr).fused(fused),
            outer,
            [eps, weight_decay],
            [betas]
        ),
        OuterOptimizer::Adagrad => with!(
            Adagrad::new(lr).fused(fused),
            outer,
            [lr_decay, weight_decay, initial_accumulator_value, eps],
            []
        ),
        OuterOptimizer::Adadelta => with!(
            Adadelta::new(lr).fused(fused),
            outer,
            [rho, eps, weight_decay],
            []
        ),
        OuterOptimizer::Rmsprop => with!(
            RMSprop::new(lr).fused(fused),
            outer,
            [alpha, eps, weight_decay, momentum, centered],
            []
        ),
        OuterOptimizer::Rprop => with!(Rprop::new(lr).fused(fused), outer, [], [etas, step_sizes]),
        OuterOptimizer::Radam => with!(
            RAdam::new(lr).fused(fused),
            outer,
            [eps, weight_decay, decoupled_weight_decay],
            [betas]
        ),
    }
}
