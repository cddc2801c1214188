"""Errors of Config and Trainer: bad input raises ValueError with the CLI's one-line message,
files raise OSError, anything else metaloop.Error; a Rust panic does not end Python."""
import pytest
import torch

import metaloop


def test_an_unknown_key_is_a_value_error_naming_it():
    with pytest.raises(ValueError) as e:
        metaloop.Config(overrides={"outer.lrr": 0.1})
    assert str(e.value).startswith("--set: unknown key `outer.lrr` (expected one of optimizer, lr,")
    assert "\n" not in str(e.value)


def test_a_bad_value_is_a_value_error_naming_the_key():
    with pytest.raises(ValueError, match=r"^--set: algorithm.inner_lr: must be a finite number > 0, got -1$"):
        metaloop.Config(overrides={"algorithm.inner_lr": -1})
    with pytest.raises(ValueError, match="algorithm.name: must be one of \"maml\""):
        metaloop.Config(overrides={"algorithm.name": "mamal"})
    with pytest.raises(ValueError, match=r"overrides\[\"outer.lr\"\]: expected a bool, int, float"):
        metaloop.Config(overrides={"outer.lr": {1: 2}})


def test_a_bad_file_is_a_value_error_and_a_missing_one_an_os_error(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[outer]\nlr = = 1\n")
    with pytest.raises(ValueError, match=r"c.toml: line 2, column "):
        metaloop.Config.load(str(bad))
    with pytest.raises(OSError, match="nope.toml: no such file"):
        metaloop.Config.load(str(tmp_path / "nope.toml"))


def test_a_missing_dataset_and_an_existing_run_directory_are_os_errors(tmp_path):
    cfg = metaloop.Config(overrides={"task.kind": "omniglot", "model.backbone": "conv4",
                                     "task.root": str(tmp_path / "none")})
    with pytest.raises(OSError):
        metaloop.Trainer(cfg)
    trainer = metaloop.Trainer(metaloop.Config(overrides={"outer.iterations": 1}))
    with pytest.raises(OSError, match="exists"):
        trainer.fit(run_dir=str(tmp_path), progress=False)


def test_bad_arguments_are_value_errors():
    trainer = metaloop.Trainer(metaloop.Config())
    with pytest.raises(ValueError, match="split: must be one of"):
        trainer.evaluate(split="dev")
    with pytest.raises(ValueError, match="tasks: expected a callable"):
        metaloop.Trainer(metaloop.Config(), tasks=3)
    with pytest.raises(ValueError, match="four torch tensors"):
        metaloop.Trainer(metaloop.Config(), tasks=lambda s, i, k: (1, 2))


def test_a_failure_inside_metaloop_is_a_metaloop_error():
    # Tasks of different shapes cannot be stacked into one meta-batch: libtorch refuses.
    def sample(split, iteration, index):
        n = 10 + index
        return (torch.zeros(n, 1), torch.zeros(n, 1), torch.zeros(n, 1), torch.zeros(n, 1))

    trainer = metaloop.Trainer(metaloop.Config(overrides={"outer.meta_batch": 2}), tasks=sample)
    with pytest.raises(metaloop.Error):
        trainer.step()


def test_a_rust_panic_is_a_metaloop_error_and_python_goes_on():
    with pytest.raises(metaloop.Error, match=r"a bug in metaloop \(a Rust panic\): boom"):
        metaloop._native._panic_for_test("boom")
    assert metaloop.Trainer(metaloop.Config()).iteration == 0
