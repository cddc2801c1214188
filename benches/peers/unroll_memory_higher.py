"""Peak memory of a long inner unroll with higher 0.2.1: the peer of examples/unroll_memory.rs.

Workload (issue 6's omniglot): Conv-4 (64 filters, BatchNorm with batch statistics), 1x28x28,
5-way 1-shot, 15 queries per class, meta-batch 8, SGD lr 0.4, random inputs, f32, 2 threads.
higher cannot batch tasks, so it loops over the 8 tasks as higher's own MAML Omniglot example does
(examples/maml-omniglot.py): one innerloop_ctx per task and the query loss's backward inside the
loop, which frees each task's graph before the next (the lowest peak higher allows).

    ~/.cache/metaloop/torch-2.11.0/bin/python benches/peers/unroll_memory_higher.py --steps 100

Prints one line: steps, seconds, VmHWM before the unroll and at the end (MiB), the mean query loss
over tasks and the norm of the meta-gradient.
"""

import argparse
import time

import higher
import torch
import torch.nn.functional as F
from torch import nn

WAYS, SHOTS, QUERIES, META_BATCH, FILTERS, LR = 5, 1, 15, 8, 64, 0.4


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def conv4():
    return nn.Sequential(
        block(1, FILTERS),
        block(FILTERS, FILTERS),
        block(FILTERS, FILTERS),
        block(FILTERS, FILTERS),
        nn.Flatten(),
        nn.Linear(FILTERS, WAYS),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = conv4()
    support_x = torch.randn(META_BATCH, WAYS * SHOTS, 1, 28, 28)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS)
    query_x = torch.randn(META_BATCH, WAYS * QUERIES, 1, 28, 28)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES)
    inner_opt = torch.optim.SGD(model.parameters(), lr=LR)

    before = peak_rss_mib()
    start = time.perf_counter()
    model.zero_grad()
    total = 0.0
    for i in range(META_BATCH):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(args.steps):
                diffopt.step(F.cross_entropy(fnet(support_x[i]), support_y))
            query_loss = F.cross_entropy(fnet(query_x[i]), query_y)
            query_loss.backward()
            total += query_loss.item()
    seconds = time.perf_counter() - start
    grad_norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm().item()
    print(
        f"peer=higher steps={args.steps} seconds={seconds:.1f} vmhwm_before_mib={before:.0f} "
        f"vmhwm_mib={peak_rss_mib():.0f} meta_loss={total:.6f} grad_norm={grad_norm:.6e}"
    )


if __name__ == "__main__":
    main()
