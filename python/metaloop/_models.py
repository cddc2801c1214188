"""PyTorch models out: `torch_model(config)` builds a plain torch.nn.Module for a config's backbone
(mlp, conv4, resnet12) whose state_dict names are metaloop's, so that
`model.load_state_dict(trainer.state_dict())` computes what metaloop computes.

BatchNorm normalises with the batch's statistics (track_running_stats=False), as metaloop's
training and meta-test do. With `model.per_step_batchnorm` (MAML++'s BNWB) every BatchNorm is a
PerStepBatchNorm2d: one row of weight and bias per inner step, picked by its `step` attribute. Dropout and DropBlock (`model.dropblock`) are left out: the model is for
inference.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

# Input channels of each dataset kind (Omniglot is greyscale).
_CHANNELS = {"omniglot": 1}


def torch_model(config, in_channels=None):
    """A torch.nn.Module for the backbone of `config` (a metaloop.Config, or a metaloop.Trainer,
    whose input channels are then read from its parameters)."""
    trainer = None
    if hasattr(config, "state_dict") and hasattr(config, "config"):
        trainer, config = config, config.config
    cfg = json.loads(config.to_json())
    task, model = cfg["task"], cfg["model"]
    backbone = model["backbone"]
    if backbone == "mlp":
        return mlp([1, *model["hidden"], 1])
    if in_channels is None and trainer is not None:
        in_channels = _first_conv_channels(trainer.state_dict())
    if in_channels is None:
        in_channels = _CHANNELS.get(task["kind"], 3)
    # MAML++'s per-step BatchNorm: one row per training inner step.
    steps = cfg["algorithm"]["inner_steps"] if model.get("per_step_batchnorm") else None
    if backbone == "conv4":
        return conv4(in_channels, task["ways"], model["filters"], task["image_size"], steps)
    if backbone == "resnet12":
        return ResNet12(model["widths"], task["ways"], in_channels, steps)
    raise ValueError(f"model.backbone: no PyTorch model for \"{backbone}\"")


def _first_conv_channels(state):
    for value in state.values():
        if value.dim() == 4:
            return value.shape[1]
    return None


def mlp(sizes):
    """Linear layers of `sizes` with a ReLU between them (names "0.weight", "2.weight", ...)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class PerStepBatchNorm2d(nn.Module):
    """MAML++'s per-step BatchNorm weights and biases (BNWB; Antoniou et al. 2019): `weight` and
    `bias` are [steps, C]; a forward uses row min(step, steps - 1), the last row while `step` is
    None (the adapted model's). Statistics are the batch's own."""

    def __init__(self, channels, steps, eps=1e-5):
        super().__init__()
        self.steps, self.eps, self.step = steps, eps, None
        self.weight = nn.Parameter(torch.ones(steps, channels))
        self.bias = nn.Parameter(torch.zeros(steps, channels))

    def forward(self, x):
        row = self.steps - 1 if self.step is None else min(self.step, self.steps - 1)
        return F.batch_norm(x, None, None, self.weight[row], self.bias[row], training=True,
                            eps=self.eps)


def set_step(model, step):
    """Sets the inner step (0-based, or None for the last row) of every PerStepBatchNorm2d."""
    for m in model.modules():
        if isinstance(m, PerStepBatchNorm2d):
            m.step = step


def _batchnorm(channels, steps):
    if steps:
        return PerStepBatchNorm2d(channels, steps)
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _conv_block(i, o, steps=None):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), _batchnorm(o, steps),
                         nn.ReLU(), nn.MaxPool2d(2))


def conv4(in_channels, ways, filters, image_size, steps=None):
    """MAML's Conv-4 (names "0.0.weight", "0.1.bias", ..., "5.weight"); `steps`: per-step
    BatchNorm rows."""
    side = image_size
    blocks = []
    for c in [in_channels, filters, filters, filters]:
        blocks.append(_conv_block(c, filters, steps))
        side //= 2
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters * side * side, ways))


class _Block(nn.Module):
    """One ResNet-12 block (MetaOptNet's BasicBlock with its downsample)."""

    def __init__(self, i, o, steps=None):
        super().__init__()
        for k, c in enumerate([i, o, o], start=1):
            setattr(self, f"conv{k}", nn.Conv2d(c, o, 3, padding=1, bias=False))
            setattr(self, f"bn{k}", _batchnorm(o, steps))
        self.downsample = nn.Sequential(nn.Conv2d(i, o, 1, bias=False), _batchnorm(o, steps))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.pool(self.act(y + self.downsample(x)))


class ResNet12(nn.Module):
    """ResNet-12 (names "layer1.0.conv1.weight", ..., "classifier.bias")."""

    def __init__(self, widths, ways, in_channels, steps=None):
        super().__init__()
        ins = [in_channels, *widths[:3]]
        for k in range(4):
            setattr(self, f"layer{k + 1}", nn.Sequential(_Block(ins[k], widths[k], steps)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], ways)

    def forward(self, x):
        for k in range(4):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.classifier(self.pool(x).flatten(1))
