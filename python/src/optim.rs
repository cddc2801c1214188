//! A `torch.optim` optimizer's class name, hyperparameters (metaloop's names, tuples split) and
//! boolean options as one of the runtime's differentiable optimizers.

use std::collections::HashMap;

use metaloop_runtime::optim::{
    Adadelta, Adagrad, Adam, AdamW, Adamax, Optimizer, RAdam, RMSprop, Rprop, Sgd,
};
use pyo3::PyResult;

use crate::errors::bad;

/// The optimizer `name` ("SGD", "Adam", ...) with `hp` for its hyperparameters (torch's
/// defaults for those missing) and `options` ("nesterov", "amsgrad", "centered").
pub fn build(
    name: &str,
    hp: &HashMap<String, f64>,
    options: &HashMap<String, bool>,
) -> PyResult<Box<dyn Optimizer>> {
    let lr = *hp
        .get("lr")
        .ok_or_else(|| bad(format!("{name}: the learning rate `lr` is missing")))?;
    let unknown = |what: &str, key: &str| bad(format!("{name}: unknown {what} `{key}`"));
    // The optimizer at `lr` with every hyperparameter and option given.
    macro_rules! make {
        ($t:ty, [$($h:ident),*], [$($o:ident),*]) => {{
            let mut opt = <$t>::new(lr);
            for (key, value) in hp {
                match key.as_str() {
                    "lr" => {}
                    $(stringify!($h) => opt.$h = *value,)*
                    other => return Err(unknown("hyperparameter", other)),
                }
            }
            for (key, value) in options {
                match key.as_str() {
                    $(stringify!($o) => opt.$o = *value,)*
                    _ if !*value => {}
                    other => return Err(unknown("option", other)),
                }
            }
            Box::new(opt) as Box<dyn Optimizer>
        }};
    }
    Ok(match name {
        "SGD" => make!(Sgd, [momentum, dampening, weight_decay], [nesterov]),
        "Adam" => make!(Adam, [beta1, beta2, eps, weight_decay], [amsgrad]),
        "AdamW" => make!(AdamW, [beta1, beta2, eps, weight_decay], [amsgrad]),
        "Adamax" => make!(Adamax, [beta1, beta2, eps, weight_decay], []),
        "RAdam" => make!(
            RAdam,
            [beta1, beta2, eps, weight_decay],
            [decoupled_weight_decay]
        ),
        "Adagrad" => make!(
            Adagrad,
            [lr_decay, weight_decay, initial_accumulator_value, eps],
            []
        ),
        "RMSprop" => make!(RMSprop, [alpha, eps, weight_decay, momentum], [centered]),
        "Adadelta" => make!(Adadelta, [rho, eps, weight_decay], []),
        "Rprop" => make!(
            Rprop,
            [eta_minus, eta_plus, step_size_min, step_size_max],
            []
        ),
        other => {
            return Err(bad(format!(
                "optimizer `{other}` is not supported (expected one of SGD, Adam, AdamW, Adamax, RAdam, Adagrad, RMSprop, Adadelta, Rprop)"
            )))
        }
    })
}
