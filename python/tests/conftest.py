"""Shared helpers of metaloop's Python tests. Tolerances: 1e-10 in f64 (the project's rule)."""
import pathlib
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fixtures"))


def assert_close(got, want, what, tol=1e-10):
    """|got - want| <= tol * max(1, |want|), elementwise, for floats, lists or tensors."""
    got = torch.as_tensor(got, dtype=torch.float64).detach()
    want = torch.as_tensor(want, dtype=torch.float64).detach()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = ((got - want).abs() / want.abs().clamp(min=1.0)).max().item() if got.numel() else 0.0
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}\n got  {got}\n want {want}"


@pytest.fixture
def higher():
    """higher 0.2.1, for the tests that run it side by side (skipped where it is not installed)."""
    return pytest.importorskip("higher")
