//! ResNet-12 (Lee et al. 2019, MetaOptNet; Oreshkin et al. 2018, TADAM), the standard few-shot
//! backbone, with MetaOptNet's PyTorch `state_dict` names so that its checkpoints and feature
//! extractors trained in PyTorch load by name.
//!
//! It is built from this module's layers (task-batched like them); it must not hold weights or
//! statistics.

use tch::Tensor;

use super::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, DropBlock, Dropout, LeakyRelu, Linear, MaxPool2d,
    Module, ParamDef, Scope,
};
use crate::Result;

/// The random layer after a block's pooling, if any.
#[derive(Clone, Copy, Debug)]
enum Regularizer {
    None,
    Dropout(Dropout),
    Block(DropBlock),
}

/// One ResNet-12 block (MetaOptNet's `BasicBlock` with its `downsample`): three 3×3
/// convolutions (padding 1, no bias), each followed by BatchNorm2d, with LeakyReLU(0.1) after
/// the first two; a 1×1 convolution (no bias) and BatchNorm2d on the shortcut; the sum through
/// LeakyReLU(0.1), then 2×2 max-pooling, then optional Dropout or DropBlock. Names: "conv1",
/// "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1".
#[derive(Clone, Debug)]
pub struct ResNetBlock {
    convs: [Conv2d; 3],
    bns: [BatchNorm2d; 3],
    shortcut: Conv2d,
    shortcut_bn: BatchNorm2d,
    act: LeakyRelu,
    drop: Regularizer,
}

impl ResNetBlock {
    pub fn new(in_channels: i64, out_channels: i64) -> ResNetBlock {
        let conv = |i| Conv2d::new(i, out_channels, 3).padding(1).no_bias();
        ResNetBlock {
            convs: [conv(in_channels), conv(out_channels), conv(out_channels)],
            bns: std::array::from_fn(|_| BatchNorm2d::new(out_channels)),
            shortcut: Conv2d::new(in_channels, out_channels, 1).no_bias(),
            shortcut_bn: BatchNorm2d::new(out_channels),
            act: LeakyRelu::new(0.1),
            drop: Regularizer::None,
        }
    }
}

/// `defs` with names prefixed by "`prefix`.".
fn prefixed(prefix: &str, defs: Vec<ParamDef>) -> impl Iterator<Item = ParamDef> + '_ {
    defs.into_iter().map(move |def| ParamDef {
        name: format!("{prefix}.{}", def.name),
        ..def
    })
}

impl Module for ResNetBlock {
    fn param_defs(&self) -> Vec<ParamDef> {
        let mut defs = Vec::new();
        for i in 0..3 {
            defs.extend(prefixed(
                &format!("conv{}", i + 1),
                self.convs[i].param_defs(),
            ));
            defs.extend(prefixed(&format!("bn{}", i + 1), self.bns[i].param_defs()));
        }
        defs.extend(prefixed("downsample.0", self.shortcut.param_defs()));
        defs.extend(prefixed("downsample.1", self.shortcut_bn.param_defs()));
        defs
    }

    /// `[B, C, H, W] -> [B, O, H/2, W/2]`; task-batched with a leading task dimension.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for i in 0..3 {
            let (conv, bn) = (&self.convs[i], &self.bns[i]);
            y = scope.child(&format!("conv{}", i + 1), |s| conv.forward_scoped(s, &y))?;
            y = scope.child(&format!("bn{}", i + 1), |s| bn.forward_scoped(s, &y))?;
            if i < 2 {
                y = self.act.apply(&y)?;
            }
        }
        let residual = scope.child("downsample", |s| -> Result<Tensor> {
            let r = s.child("0", |s| self.shortcut.forward_scoped(s, x))?;
            s.child("1", |s| self.shortcut_bn.forward_scoped(s, &r))
        })?;
        let y = self.act.apply(&y.f_add(&residual)?)?;
        let y = MaxPool2d::new(2).forward_scoped(scope, &y)?;
        scope.child("drop", |s| match &self.drop {
            Regularizer::None => Ok(y),
            Regularizer::Dropout(d) => d.forward_scoped(s, &y),
            Regularizer::Block(d) => d.forward_scoped(s, &y),
        })
    }
}

/// ResNet-12: four [`ResNetBlock`]s of widths `widths` (default 64-160-320-640), global average
/// pooling and a linear head. Names: "layer1.0.conv1.weight", ..., "layer4.0.downsample.1.bias"
/// (MetaOptNet's `resnet12()` backbone) and "classifier.weight", "classifier.bias" (learn2learn's
/// head name). PyTorch equivalent: MetaOptNet's `ResNet` with `keep_avg_pool` (its
/// `AvgPool2d(5)` on 84×84 inputs is this global average pooling) followed by
/// `classifier = nn.Linear(widths[3], ways)`. Parameters use PyTorch's default initialisation
/// (MetaOptNet draws its convolutions with Kaiming normal; load those weights with
/// [`super::load_starting_weights`]).
///
/// Regularisation as in MetaOptNet, off unless [`ResNet12::dropblock`] is called: Dropout in
/// blocks 1 and 2, DropBlock in blocks 3 and 4, both after the pooling.
#[derive(Clone, Debug)]
pub struct ResNet12 {
    blocks: [ResNetBlock; 4],
    pool: AdaptiveAvgPool2d,
    classifier: Linear,
}

impl ResNet12 {
    /// The default widths, 64-160-320-640 (Lee et al. 2019).
    pub const WIDTHS: [i64; 4] = [64, 160, 320, 640];

    /// Block widths `widths`, `ways` outputs, `in_channels` input channels (3 for RGB).
    pub fn new(widths: [i64; 4], ways: i64, in_channels: i64) -> ResNet12 {
        let ins = [in_channels, widths[0], widths[1], widths[2]];
        ResNet12 {
            blocks: std::array::from_fn(|i| ResNetBlock::new(ins[i], widths[i])),
            pool: AdaptiveAvgPool2d::new(1),
            classifier: Linear::new(widths[3], ways),
        }
    }

    /// Adds MetaOptNet's regularisation: Dropout(`drop_rate`) after blocks 1 and 2,
    /// DropBlock(`drop_rate`, `block`) after blocks 3 and 4 (MetaOptNet: 0.1 and 5). Training
    /// then needs task seeds ([`Module::forward_seeded`]).
    pub fn dropblock(mut self, drop_rate: f64, block: i64) -> Result<ResNet12> {
        let dropout = Dropout::new(drop_rate)?;
        let dropblock = DropBlock::new(drop_rate, block)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let drop = if i < 2 {
                Regularizer::Dropout(dropout)
            } else {
                Regularizer::Block(dropblock)
            };
            b.drop = drop;
        }
        Ok(self)
    }

    /// MAML++'s per-step BatchNorm ([`BatchNorm2d::per_step`]) in every block: each
    /// BatchNorm's "weight" and "bias" become `[steps, C]`.
    pub fn per_step_batchnorm(mut self, steps: i64) -> ResNet12 {
        for b in &mut self.blocks {
            for bn in &mut b.bns {
                *bn = bn.clone().per_step(steps);
            }
            b.shortcut_bn = b.shortcut_bn.clone().per_step(steps);
        }
        self
    }

    /// The head's parameter names (what a starting-weights file may lack or have at another
    /// number of ways).
    pub fn head_names(&self) -> Vec<String> {
        self.classifier
            .param_defs()
            .into_iter()
            .map(|d| format!("classifier.{}", d.name))
            .collect()
    }
}

impl Module for ResNet12 {
    fn param_defs(&self) -> Vec<ParamDef> {
        let mut defs = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            defs.extend(prefixed(&format!("layer{}.0", i + 1), block.param_defs()));
        }
        defs.extend(prefixed("classifier", self.classifier.param_defs()));
        defs
    }

    /// `[B, C, H, W] -> [B, ways]`; task-batched `[T, B, C, H, W] -> [T, B, ways]`. H and W must
    /// be at least 16 (four 2×2 poolings).
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            y = scope.child(&format!("layer{}", i + 1), |s| {
                s.child("0", |s| block.forward_scoped(s, &y))
            })?;
        }
        let y = self.pool.forward_scoped(scope, &y)?;
        // [.., C, 1, 1] -> [.., C]
        let y = y.f_flatten(-3, -1)?;
        scope.child("classifier", |s| self.classifier.forward_scoped(s, &y))
    }
}
