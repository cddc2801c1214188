"""metaloop.innerloop_ctx against higher 0.2.1, run side by side in f64: parameter history,
meta-loss, hypergradients and ∂θ0 agree to 1e-10, for a module with a custom forward
(torch.func.functional_call) and for one that runs natively."""
import pytest
import torch
import torch.nn as nn

import metaloop
from conftest import assert_close


@pytest.fixture(autouse=True)
def float64():
    """Every tensor of these tests in f64 (restored afterwards: other tests draw in f32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


class ResidualMLP(nn.Module):
    """A custom forward: metaloop has no such layer, so it runs through functional_call."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.tanh(self.hidden(h))
        return self.out(h)


def sequential_mlp():
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def data():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(n, d, generator=g) for n, d in ((10, 3), (10, 2), (9, 3), (9, 2))]


def leaf(v):
    return torch.tensor(v, requires_grad=True)


def unroll(lib, make_model, make_opt, make_override, steps=3, copy_initial_weights=True,
           warmup=0, step_kwargs=None, track_higher_grads=True):
    """Runs an inner loop with `lib` (metaloop or higher) and returns what it produced."""
    torch.manual_seed(0)
    model = make_model()
    xs, ys, xq, yq = data()
    opt = make_opt(model)
    for _ in range(warmup):  # gives the optimizer a state (momentum buffers, moments)
        opt.zero_grad()
        ((model(xs) - ys) ** 2).mean().backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    leaves, override = make_override()
    with lib.innerloop_ctx(model, opt, copy_initial_weights=copy_initial_weights,
                           override=override, track_higher_grads=track_higher_grads) as (fmodel, diffopt):
        for i in range(steps):
            loss = ((fmodel(xs) - ys) ** 2).mean()
            diffopt.step(loss, **(step_kwargs(i) if step_kwargs else {}))
        times = range(steps + 1) if track_higher_grads else [None]
        history = [torch.cat([p.detach().reshape(-1) for p in fmodel.parameters(time=t)]) for t in times]
        meta_loss = ((fmodel(xq) - yq) ** 2).mean()
        meta_loss.backward()
    return {
        "history": torch.stack(history),
        "meta_loss": meta_loss.detach(),
        "hypergrads": [torch.zeros(()) if t.grad is None else t.grad for t in leaves],
        "theta0_grad": [torch.zeros(()) if p.grad is None else p.grad for p in model.parameters()],
        "native": getattr(fmodel, "native", None),
    }


def compare(higher, native=None, **case):
    got = unroll(metaloop, **case)
    want = unroll(higher, **case)
    assert got["native"] is native
    assert_close(got["history"], want["history"], "parameter history")
    assert_close(got["meta_loss"], want["meta_loss"], "meta-loss")
    for i, (g, w) in enumerate(zip(got["hypergrads"], want["hypergrads"])):
        assert_close(g, w, f"hypergradient {i}")
    for i, (g, w) in enumerate(zip(got["theta0_grad"], want["theta0_grad"])):
        assert_close(g, w, f"∂θ0 of parameter {i}")
    return got


def sgd_lr_momentum():
    lr, momentum = leaf(0.1), leaf(0.8)
    return [lr, momentum], {"lr": [lr], "momentum": [momentum]}


@pytest.mark.parametrize("make_model, native", [(ResidualMLP, False), (sequential_mlp, True)])
@pytest.mark.parametrize("copy_initial_weights", [True, False])
def test_sgd_momentum_overrides(higher, make_model, native, copy_initial_weights):
    got = compare(higher, native, make_model=make_model,
                  make_opt=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.8,
                                                     nesterov=True, weight_decay=0.01),
                  make_override=sgd_lr_momentum, copy_initial_weights=copy_initial_weights)
    # copy_initial_weights=False fills the model's own .grad (MAML); True leaves it empty.
    assert any(g.abs().sum() > 0 for g in got["theta0_grad"]) is (not copy_initial_weights)


def test_per_group_overrides_and_group_hyperparameters(higher):
    def make_opt(m):
        return torch.optim.SGD([{"params": list(m.inp.parameters()) + list(m.hidden.parameters()),
                                 "momentum": 0.5},
                                {"params": m.out.parameters(), "lr": 0.05, "dampening": 0.1}],
                               lr=0.1, momentum=0.9)

    def override():
        lrs = [leaf(0.1), leaf(0.2)]
        return lrs, {"lr": lrs}
    compare(higher, False, make_model=ResidualMLP, make_opt=make_opt, make_override=override,
            copy_initial_weights=False)


def test_meta_sgd_per_element_learning_rates(higher):
    def make_opt(m):
        return torch.optim.SGD([{"params": [p]} for p in m.parameters()], lr=0.1)

    def override():
        torch.manual_seed(3)
        shapes = [p.shape for p in ResidualMLP().parameters()]
        lrs = [(0.05 + 0.1 * torch.rand(s)).requires_grad_() for s in shapes]
        return lrs, {"lr": lrs}
    compare(higher, False, make_model=ResidualMLP, make_opt=make_opt, make_override=override)


def test_starts_from_the_optimizer_s_momentum_buffers(higher):
    compare(higher, True, make_model=sequential_mlp, warmup=2,
            make_opt=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
            make_override=sgd_lr_momentum, copy_initial_weights=False)


def test_grad_callback_and_step_overrides(higher):
    lr2 = leaf(0.05)

    def step_kwargs(i):
        kwargs = {"grad_callback": lambda grads: [g.clamp(-0.05, 0.05) * 2.0 for g in grads]}
        if i == 1:
            kwargs["override"] = {"lr": [lr2]}
        return kwargs

    def override():
        lr2.grad = None
        lr = leaf(0.1)
        return [lr, lr2], {"lr": [lr]}
    compare(higher, False, make_model=ResidualMLP, step_kwargs=step_kwargs, make_override=override,
            make_opt=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5))


def test_first_order_without_tracking(higher):
    compare(higher, True, make_model=sequential_mlp, track_higher_grads=False,
            make_opt=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5),
            make_override=lambda: ([], None), copy_initial_weights=False)


def test_latest_parameters_are_the_latest_time_s_objects():
    model = sequential_mlp()
    xs, ys, _, _ = data()
    with metaloop.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1)) as (fmodel, diffopt):
        for j in range(3):
            assert list(fmodel.parameters())[0] is list(fmodel.parameters(time=j))[0]
            diffopt.step(((fmodel(xs) - ys) ** 2).mean())
        assert list(fmodel.parameters())[0] is list(fmodel.parameters(time=3))[0]
        assert list(fmodel.parameters())[0] is not list(fmodel.parameters(time=2))[0]


def small_convnet():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, stride=1, padding=1), nn.LeakyReLU(0.2),
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))


def test_native_conv_layers(higher):
    """Conv2d, BatchNorm2d, pooling, Flatten and Dropout (eval mode: the identity) natively."""
    g = torch.Generator().manual_seed(5)
    x, xq = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    y, yq = torch.randint(0, 3, (6,), generator=g), torch.randint(0, 3, (6,), generator=g)

    def run(lib):
        torch.manual_seed(0)
        model = small_convnet().eval()
        lr = leaf(0.1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with lib.innerloop_ctx(model, opt, copy_initial_weights=False, override={"lr": [lr]}) as (f, d):
            for _ in range(2):
                d.step(nn.functional.cross_entropy(f(x), y))
            meta = nn.functional.cross_entropy(f(xq), yq)
            meta.backward()
            history = [torch.cat([p.detach().reshape(-1) for p in f.parameters(time=t)]) for t in range(3)]
            return getattr(f, "native", None), torch.stack(history), meta.detach(), lr.grad, \
                torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    got, want = run(metaloop), run(higher)
    assert got[0] is True
    for what, g_, w in zip(("history", "meta-loss", "∂/∂lr", "∂θ0"), got[1:], want[1:]):
        assert_close(g_, w, what)


def test_native_dropout_trains_with_its_own_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    x = torch.randn(4, 3)
    with metaloop.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1)) as (f, d):
        assert f.native
        a, b = f(x), f(x)
        assert not torch.equal(a, b), "training mode draws a new mask per call"
        model.eval()
        assert_close(f(x), model(x), "eval mode: dropout is the identity")
