"""metaloop from Python: higher's `innerloop_ctx` as a drop-in, on metaloop's Rust runtime.

    import metaloop as higher
    with higher.innerloop_ctx(model, opt) as (fmodel, diffopt):
        diffopt.step(loss_fn(fmodel(x), y))

    trainer = metaloop.Trainer(metaloop.Config(overrides={"outer.iterations": 300}))
    trainer.fit(run_dir="runs/sinusoid-py")   # what `metaloop train` writes
    model = metaloop.torch_model(trainer)      # a plain torch.nn.Module
    model.load_state_dict(trainer.state_dict())

PyTorch must be the version whose libtorch metaloop was built against (2.11.0): tensors pass
between PyTorch and metaloop without copies, so both must be the same libtorch.
"""
import torch as _torch

TORCH_VERSION = "2.11.0"

if _torch.__version__.split("+")[0] != TORCH_VERSION:
    raise ImportError(
        f"metaloop needs torch {TORCH_VERSION} (the libtorch it was built against), "
        f"but torch {_torch.__version__} is installed")

from . import _native  # noqa: E402  (after torch: it links torch's libraries)
from ._higher import DifferentiableOptimizer, FunctionalModel, innerloop_ctx  # noqa: E402
from ._models import set_step, torch_model  # noqa: E402

Error = _native.Error
Config = _native.Config
Trainer = _native.Trainer

__all__ = ["innerloop_ctx", "FunctionalModel", "DifferentiableOptimizer", "Config", "Trainer",
           "torch_model", "set_step", "Error", "TORCH_VERSION"]
