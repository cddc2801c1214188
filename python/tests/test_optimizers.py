"""Every supported torch.optim optimizer, started from its current state with two param groups,
takes the steps torch.optim takes (1e-10 in f64); Adam's hypergradients (betas mixing a tensor and
a float) equal torch.optim's formula written out in autograd."""
import copy

import pytest
import torch
import torch.nn as nn

import metaloop
from conftest import assert_close


@pytest.fixture(autouse=True)
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


OPTIMIZERS = {
    "SGD": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "SGD-nesterov": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True),
    "Adam": lambda g: torch.optim.Adam(g, lr=0.01, betas=(0.8, 0.95), weight_decay=0.01),
    "Adam-amsgrad": lambda g: torch.optim.Adam(g, lr=0.01, amsgrad=True),
    "AdamW": lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1),
    "Adamax": lambda g: torch.optim.Adamax(g, lr=0.02, weight_decay=0.01),
    "Adagrad": lambda g: torch.optim.Adagrad(g, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    "RMSprop": lambda g: torch.optim.RMSprop(g, lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
    "Adadelta": lambda g: torch.optim.Adadelta(g, lr=0.5, rho=0.8, weight_decay=0.01),
    "RAdam": lambda g: torch.optim.RAdam(g, lr=0.01, weight_decay=0.01),
    "RAdam-decoupled": lambda g: torch.optim.RAdam(g, lr=0.01, weight_decay=0.1,
                                                   decoupled_weight_decay=True),
    "Rprop": lambda g: torch.optim.Rprop(g, lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-5, 1.0)),
}


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)) for _ in range(6)]
    return model, batches


def groups(model, lr):
    params = list(model.parameters())
    return [{"params": params[:2]}, {"params": params[2:], "lr": lr * 0.5}]


def mse(out, y):
    return ((out - y) ** 2).mean()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_steps_equal_torch_optim_from_its_current_state(name):
    model, batches = model_and_data()
    opt = OPTIMIZERS[name](groups(model, 0.1))
    for x, y in batches[:2]:  # torch.optim's own steps: the state metaloop starts from
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    reference = copy.deepcopy(model)
    ref_opt = OPTIMIZERS[name](groups(reference, 0.1))
    ref_opt.load_state_dict(opt.state_dict())
    with metaloop.innerloop_ctx(model, opt) as (fmodel, diffopt):
        assert fmodel.native
        for t, (x, y) in enumerate(batches[2:], start=1):
            diffopt.step(mse(fmodel(x), y))
            ref_opt.zero_grad()
            mse(reference(x), y).backward()
            ref_opt.step()
            for (n, p), q in zip(reference.named_parameters(), fmodel.parameters(time=t)):
                assert_close(q, p, f"{name}: {n} after step {t}")


def test_adam_hypergradients_equal_torch_formula_in_autograd():
    """betas=(tensor, float) and lr overridden; the reference is torch.optim.Adam's update
    (bias corrections, eps after them) written out in autograd."""
    model, batches = model_and_data()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, eps=1e-6, weight_decay=0.01)
    opt.zero_grad()
    mse(model(batches[0][0]), batches[0][1]).backward()
    opt.step()  # a state to start from: step 1, both moments

    def run(inner):
        lr, beta1 = torch.tensor(0.01, requires_grad=True), torch.tensor(0.85, requires_grad=True)
        theta = inner(lr, beta1)
        meta_loss = mse(torch.func.functional_call(model, split(model, theta), (batches[5][0],)),
                        batches[5][1])
        meta_loss.backward()
        return theta.detach(), meta_loss.detach(), lr.grad, beta1.grad

    def with_metaloop(lr, beta1):
        with metaloop.innerloop_ctx(model, opt, override={"lr": [lr], "betas": [(beta1, 0.99)]}) as (f, d):
            for x, y in batches[1:4]:
                d.step(mse(f(x), y))
            return torch.cat([p.reshape(-1) for p in f.parameters()])

    def with_formula(lr, beta1, beta2=0.99, eps=1e-6, wd=0.01):
        params = list(model.parameters())
        theta = torch.cat([p.detach().reshape(-1) for p in params]).requires_grad_()
        theta0 = theta
        m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
        v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
        step = int(opt.state[params[0]]["step"])
        for x, y in batches[1:4]:
            g, = torch.autograd.grad(mse(torch.func.functional_call(model, split(model, theta), (x,)), y),
                                     theta, create_graph=True)
            g = g + wd * theta
            step += 1
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
            theta = theta - lr / bc1 * m / (v.sqrt() / bc2 ** 0.5 + eps)
        assert theta0 is not theta
        return theta

    got, want = run(with_metaloop), run(with_formula)
    for what, g, w in zip(("parameters", "meta-loss", "∂/∂lr", "∂/∂beta1"), got, want):
        assert_close(g, w, what)


def split(model, flat):
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = flat[i:i + p.numel()].view(p.shape)
        i += p.numel()
    return out
