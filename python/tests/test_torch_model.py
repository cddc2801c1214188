"""metaloop.torch_model: a plain torch.nn.Module with metaloop's state_dict names, computing what
metaloop's forward computes (1e-10 in f64)."""
import torch
import torch.nn as nn
from conftest import assert_close

import metaloop


def images(channels, side, classes):
    def sample(split, iteration, index):
        g = torch.Generator().manual_seed(iteration * 100 + index)
        x = torch.randn(classes * 2, channels, side, side, generator=g)
        y = torch.arange(classes).repeat_interleave(2)
        return x, y, x.clone(), y.clone()
    return sample


def round_trip(overrides, tasks=None, x=None):
    cfg = metaloop.Config(overrides={"run.dtype": "f64", "outer.meta_batch": 2, **overrides})
    trainer = metaloop.Trainer(cfg, tasks=tasks)
    trainer.step()  # θ0 after an outer step, not only its initialisation
    model = metaloop.torch_model(trainer).double()
    assert isinstance(model, nn.Module)
    state = trainer.state_dict()
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state)
    with torch.no_grad():
        assert_close(model(x), trainer.forward(x), "torch_model's output")


def test_mlp_round_trips():
    round_trip({"model.hidden": [16, 8]}, x=torch.linspace(-5, 5, 7, dtype=torch.float64)[:, None])


# Tasks come from Python: task.root is required by the config but not read.
IMAGE = {"task.kind": "omniglot", "task.root": "unused", "task.ways": 3, "task.shots": 2, "task.queries": 2,
         "task.image_size": 16}


def test_conv4_round_trips():
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    round_trip({**IMAGE, "model.backbone": "conv4", "model.filters": 4}, images(1, 16, 3), x)


def test_resnet12_round_trips():
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    overrides = {**IMAGE, "task.kind": "miniimagenet", "model.backbone": "resnet12",
                 "model.widths": [4, 6, 8, 10]}
    round_trip(overrides, images(3, 16, 3), x)


def test_torch_model_of_a_config_uses_the_datasets_channels():
    cfg = metaloop.Config(overrides={**IMAGE, "model.backbone": "conv4",
                                     "model.filters": 4})
    model = metaloop.torch_model(cfg)
    assert model.state_dict()["0.0.weight"].shape == (4, 1, 3, 3)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_per_step_batchnorm_round_trips():
    """MAML++'s BNWB: [inner_steps, C] BatchNorm rows; the forward of θ0 reads the last row."""
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    overrides = {**IMAGE, "model.backbone": "conv4", "model.filters": 4,
                 "model.per_step_batchnorm": True, "algorithm.inner_steps": 3}
    round_trip(overrides, images(1, 16, 3), x)
    model = metaloop.torch_model(metaloop.Config(overrides=overrides)).double()
    assert model.state_dict()["0.1.weight"].shape == (3, 4)
    with torch.no_grad():
        model[0][1].bias[0].fill_(0.5)
        metaloop.set_step(model, 0)
        first = model(x)
        metaloop.set_step(model, None)
        last = model(x)
    assert (first - last).abs().max() > 1e-3
