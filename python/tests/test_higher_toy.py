"""higher's toy example (examples/higher_toy.py, `import metaloop as higher`) gives what higher
0.2.1 gives: the committed values of tests/fixtures/gen_higher_toy.py, to 1e-10 in f64."""
import json

import pytest
from conftest import HERE, assert_close
from gen_higher_toy import load_with

# higher's toy example draws its data with numpy, which torch does not install.
pytest.importorskip("numpy", reason="higher's toy example needs numpy")

FIXTURE = json.loads((HERE / "fixtures" / "higher_toy.json").read_text())


def check(record, want):
    for run in ("run1", "run2", "run3"):
        for key in ("history", "meta_loss", "lr_grad", "momentum_grad"):
            assert_close(record[run][key], want[run][key], f"{run} {key}")
    # copy_initial_weights=True: no gradient reaches the model; False: ∂θ0 in model.weight.grad.
    assert record["run1_weight_grad"] is None and want["run1_weight_grad"] is None
    assert_close(record["run2_weight_grad"], want["run2_weight_grad"], "∂θ0 after run 2")
    assert_close(record["weight_after_meta_step"], want["weight_after_meta_step"], "θ0 after meta step")
    assert_close(record["meta_losses"], want["meta_losses"], "meta-losses")
    # The finite difference divides a 1e-9 change by a 1e-7 step: only its first digits hold.
    assert_close(record["fd_approximation"], want["fd_approximation"], "finite difference", 1e-5)


def test_toy_example_gives_higher_s_committed_values():
    record = load_with("import metaloop as higher\n").main()
    check(record, FIXTURE)
    # The finite difference agrees with the hypergradient ∂θ0 (the example's own check).
    assert_close(record["fd_approximation"], record["run2_weight_grad"], "FD vs ∂θ0", 1e-3)


def test_toy_example_gives_what_higher_gives_now(higher):
    check(load_with("import metaloop as higher\n").main(), load_with("import higher\n").main())
