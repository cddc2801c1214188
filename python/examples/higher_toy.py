"""higher's toy example (a learned learning rate and momentum for fitting `y = 3.5 x`), with its
two lost lines restored (`diffopt.step(loss)` after the inner loss, `meta_opt.step()` before the
third run) and `import metaloop as higher` as the only change.

Everything is float64, the learning rate and momentum tensors included, so that the check against
higher 0.2.1 (tests/test_higher_toy.py, values from tests/fixtures/gen_higher_toy.py, which runs
this very file with `import higher`) holds to 1e-10.

Run: python examples/higher_toy.py
"""
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

import metaloop as higher

ACTUAL_MULTIPLIER = 3.5
META_LR = 0.00001
LOOPS = 5


def run_inner_loop_once(model, x, y, copy_initial_weights, verbose, record, run):
    lr_tensor = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    momentum_tensor = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    opt = optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=copy_initial_weights,
                              override={"lr": lr_tensor, "momentum": momentum_tensor}) as (fmodel, diffopt):
        for j in range(LOOPS):
            if verbose:
                print(f"Starting inner loop step j=={j}")
                print(f"    Representation of fmodel.parameters(time={j}): "
                      f"{list(fmodel.parameters(time=j))}")
                print(f"    Notice that fmodel.parameters() is same as fmodel.parameters(time={j}): "
                      f"{(list(fmodel.parameters())[0] is list(fmodel.parameters(time=j))[0])}")
            out = fmodel(x)
            if verbose:
                print(f"    Notice how `out` is `x` multiplied by the latest version of weight: "
                      f"{x[0, 0].item():.4} * {list(fmodel.parameters())[0].item():.4} == {out[0].item():.4}")
            loss = ((out - y) ** 2).mean()
            diffopt.step(loss)  # the first lost line
        history = [list(fmodel.parameters(time=j))[0].item() for j in range(LOOPS + 1)]
        if verbose:
            print("Let's print all intermediate parameters versions after inner loop is done:")
            for j in range(LOOPS + 1):
                print(f"    For j=={j} parameter is: {list(fmodel.parameters(time=j))}")
            print()
        weight = list(fmodel.parameters())[0]
        meta_loss = (weight - ACTUAL_MULTIPLIER) ** 2
        print(f"  Final meta-loss: {meta_loss.item()}")
        meta_loss.backward()
        if verbose:
            print(f"  Gradient of final loss we got for lr and momentum: {lr_tensor.grad} and {momentum_tensor.grad}")
            print("  If you change number of iterations \"loops\" to much larger number final loss will be stable and the values above will be smaller")
        record[f"run{run}"] = {"history": history, "meta_loss": meta_loss.item(),
                               "lr_grad": lr_tensor.grad.item(),
                               "momentum_grad": momentum_tensor.grad.item()}
        return meta_loss.item()


def main():
    record = {}
    np.random.seed(0)
    torch.manual_seed(0)
    x = torch.tensor(np.random.random((100, 1)), dtype=torch.float64)
    y = x * ACTUAL_MULTIPLIER
    model = nn.Linear(1, 1, bias=False).double()
    meta_opt = optim.SGD(model.parameters(), lr=META_LR, momentum=0.0)

    print("=================== Run Inner Loop First Time (copy_initial_weights=True) =================\n")
    meta_loss_val1 = run_inner_loop_once(model, x, y, True, True, record, 1)
    print(f"\nLet's see if we got any gradient for initial model parameters: {model.weight.grad}\n")
    record["run1_weight_grad"] = None if model.weight.grad is None else model.weight.grad.item()

    print("=================== Run Inner Loop Second Time (copy_initial_weights=False) =================\n")
    meta_loss_val2 = run_inner_loop_once(model, x, y, False, False, record, 2)
    print(f"\nLet's see if we got any gradient for initial model parameters: {model.weight.grad}\n")
    record["run2_weight_grad"] = model.weight.grad.item()

    print("=================== Run Inner Loop Third Time (copy_initial_weights=False) =================\n")
    final_meta_gradient = list(model.parameters())[0].grad.item()
    # Now let's double check `higher` library is actually doing what it promised to do, not just
    # giving us a bunch of hand-wavy statements and difficult to read code.
    # We will do a simple SGD step using meta_opt changing initial weight for the training and see
    # how meta loss changed.
    meta_opt.step()  # the second lost line
    record["weight_after_meta_step"] = model.weight.item()
    meta_step = -META_LR * final_meta_gradient  # how much meta_opt actually shifted inital weight value
    meta_loss_val3 = run_inner_loop_once(model, x, y, False, False, record, 3)
    meta_loss_gradient_approximation = (meta_loss_val3 - meta_loss_val2) / meta_step
    print()
    print(f"Side-by-side meta_loss_gradient_approximation and gradient computed by `higher` lib: "
          f"{meta_loss_gradient_approximation:.4} VS {final_meta_gradient:.4}")
    record["fd_approximation"] = meta_loss_gradient_approximation
    record["meta_losses"] = [meta_loss_val1, meta_loss_val2, meta_loss_val3]
    return record


if __name__ == "__main__":
    main()
