"""A torch.optim optimizer as metaloop's differentiable optimizer: its class, its hyperparameters
per param group (with higher's overrides applied), its options and its current state.

Hyperparameters that are one float for every group stay constants; anything else (a tensor, or
values that differ between groups) becomes one tensor, `[]` or `[P]` (one value per element of the
flat parameters), which the Rust runtime differentiates through, so a tensor's `.grad` after
`backward()` is its hypergradient.
"""
import torch

# torch.optim's group keys and metaloop's names for them (tuples split).
_KEYS = {
    "SGD": {"lr": ("lr",), "momentum": ("momentum",), "dampening": ("dampening",),
            "weight_decay": ("weight_decay",)},
    "Adam": {"lr": ("lr",), "betas": ("beta1", "beta2"), "eps": ("eps",),
             "weight_decay": ("weight_decay",)},
    "Adagrad": {"lr": ("lr",), "lr_decay": ("lr_decay",), "weight_decay": ("weight_decay",),
                "initial_accumulator_value": ("initial_accumulator_value",), "eps": ("eps",)},
    "RMSprop": {"lr": ("lr",), "alpha": ("alpha",), "eps": ("eps",),
                "weight_decay": ("weight_decay",), "momentum": ("momentum",)},
    "Adadelta": {"lr": ("lr",), "rho": ("rho",), "eps": ("eps",),
                 "weight_decay": ("weight_decay",)},
    "Rprop": {"lr": ("lr",), "etas": ("eta_minus", "eta_plus"),
              "step_sizes": ("step_size_min", "step_size_max")},
}
_KEYS["AdamW"] = _KEYS["Adam"]
_KEYS["Adamax"] = _KEYS["Adam"]
_KEYS["RAdam"] = _KEYS["Adam"]
_OPTIONS = {"SGD": ("nesterov",), "Adam": ("amsgrad",), "AdamW": ("amsgrad",),
            "RMSprop": ("centered",), "RAdam": ("decoupled_weight_decay",)}
# Options whose True metaloop's optimizers do not implement.
_REFUSED = ("maximize",)


def optimizer_name(opt):
    """torch.optim's class name of `opt` (its own class or the torch.optim class it derives from)."""
    for cls in type(opt).__mro__:
        if cls.__module__.startswith("torch.optim") and cls.__name__ in _KEYS:
            name = cls.__name__
            if name == "Adam" and opt.defaults.get("decoupled_weight_decay", False):
                return "AdamW"
            return name
    raise ValueError(
        f"optimizer {type(opt).__name__} is not supported "
        f"(expected a torch.optim optimizer: {', '.join(sorted(_KEYS))})")


def group_overrides(override, n_groups):
    """higher's `override` as one dict per param group."""
    groups = [{} for _ in range(n_groups)]
    for key, value in (override or {}).items():
        values = _as_list(value, n_groups)
        if len(values) not in (1, n_groups):
            raise ValueError(
                f"override `{key}`: {len(values)} values for {n_groups} param groups "
                "(expected one, or one per group)")
        for i, group in enumerate(groups):
            group[key] = values[0] if len(values) == 1 else values[i]
    return groups


def _as_list(value, n_groups):
    if isinstance(value, list):
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 1 and len(value) in (1, n_groups):
        return list(value)  # higher indexes a 1-d tensor: one element per group
    return [value]


class Resolver:
    """Turns per-group hyperparameters into metaloop's constants and tensor overrides."""

    def __init__(self, name, groups, layout, param_group, flat):
        self.name = name
        self.keys = _KEYS[name]
        self.groups = groups  # one dict per group: torch key -> value (float, tensor or tuple)
        self.layout = layout  # [(name, shape, numel)]
        self.param_group = param_group  # group index per parameter, None when in no group
        self.flat = flat

    def values(self, metaloop_name):
        """Each group's value of one of metaloop's hyperparameters."""
        for key, names in self.keys.items():
            if metaloop_name in names:
                out = []
                for group in self.groups:
                    v = group[key]
                    out.append(v[names.index(metaloop_name)] if len(names) > 1 else v)
                return out
        raise KeyError(metaloop_name)

    def names(self):
        return [n for names in self.keys.values() for n in names]

    def resolve(self, metaloop_name):
        """(constant, None) or (None, tensor) for one hyperparameter."""
        values = self.values(metaloop_name)
        floats = [v for v in values if not isinstance(v, torch.Tensor)]
        if len(floats) == len(values) and all(float(v) == float(floats[0]) for v in floats):
            return float(floats[0]), None
        first = values[0]
        if all(v is first for v in values) and isinstance(first, torch.Tensor) and first.numel() == 1:
            return None, first.reshape(())
        return None, self._per_element(metaloop_name, values)

    def _per_element(self, name, values):
        parts = []
        for (param, shape, numel), g in zip(self.layout, self.param_group):
            v = 0.0 if g is None else values[g]
            if isinstance(v, torch.Tensor):
                v = v.to(self.flat.dtype)
                if v.numel() == 1:
                    part = v.reshape(()).expand(numel)
                else:
                    try:
                        part = v.expand(shape).reshape(-1)
                    except RuntimeError:
                        raise ValueError(
                            f"hyperparameter `{name}`: a tensor of shape {list(v.shape)} is neither "
                            f"one value nor broadcastable to parameter `{param}` {shape}") from None
            else:
                part = torch.full((numel,), float(v), dtype=self.flat.dtype)
            parts.append(part.to(self.flat.device))
        return torch.cat(parts)

    def options(self):
        out = {}
        for key in _OPTIONS.get(self.name, ()):
            out[key] = self._uniform(key, False)
        for key in _REFUSED:
            if self._uniform(key, False):
                raise ValueError(f"{self.name}: {key}=True is not supported by metaloop")
        return out

    def _uniform(self, key, default):
        values = {bool(g.get(key, default)) for g in self.groups}
        if len(values) > 1:
            raise ValueError(f"{self.name}: `{key}` differs between param groups; metaloop needs one value")
        return values.pop()


def start_state(opt, params, frozen, flat):
    """The optimizer's current state as (step, [(buffer, flat tensor)]), or None before any."""
    states = [opt.state.get(p, {}) for p in params]
    if not any(states):
        return None
    steps = set()
    names = []
    for st, is_frozen in zip(states, frozen):
        if not st:
            if not is_frozen:
                raise ValueError("the optimizer has state for some parameters but not for others; "
                                 "metaloop starts every parameter from one state")
            continue
        buffers = [k for k, v in st.items() if k != "step" and isinstance(v, torch.Tensor)]
        steps.add(int(float(st["step"])) if "step" in st else (1 if buffers else 0))
        names.extend(b for b in buffers if b not in names)
    if len(steps) > 1:
        raise ValueError(f"the optimizer's parameters are at different steps {sorted(steps)}; "
                         "metaloop starts every parameter from one step")
    out = []
    for name in names:
        parts = []
        for p, st in zip(params, states):
            t = st.get(name)
            parts.append(torch.zeros(p.numel(), dtype=flat.dtype) if t is None
                         else t.detach().reshape(-1).to(flat.dtype))
        out.append((name, torch.cat([x.to(flat.device) for x in parts]).clone()))
    return steps.pop(), out
