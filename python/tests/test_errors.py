"""Bad input raises ValueError with a one-line message; another torch version is refused at import."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import metaloop


def model():
    return nn.Linear(2, 1)


def test_another_torch_version_is_refused_at_import():
    code = "import torch; torch.__version__ = '2.10.0+cpu'; import metaloop"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and "2.11.0" in last and "2.10.0" in last, last


@pytest.mark.parametrize("make_opt, override, message", [
    (lambda p: torch.optim.LBFGS(p), None, "LBFGS is not supported"),
    (lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), None, "maximize=True"),
    (lambda p: torch.optim.SGD(p, lr=0.1), {"lr": [0.1, 0.2, 0.3]}, "3 values for 1 param groups"),
    (lambda p: torch.optim.SGD(p, lr=0.1), {"lr": [torch.ones(5)]}, r"neither one value nor broadcastable to parameter `weight` \[1, 2\]"),
])
def test_bad_optimizers_and_overrides_raise_value_error(make_opt, override, message):
    m = model()
    with pytest.raises(ValueError, match=message):
        with metaloop.innerloop_ctx(m, make_opt(m.parameters()), override=override):
            pass


def test_times_that_do_not_exist_raise_value_error():
    m = model()
    with metaloop.innerloop_ctx(m, torch.optim.SGD(m.parameters(), lr=0.1)) as (f, d):
        with pytest.raises(ValueError, match=r"only times 0..=0 exist"):
            f.parameters(time=3)
        with pytest.raises(ValueError, match="scalar loss"):
            d.step(f(torch.randn(3, 2)))


def test_grad_callback_errors_reach_python():
    m = model()
    with metaloop.innerloop_ctx(m, torch.optim.SGD(m.parameters(), lr=0.1)) as (f, d):
        def broken(grads):
            raise KeyError("from the callback")
        with pytest.raises(KeyError, match="from the callback"):
            d.step(f(torch.randn(3, 2)).sum(), grad_callback=broken)


def test_metaloop_error_is_a_runtime_error():
    assert issubclass(metaloop.Error, RuntimeError)
