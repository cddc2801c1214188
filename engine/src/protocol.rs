//! The evaluation protocol: the ways and shots of validation and meta-test tasks (`eval.ways`,
//! `eval.shots`; 0 = training's), and the classifier head for another number of ways than the
//! model was trained on.
//!
//! A head trained on N ways is tied to the arbitrary labels 0..N of the training tasks, so an
//! evaluation on M ways starts from a head of M rows that are all zero, weights and biases (the
//! "zero trick" of Triantafillou et al. 2020, Meta-Dataset, and Ye & Chao 2022, UNICORN-MAML).
//! Zero is the canonical choice among equal rows: with every row equal, the softmax is uniform,
//! and the body's gradient and every later prediction after plain SGD steps (with or without
//! momentum, with per-element rates) depend only on the rows' differences, which start at zero
//! whatever the common row is. The body keeps θ0 as trained. A learned per-element inner rate
//! (Meta-SGD's `lr`, θ0's shape) gives every new head row the mean of the trained rows' rates;
//! per-tensor and per-step rates apply unchanged (the new head has the same tensors).
//!
//! When `eval.ways` is the trained number of ways nothing changes: θ0 as trained. This module
//! never prints.

use std::sync::Arc;

use metaloop_runtime::nn::Module;
use metaloop_runtime::{Layout, Params};
use tch::Tensor;

use crate::algorithms::Learned;
use crate::config::{ConfigError, TrainConfig};
use crate::data::TaskSource;
use crate::setup;
use crate::{Error, Result};

/// The tasks and the model that validation and meta-test use.
pub(crate) struct EvalProtocol {
    /// Classes per evaluation task (classification); `None` for regression.
    pub(crate) ways: Option<usize>,
    /// Support examples per class (classification) or support points (regression).
    pub(crate) shots: usize,
    /// Where evaluation tasks come from: the training source itself when the shapes agree.
    pub(crate) source: Arc<dyn TaskSource>,
    /// The model with an `eval.ways`-wide head, when that is not the trained width.
    head: Option<EvalHead>,
}

/// The evaluation model of another number of ways.
struct EvalHead {
    model: Box<dyn Module>,
    layout: Arc<Layout>,
    /// The head's parameters (the last module's, as `model.init_from` treats them).
    names: Vec<String>,
}

/// θ0 and the learned inner hyperparameters of the evaluation model, for one evaluation.
pub(crate) struct EvalWeights<'a> {
    pub(crate) model: &'a dyn Module,
    pub(crate) theta: Params,
    pub(crate) learned: Vec<Learned>,
}

impl EvalProtocol {
    /// The protocol of `cfg` over the training `source`; `own_model` is false when the caller
    /// brought the model (it cannot be rebuilt with another head). An `eval.ways` or
    /// `eval.shots` that the val or test split cannot serve is a config error naming the key.
    pub(crate) fn new(
        cfg: &TrainConfig,
        source: &Arc<dyn TaskSource>,
        own_model: bool,
    ) -> Result<EvalProtocol> {
        let shots = cfg.eval_shots();
        let ways = cfg.is_classification().then(|| cfg.eval_ways());
        let trained_ways = cfg.task.ways as usize;
        let reshape = shots != cfg.task.shots as usize || ways.is_some_and(|w| w != trained_ways);
        let source = if reshape {
            source.reshaped(ways.unwrap_or(1), shots).map_err(keyed)?
        } else {
            source.clone()
        };
        let head = match ways {
            Some(w) if w != trained_ways => {
                let channels = source.input_shape().first().copied().unwrap_or(1);
                Some(EvalHead::new(cfg, w, channels, own_model)?)
            }
            _ => None,
        };
        Ok(EvalProtocol {
            ways,
            shots,
            source,
            head,
        })
    }

    /// The evaluation model's weights from the trained θ0 and learned hyperparameters: `None`
    /// when the evaluation uses the trained model itself.
    pub(crate) fn weights(
        &self,
        theta: &Params,
        learned: &[Learned],
    ) -> Result<Option<EvalWeights<'_>>> {
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let opts = (theta.kind(), theta.device());
        let zeros = |_: &Tensor, shape: &[i64]| Ok(Tensor::f_zeros(shape, opts)?);
        let flat = head.remap(theta, zeros)?;
        let per_element = [theta.layout().numel()];
        let learned = learned
            .iter()
            .map(|h| {
                if h.per_step || h.tensor.size() != per_element {
                    return Ok(h.shallow_clone());
                }
                let trained = Params::from_flat(theta.layout().clone(), h.tensor.f_detach()?)?;
                Ok(Learned {
                    name: h.name.clone(),
                    tensor: head.remap(&trained, mean_row)?,
                    per_step: false,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(EvalWeights {
            model: head.model.as_ref(),
            theta: Params::from_flat(head.layout.clone(), flat)?,
            learned,
        }))
    }
}

/// Every new head row takes the mean of the trained rows (dimension 0 is the class).
fn mean_row(trained: &Tensor, shape: &[i64]) -> Result<Tensor> {
    let kind = trained.kind();
    Ok(trained
        .f_mean_dim(Some([0i64].as_slice()), true, kind)?
        .f_expand(shape, false)?
        .f_contiguous()?)
}

/// A data error of the evaluation split, as the config key that asked for it.
fn keyed(e: Error) -> Error {
    let key = match &e {
        Error::TooFewClasses { .. } => "eval.ways",
        Error::TooFewImages { .. } | Error::InvalidSetting { .. } => "eval.shots",
        _ => return e,
    };
    Error::Config(ConfigError {
        key: key.into(),
        message: e.to_string(),
    })
}

impl EvalHead {
    fn new(cfg: &TrainConfig, ways: usize, channels: i64, own_model: bool) -> Result<EvalHead> {
        if !own_model {
            return Err(Error::Config(ConfigError {
                key: "eval.ways".into(),
                message: format!(
                    "{ways} ways need a head of {ways} outputs, which only a backbone built from model.backbone gets; a model given to TrainerBuilder::model evaluates on task.ways ({}) only",
                    cfg.task.ways
                ),
            }));
        }
        let mut c = cfg.clone();
        c.task.ways = ways as i64;
        let model = setup::build_model(&c, channels)?;
        let layout = Arc::new(model.layout()?);
        let names = setup::head_names(&layout);
        Ok(EvalHead {
            model,
            layout,
            names,
        })
    }

    /// A flat `[P]` of this head's layout: the head's tensors from `fill(trained tensor, new
    /// shape)`, every other tensor copied (detached) from `trained`, whose shape it must have.
    fn remap(
        &self,
        trained: &Params,
        fill: impl Fn(&Tensor, &[i64]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(self.layout.len());
        for spec in self.layout.specs() {
            let old = trained.get(&spec.name)?.f_detach()?;
            let new = if self.names.contains(&spec.name) {
                fill(&old, &spec.shape)?
            } else if old.size() == spec.shape {
                old
            } else {
                return Err(Error::InvalidSetting {
                    what: "eval.ways",
                    reason: format!(
                        "`{}` has shape {:?} in the trained model, {:?} in the evaluation one (only the head may differ)",
                        spec.name,
                        old.size(),
                        spec.shape
                    ),
                });
            };
            parts.push(new.f_reshape([-1])?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backbone, TaskKind};
    use crate::data::Sinusoid;
    use tch::{Device, Kind};

    /// A 7-way evaluation of a 5-way Conv-4: the head's rows and biases are zero, every other
    /// tensor is θ0 as trained; a per-element learned rate gives each new head row the mean of
    /// the trained rows' rates, and a per-tensor rate is kept as it is.
    #[test]
    fn the_evaluation_head_starts_at_zero_with_the_mean_rates_of_the_trained_rows() {
        let mut cfg = TrainConfig::default();
        cfg.task.kind = TaskKind::Folder;
        cfg.task.ways = 5;
        cfg.model.backbone = Backbone::Conv4;
        cfg.model.filters = 4;
        let trained = setup::build_model(&cfg, 3).unwrap();
        let theta = Params::init(trained.as_ref(), 1, Kind::Double, Device::Cpu).unwrap();
        let numel = theta.layout().numel();
        let groups = theta.layout().len() as i64;
        let opts = (Kind::Double, Device::Cpu);
        let lr = Tensor::f_rand([numel], opts).unwrap();
        let per_tensor = Tensor::f_rand([groups], opts).unwrap();
        let learned = vec![
            Learned {
                name: "lr".into(),
                tensor: lr.shallow_clone(),
                per_step: false,
            },
            Learned {
                name: "momentum".into(),
                tensor: per_tensor.shallow_clone(),
                per_step: false,
            },
        ];
        let protocol = EvalProtocol {
            ways: Some(7),
            shots: 1,
            source: Arc::new(Sinusoid::new(1, 1).unwrap()),
            head: Some(EvalHead::new(&cfg, 7, 3, true).unwrap()),
        };
        let w = protocol.weights(&theta, &learned).unwrap().unwrap();
        let head = setup::head_names(w.theta.layout());
        assert_eq!(head.len(), 2, "{head:?}");
        let trained_lr = Params::from_flat(theta.layout().clone(), lr).unwrap();
        let eval_lr = Params::from_flat(
            w.theta.layout().clone(),
            w.learned[0].tensor.shallow_clone(),
        )
        .unwrap();
        for (name, value) in w.theta.iter() {
            let old = theta.get(name).unwrap();
            if head.iter().any(|h| h == name) {
                assert_eq!(value.size()[0], 7, "{name}");
                assert_eq!(value.abs().max().double_value(&[]), 0.0, "{name}");
                let mean = trained_lr
                    .get(name)
                    .unwrap()
                    .mean_dim(0, true, Kind::Double);
                let rates = eval_lr.get(name).unwrap();
                for row in 0..7 {
                    assert!(rates.get(row).equal(&mean.get(0)), "{name} row {row}");
                }
            } else {
                assert!(value.equal(&old), "{name}");
                assert!(
                    eval_lr
                        .get(name)
                        .unwrap()
                        .equal(&trained_lr.get(name).unwrap()),
                    "{name}"
                );
            }
        }
        assert!(w.learned[1].tensor.equal(&per_tensor));
    }
}
