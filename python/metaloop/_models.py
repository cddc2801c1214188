"""PyTorch models out: `torch_model(config)` builds a plain torch.nn.Module for a config's backbone
(mlp, conv4, resnet12) whose state_dict names are metaloop's, so that
`model.load_state_dict(trainer.state_dict())` computes what metaloop computes.

BatchNorm normalises with the batch's statistics (track_running_stats=False), as metaloop's
training and meta-test do. Dropout and DropBlock (`model.dropblock`) are left out: the model is for
inference.
"""
import json

import torch.nn as nn

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
    if backbone == "conv4":
        return conv4(in_channels, task["ways"], model["filters"], task["image_size"])
    if backbone == "resnet12":
        return ResNet12(model["widths"], task["ways"], in_channels)
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


def _conv_block(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1),
                         nn.BatchNorm2d(o, track_running_stats=False),
                         nn.ReLU(), nn.MaxPool2d(2))


def conv4(in_channels, ways, filters, image_size):
    """MAML's Conv-4 (names "0.0.weight", "0.1.bias", ..., "5.weight")."""
    side = image_size
    blocks = []
    for c in [in_channels, filters, filters, filters]:
        blocks.append(_conv_block(c, filters))
        side //= 2
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters * side * side, ways))


class _Block(nn.Module):
    """One ResNet-12 block (MetaOptNet's BasicBlock with its downsample)."""

    def __init__(self, i, o):
        super().__init__()
        for k, c in enumerate([i, o, o], start=1):
            setattr(self, f"conv{k}", nn.Conv2d(c, o, 3, padding=1, bias=False))
            setattr(self, f"bn{k}", nn.BatchNorm2d(o, track_running_stats=False))
        self.downsample = nn.Sequential(nn.Conv2d(i, o, 1, bias=False),
                                        nn.BatchNorm2d(o, track_running_stats=False))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.pool(self.act(y + self.downsample(x)))


class ResNet12(nn.Module):
    """ResNet-12 (names "layer1.0.conv1.weight", ..., "classifier.bias")."""

    def __init__(self, widths, ways, in_channels):
        super().__init__()
        ins = [in_channels, *widths[:3]]
        for k in range(4):
            setattr(self, f"layer{k + 1}", nn.Sequential(_Block(ins[k], widths[k])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], ways)

    def forward(self, x):
        for k in range(4):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.classifier(self.pool(x).flatten(1))
