//! The meta-learning algorithms, one file each, behind the [`Algorithm`] trait.
//!
//! Every algorithm reduces to a meta-gradient over one flat vector of meta-parameters (the initial
//! weights θ0, then every learned inner hyperparameter). An algorithm says which inner
//! hyperparameters it learns ([`Algorithm::learned`]), which parameters its inner loop leaves
//! alone ([`Algorithm::frozen`]) and how a chunk of tasks contributes to the meta-gradient
//! ([`Algorithm::meta_gradient`]); the Trainer does the rest (sampling, workers, the all-reduce,
//! the outer step). The support steps are [`adapt`], shared by every algorithm and by evaluation.
//!
//! - [`maml`]: second-order MAML (and first-order `fomaml`), MAML++'s multi-step loss, and the
//!   recompute-and-adjoint path (`algorithm.memory = "recompute"`).
//! - [`metasgd`]: one learned learning rate per element (Li et al. 2017).
//! - [`anil`]: only the head adapts (Raghu et al. 2020).
//! - [`reptile`]: the meta-gradient is θ0 − φ (Nichol et al. 2018).
//! - [`pretrain`]: the joint-training baseline, no inner loop.
//! - [`lslr`]: MAML++'s per-layer, per-step learned inner learning rates (Antoniou et al. 2019).
//! - [`imaml`]: implicit gradients at a proximal inner solution (Rajeswaran et al. 2019).
//!
//! Adding an algorithm: a file here, a variant of `config::AlgorithmName`, a line in [`build`].
//! This module never prints and never touches files.

mod base;

pub mod anil;
pub mod imaml;
pub mod lslr;
pub mod maml;
pub mod metasgd;
pub mod pretrain;
pub mod reptile;

#[cfg(test)]
mod inner_optimizer_tests;
#[cfg(test)]
mod tests;

pub use base::{
    adapt, gradients, per_tensor_hparams, query_losses, Algorithm, BnMode, Contribution, Learned,
    MetaGrad, Opts, Shard,
};

use crate::config::AlgorithmName;

/// The algorithm a config names.
pub fn build(name: AlgorithmName) -> Box<dyn Algorithm> {
    match name {
        AlgorithmName::Maml => Box::new(maml::Maml { first_order: false }),
        AlgorithmName::Fomaml => Box::new(maml::Maml { first_order: true }),
        AlgorithmName::Metasgd => Box::new(metasgd::MetaSgd),
        AlgorithmName::Anil => Box::new(anil::Anil),
        AlgorithmName::Reptile => Box::new(reptile::Reptile),
        AlgorithmName::Pretrain => Box::new(pretrain::Pretrain),
        AlgorithmName::Lslr => Box::new(lslr::Lslr),
        AlgorithmName::Imaml => Box::new(imaml::Imaml),
    }
}
