"""Projected strong and weak scaling of second-order MAML over 8, 64 and 512 GPUs (a projection,
not a measurement): measured 1-GPU per-task time, the meta-gradient's size, and the alpha-beta
model of NCCL's ring all-reduce, T(n) = 2(n-1)/n * S/B + 2(n-1)*alpha.

Prints the markdown table of benches/README.md ("Scaling on paper"). No dependencies:
    python3 benches/scaling_projection.py
"""


def conv4_params(ways, filters=64, in_channels=1, image_hw=28):
    """Parameters of runtime::nn::conv4_sized: 4 x (3x3 conv + bias, BatchNorm weight + bias),
    then Linear(filters * s * s, ways)."""
    total, channels, side = 0, in_channels, image_hw
    for _ in range(4):
        total += filters * channels * 9 + filters + 2 * filters
        channels, side = filters, side // 2
    return total + filters * side * side * ways + ways


def mlp_params(sizes):
    """Parameters of runtime::nn::mlp(sizes): weights and biases of each Linear."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


# Measured on one H100 (issue 13): tasks/s at the workload's meta-batch.
WORKLOADS = [
    # name, tasks/s on 1 GPU, meta-batch per GPU (weak scaling), parameters
    ("omniglot20 (Conv-4, 20-way 1-shot, 5 steps)", 189.0, 32, conv4_params(20)),
    ("sinusoid (MLP 1-40-40-1, 1 step)", 5821.0, 25, mlp_params([1, 40, 40, 1])),
]

# Assumed links (typical published figures, not measured here):
# - NVLink 4 through NVSwitch (one 8-GPU H100 node): 450 GB/s per GPU and direction, of which
#   NCCL's all-reduce reaches about 360-400 GB/s of bus bandwidth: B = 370 GB/s; alpha = 2 us
#   per ring step (NCCL's per-hop latency on NVLink is a few microseconds).
# - InfiniBand NDR (400 Gb/s, one NIC per GPU, between nodes of 8 GPUs): 50 GB/s per direction,
#   about 45 GB/s reached: B = 45 GB/s; alpha = 6 us per ring step (about 1-2 us of the fabric
#   plus NCCL's proxy and kernel overheads). A ring over several nodes runs at its slowest hop.
LINKS = {"NVLink": (2e-6, 370e9), "InfiniBand": (6e-6, 45e9)}
GPUS = [8, 64, 512]
STRONG_BATCH = 512  # global meta-batch of the strong-scaling rows: one task per GPU at 512


def ring_allreduce_s(n, size_bytes, alpha, bandwidth):
    return 2 * (n - 1) / n * size_bytes / bandwidth + 2 * (n - 1) * alpha


def link_for(n):
    return "NVLink" if n <= 8 else "InfiniBand"


def main():
    print(
        "| workload | P (f32 bytes) | GPUs | link | all-reduce | strong, per-task time: tasks/s (efficiency) "
        "| strong, launch-bound | weak: tasks/s (efficiency) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rate, batch, params in WORKLOADS:
        per_task = 1.0 / rate
        size = 4 * params
        for n in GPUS:
            link = link_for(n)
            ar = ring_allreduce_s(n, size, *LINKS[link])
            local = STRONG_BATCH / n
            # Compute in proportion to the tasks (optimistic for small local batches) ...
            strong = STRONG_BATCH / (local * per_task + ar)
            # ... or, launch-bound, no shorter than one iteration at the measured meta-batch.
            bound = STRONG_BATCH / (max(local, batch) * per_task + ar)
            weak = n * batch / (batch * per_task + ar)
            eff = lambda x: f"{x:,.0f} ({x / (n * rate):.0%})"
            print(
                f"| {name} | {params:,} ({size / 1e6:.3f} MB) | {n} | {link} | {ar * 1e3:.3f} ms "
                f"| {eff(strong)} | {eff(bound)} | {eff(weak)} |"
            )


if __name__ == "__main__":
    main()
