"""metaloop.Config and metaloop.Trainer: the engine's Trainer from Python, a run directory as
`metaloop train` writes it, tasks from a Python callable, and Ctrl-C."""
import json
import os
import signal
import threading

import pytest
import torch

import metaloop

REPORT_KEYS = {"split", "tasks", "inner_steps", "ways", "shots", "metric", "loss_before",
               "loss_after", "accuracy_before", "accuracy_after"}


def test_a_short_sinusoid_run_adapts_and_writes_the_run_directory(tmp_path):
    cfg = metaloop.Config(overrides={"outer.iterations": 300})
    trainer = metaloop.Trainer(cfg)
    out = trainer.fit(run_dir=str(tmp_path / "run"), progress=False)
    test = out["test"]
    assert set(test) == REPORT_KEYS
    assert test["loss_after"]["mean"] < test["loss_before"]["mean"], test
    run = tmp_path / "run"
    for name in ["config.toml", "metrics.jsonl", "model.safetensors", "report.json", "run.json"]:
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert report["test"] == test and report["iterations"] == 300
    assert any((run / "checkpoints").iterdir())
    assert trainer.iteration == 300


def test_step_evaluate_and_state_dict():
    trainer = metaloop.Trainer(metaloop.Config(overrides={"outer.meta_batch": 4}))
    m = trainer.step()
    assert m["iteration"] == 1 and m["tasks"] == 4 and m["meta_loss"] > 0
    assert trainer.iteration == 1
    r = trainer.evaluate(split="val", tasks=10)
    assert set(r) == REPORT_KEYS and r["split"] == "val" and r["tasks"] == 10
    state = trainer.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert state["0.weight"].shape == (40, 1) and isinstance(state["4.bias"], torch.Tensor)
    # Copies: changing one leaves the trainer's θ0 as it was.
    state["0.bias"].zero_()
    assert trainer.state_dict()["0.bias"].abs().sum() > 0


def test_config_load_reads_a_file_with_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[outer]\niterations = 7\n[model]\nhidden = [8]\n")
    cfg = metaloop.Config.load(str(path), overrides={"outer.iterations": 500, "run.name": "x",
                                                      "algorithm.learn_lr": True})
    got = json.loads(cfg.to_json())
    assert got["outer"]["iterations"] == 500 and got["model"]["hidden"] == [8]
    assert got["run"]["name"] == "x" and got["algorithm"]["learn_lr"] is True
    assert "iterations = 500" in cfg.to_toml()


def _prototypes(classes=12, side=16, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, 1, side, side, generator=g)


PROTOTYPES = _prototypes()
WAYS, SHOTS, QUERIES = 3, 2, 3


def prototype_tasks(split, iteration, index):
    """A task of WAYS classes drawn from PROTOTYPES (train: classes 0-7; val and test: 8-11),
    noisy copies, labels shuffled: a pure function of (split, iteration, index)."""
    offset = {"train": 0, "val": 1_000_000, "test": 2_000_000}[split]
    g = torch.Generator().manual_seed(offset + iteration * 1000 + index)
    pool = list(range(8)) if split == "train" else list(range(8, 12))
    classes = [pool[i] for i in torch.randperm(len(pool), generator=g)[:WAYS]]

    def examples(n):
        x = torch.stack([PROTOTYPES[c] for c in classes for _ in range(n)])
        x = x + 0.8 * torch.randn(x.shape, generator=g)
        y = torch.arange(WAYS).repeat_interleave(n)
        return x.float(), y

    xs, ys = examples(SHOTS)
    xq, yq = examples(QUERIES)
    return xs, ys, xq, yq


def conv4_config(**extra):
    # task.kind "omniglot" picks the cross-entropy loss and one input channel; the config needs a
    # task.root, which a Python task source leaves unread.
    overrides = {"task.kind": "omniglot", "task.root": "unused", "task.ways": WAYS, "task.shots": SHOTS,
                 "task.queries": QUERIES, "task.image_size": 16, "model.backbone": "conv4",
                 "model.filters": 8, "algorithm.inner_steps": 1, "algorithm.inner_lr": 0.4,
                 "outer.meta_batch": 4, "outer.iterations": 60, "eval.every": 0,
                 "eval.test_tasks": 60, "run.threads": 1}
    overrides.update(extra)
    return metaloop.Config(overrides=overrides)


def test_a_python_task_source_trains_a_conv4():
    calls = set()

    def sample(split, iteration, index):
        calls.add(split)
        return prototype_tasks(split, iteration, index)

    trainer = metaloop.Trainer(conv4_config(), tasks=sample)
    before = trainer.evaluate("test", 60)
    trainer.fit(progress=False)
    after = trainer.evaluate("test", 60)
    assert trainer.iteration == 60
    assert {"train", "test"} <= calls
    assert after["metric"] == "accuracy" and after["ways"] == WAYS
    assert after["loss_after"]["mean"] < before["loss_after"]["mean"], (before, after)
    assert after["accuracy_after"]["mean"] > before["accuracy_after"]["mean"], (before, after)
    assert after["accuracy_after"]["mean"] > 1.0 / WAYS + 0.2, after


def test_the_task_callables_own_exception_propagates():
    def sample(split, iteration, index):
        if iteration >= 1:
            raise LookupError(f"no task {index}")
        return prototype_tasks(split, iteration, index)

    trainer = metaloop.Trainer(conv4_config(), tasks=sample)
    trainer.step()
    with pytest.raises(LookupError, match="no task"):
        trainer.step()


def test_ctrl_c_stops_after_a_checkpoint_and_raises_keyboard_interrupt(tmp_path):
    trainer = metaloop.Trainer(metaloop.Config(overrides={"outer.iterations": 10_000_000}))
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="checkpoint"):
            trainer.fit(run_dir=str(tmp_path / "run"), progress=False)
    finally:
        timer.cancel()
    done = trainer.iteration
    assert 0 < done < 10_000_000
    manifests = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.json"))
    assert any(str(done) in m for m in manifests), manifests
    # The trainer is usable afterwards.
    assert trainer.step()["iteration"] == done + 1
