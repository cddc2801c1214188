//! [`Sequential`] containers and the stock models built from the layers: [`mlp`], MAML's
//! [`conv4`]. Above every layer; nothing below imports it.

use tch::Tensor;

use super::{ConvBlock, Flatten, Linear, Module, ParamDef, Relu, Scope};
use crate::Result;

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
    conv4_steps(in_channels, ways, filters, image_hw, None)
}

/// [`conv4_sized`] with MAML++'s per-step BatchNorm ([`ConvBlock::per_step_batchnorm`]) when
/// `steps` is given: every block's "weight" and "bias" become `[steps, filters]`.
pub fn conv4_steps(
    in_channels: i64,
    ways: i64,
    filters: i64,
    image_hw: i64,
    steps: Option<i64>,
) -> Sequential {
    let mut model = Sequential::new();
    let mut channels = in_channels;
    let mut side = image_hw;
    for _ in 0..4 {
        let block = ConvBlock::new(channels, filters);
        model = model.push(match steps {
            Some(s) => block.per_step_batchnorm(s),
            None => block,
        });
        channels = filters;
        side /= 2;
    }
    model
        .push(Flatten)
        .push(Linear::new(filters * side * side, ways))
}
