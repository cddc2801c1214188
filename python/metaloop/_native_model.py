"""Which PyTorch modules metaloop runs natively: a module built only of layers the Rust runtime has
(and nn.Sequential of them), described as JSON for metaloop._native. Anything else (a custom
forward, hooks, options the runtime lacks) returns None and runs through torch.func.functional_call.
"""
import json

import torch.nn as nn


def describe(module):
    """The JSON description of `module`, or None when it cannot run natively."""
    spec = _layer(module)
    return None if spec is None else json.dumps(spec)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _square(v):
    a, b = _pair(v)
    return a if a == b and isinstance(a, int) else None


def _hooked(m):
    return any(getattr(m, attr, None) for attr in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
        "_forward_hooks_with_kwargs"))


def _layer(m):
    if _hooked(m):
        return None
    describe_layer = _LAYERS.get(type(m))
    return None if describe_layer is None else describe_layer(m)


def _sequential(m):
    children = []
    for i, (name, child) in enumerate(m.named_children()):
        spec = _layer(child)
        if name != str(i) or spec is None:
            return None
        children.append(spec)
    return {"type": "sequential", "children": children}


def _linear(m):
    return {"type": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}


def _conv2d(m):
    k, s = _square(m.kernel_size), _square(m.stride)
    p = None if isinstance(m.padding, str) and m.padding != "valid" else (
        0 if m.padding == "valid" else _square(m.padding))
    if None in (k, s, p) or m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros":
        return None
    return {"type": "conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": k,
            "stride": s, "padding": p, "bias": m.bias is not None}


def _batchnorm2d(m):
    # The runtime normalises with the batch's statistics (track_running_stats=False).
    if m.track_running_stats or not m.affine:
        return None
    return {"type": "batchnorm2d", "channels": m.num_features, "eps": m.eps,
            "momentum": 0.1 if m.momentum is None else m.momentum}


def _maxpool2d(m):
    k, s = _square(m.kernel_size), _square(m.stride if m.stride is not None else m.kernel_size)
    if None in (k, s) or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) \
            or m.ceil_mode or m.return_indices:
        return None
    return {"type": "maxpool2d", "kernel": k, "stride": s}


def _avgpool2d(m):
    k = _square(m.kernel_size)
    s = _square(m.stride if m.stride is not None else m.kernel_size)
    p = _square(m.padding)
    if None in (k, s, p) or m.ceil_mode or not m.count_include_pad or m.divisor_override:
        return None
    return {"type": "avgpool2d", "kernel": k, "stride": s, "padding": p}


def _adaptive_avgpool2d(m):
    h, w = _pair(m.output_size)
    if not (isinstance(h, int) and isinstance(w, int)):
        return None
    return {"type": "adaptive_avgpool2d", "height": h, "width": w}


def _flatten(m):
    return {"type": "flatten"} if (m.start_dim, m.end_dim) == (1, -1) else None


_LAYERS = {
    nn.Sequential: _sequential,
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.BatchNorm2d: _batchnorm2d,
    nn.ReLU: lambda m: {"type": "relu"},
    nn.Tanh: lambda m: {"type": "tanh"},
    nn.LeakyReLU: lambda m: {"type": "leaky_relu", "slope": m.negative_slope},
    nn.MaxPool2d: _maxpool2d,
    nn.AvgPool2d: _avgpool2d,
    nn.AdaptiveAvgPool2d: _adaptive_avgpool2d,
    nn.Flatten: _flatten,
    nn.Dropout: lambda m: {"type": "dropout", "p": m.p},
}


def has_dropout(m):
    return any(isinstance(x, nn.Dropout) and x.p > 0 for x in m.modules())
