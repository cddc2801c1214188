"""higher's `innerloop_ctx` on metaloop: the same arguments and the same `(fmodel, diffopt)`, with
every differentiable optimizer step taken by metaloop's Rust runtime (metaloop_runtime::InnerLoop).

The model's parameters become one flat tensor (θ0, PyTorch's names). A model built of layers the
runtime has runs its forward natively (`fmodel.native` is True); any other runs its own forward
through `torch.func.functional_call` with the current parameters.
"""
import contextlib

import torch

from . import _native, _native_model, _optim


@contextlib.contextmanager
def innerloop_ctx(model, opt, device=None, copy_initial_weights=True, override=None,
                  track_higher_grads=True):
    """higher.innerloop_ctx: yields `(fmodel, diffopt)` (see higher's documentation)."""
    fmodel = FunctionalModel(model, device)
    diffopt = DifferentiableOptimizer(fmodel, opt, copy_initial_weights, override,
                                      track_higher_grads)
    yield fmodel, diffopt


class FunctionalModel:
    """higher's patched module: `fmodel(x)` runs the model at the latest parameters."""

    def __init__(self, model, device):
        self.module = model
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        self.names = [n for n, _ in named]
        self.reference = [p for _, p in named]
        self.shapes = [list(p.shape) for p in self.reference]
        self.numels = [p.numel() for p in self.reference]
        kinds = {(p.dtype, p.device) for p in self.reference}
        if len(kinds) > 1:
            raise ValueError(f"the model's parameters mix dtypes or devices {sorted(map(str, kinds))}")
        flat = torch.cat([p.reshape(-1) for p in self.reference])
        self.theta0 = flat if device is None else flat.to(device)
        self.spec = _native_model.describe(model)
        self.dropout = self.spec is not None and _native_model.has_dropout(model)
        # higher copies the module's buffers (BatchNorm's running statistics): the inner loop
        # updates its own copy, never the module's.
        self.buffers = {n: b.detach().clone() if device is None else b.detach().clone().to(device)
                        for n, b in model.named_buffers()}
        self.inner = None
        self._views = {}

    @property
    def native(self):
        """True when the forward runs in metaloop's Rust layers (task-batched, native)."""
        return self.inner.native

    @property
    def training(self):
        return self.module.training

    def __call__(self, *args, params=None, **kwargs):
        if params is not None:
            return self._functional(list(params), args, kwargs)
        if self.inner.native and len(args) == 1 and not kwargs:
            seed = None
            if self.dropout and self.module.training:
                seed = int(torch.randint(0, 2**62, ()).item())
            return self.inner.forward(args[0], self.module.training, seed)
        return self._functional(self._params(None), args, kwargs)

    forward = __call__

    def _functional(self, params, args, kwargs):
        tensors = dict(self.buffers)
        tensors.update(zip(self.names, params))
        return torch.func.functional_call(self.module, tensors, args, kwargs)

    def parameters(self, time=None):
        """The parameters at `time` (the latest by default), as higher gives them."""
        return iter(self._params(time))

    def named_parameters(self, time=None):
        return iter(zip(self.names, self._params(time)))

    def _params(self, time):
        t = self.inner.time if time is None else time
        if t < 0:
            t += self.inner.time + 1
        views = self._views.get(t)
        if views is None:
            flat = self.inner.params(t)
            views = [v.view(s) for v, s in zip(torch.split(flat, self.numels), self.shapes)]
            self._views[t] = views
        return views

    def _advance(self, track):
        if not track:
            self._views.clear()

    def split(self, flat):
        """A flat `[P]` tensor as one tensor per parameter."""
        return [v.view(s) for v, s in zip(torch.split(flat, self.numels), self.shapes)]


class DifferentiableOptimizer:
    """higher's differentiable optimizer: `step(loss)` takes one step in metaloop's runtime."""

    def __init__(self, fmodel, opt, copy_initial_weights, override, track_higher_grads,
                 grad_callback=None):
        self.fmodel = fmodel
        self.name = _optim.optimizer_name(opt)
        self.track_higher_grads = track_higher_grads
        self._grad_callback = grad_callback
        index = {id(p): i for i, p in enumerate(fmodel.reference)}
        param_group = [None] * len(fmodel.reference)
        for g, group in enumerate(opt.param_groups):
            for p in group["params"]:
                if id(p) not in index:
                    raise ValueError(f"Could not find parameter {p} in reference parameters.")
                param_group[index[id(p)]] = g
        overrides = _optim.group_overrides(override, len(opt.param_groups))
        self.groups = [{**{k: v for k, v in group.items() if k != "params"}, **ov}
                       for group, ov in zip(opt.param_groups, overrides)]
        self.resolver = _optim.Resolver(self.name, self.groups, list(zip(
            fmodel.names, fmodel.shapes, fmodel.numels)), param_group, fmodel.theta0)
        frozen = [g is None or not p.requires_grad for p, g in zip(fmodel.reference, param_group)]
        hparams, tensors = {}, []
        for name in self.resolver.names():
            const, tensor = self.resolver.resolve(name)
            if tensor is None:
                hparams[name] = const
            else:
                tensors.append((name, tensor))
        hparams.setdefault("lr", _first_float(opt.param_groups, "lr"))
        state = _optim.start_state(opt, fmodel.reference, frozen, fmodel.theta0)
        fmodel.inner = _native.InnerLoop(
            fmodel.names, fmodel.shapes, fmodel.theta0, self.name, hparams,
            self.resolver.options(), tensors,
            [n for n, f in zip(fmodel.names, frozen) if f], state,
            copy_initial_weights, track_higher_grads, fmodel.spec)
        self.param_groups = self.groups

    def step(self, loss, params=None, override=None, grad_callback=None, **kwargs):
        """One differentiable step on `loss`; returns the new parameters."""
        if params is not None:
            raise ValueError("metaloop's diffopt.step takes its parameters from fmodel; "
                             "pass no `params`")
        overrides = []
        if override:
            for g, ov in zip(self.groups, _optim.group_overrides(override, len(self.groups))):
                g.update(ov)
            changed = {n for key in override for n in self.resolver.keys.get(key, (key,))}
            for name in sorted(changed):
                const, tensor = self.resolver.resolve(name)
                if tensor is None:
                    tensor = torch.tensor(const, dtype=self.fmodel.theta0.dtype,
                                          device=self.fmodel.theta0.device)
                overrides.append((name, tensor))
        callback = grad_callback if grad_callback is not None else self._grad_callback
        flat_callback = None
        if callback is not None:
            def flat_callback(flat):
                grads = callback(tuple(self.fmodel.split(flat)))
                return torch.cat([g.reshape(-1) for g in grads])
        self.fmodel.inner.step(loss, overrides, flat_callback)
        self.fmodel._advance(self.track_higher_grads)
        return list(self.fmodel.parameters())

    def state(self):
        """The optimizer state after the latest step: (step, {buffer: flat tensor})."""
        step, buffers = self.fmodel.inner.state()
        return step, dict(buffers)


def _first_float(groups, key):
    for group in groups:
        v = group.get(key)
        if v is not None:
            return float(v)
    return 0.0
