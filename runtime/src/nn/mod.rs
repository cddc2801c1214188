//! Functional, task-batched layers: a model holds its structure only; its weights live in a
//! [`Params`](crate::Params) passed to every forward call, so the same model runs at θ0 and at every adapted θ.
//!
//! Parameter names follow PyTorch's `state_dict` for the equivalent `torch.nn` module. With
//! `[T, P]` parameters, inputs are `[T, B, ...]` and one call runs all T tasks, each with its own
//! weights and its own BatchNorm statistics. This module must not hold parameter values,
//! optimizer state or anything that depends on datasets; its only mutable state is the optional,
//! caller-owned [`BnState`].

mod batchnorm;
mod block;
mod bn_state;
mod conv;
mod dropout;
mod layers;
mod linear;
mod module;
mod resnet;
mod sequential;
mod shared;
mod starting;

pub use batchnorm::BatchNorm2d;
pub use block::ConvBlock;
pub use bn_state::BnState;
pub use conv::{Conv2d, MaxPool2d};
pub use dropout::{DropBlock, Dropout};
pub use layers::{AdaptiveAvgPool2d, AvgPool2d, Flatten, LayerNorm, LeakyRelu, Relu, Tanh};
pub use linear::Linear;
pub use module::{Module, Scope};
pub use resnet::{ResNet12, ResNetBlock};
pub use sequential::{conv4, conv4_sized, conv4_steps, mlp, Sequential};
pub use shared::{set_channels_last, set_conv_tasks, ConvTasks};
pub use starting::{load_starting_weights, StartingWeights};

pub use crate::params::{Init, ParamDef};
