"""The benchmark workloads of metaloop (issue 6), written in the peers: higher, torch.func, TorchOpt.

One (peer, workload) per process, so that the peak RSS (VmHWM) is that workload's own. Prints one
JSON line: {"peer", "workload", "tasks_per_s", "median_s", "peak_mib", "threads", "device"}, peak_mib
being the peak RSS on the CPU and torch.cuda.max_memory_allocated on CUDA; a workload that runs out of
memory (CUDA, or an allocation refused under `ulimit -v`) prints {"peer", "workload", "oom": true, ...}.

Second-order MAML on random inputs of the workload's shapes:
- sinusoid: MLP 1-40-40-1, K=10 support + 10 query, meta-batch 25, 1 SGD step, lr 0.01.
- omniglot: Conv-4 (64 filters, BatchNorm with batch statistics), 1x28x28, 5-way 1-shot, 15 query
  per class, meta-batch 8, 5 SGD steps, lr 0.4.
- omniglot20 (GPU variant): as omniglot, 20-way 1-shot, meta-batch 32, 5 steps.
- miniimagenet-conv4: Conv-4 (32 filters), 3x84x84, 5-way 1-shot, 15 query per class, meta-batch 4,
  5 SGD steps, lr 0.01 (MAML's miniImageNet setting).
- miniimagenet-resnet12: ResNet-12 (widths 64-160-320-640, as runtime/src/nn/resnet.rs: per block three
  3x3 conv (no bias)-BatchNorm layers with LeakyReLU(0.1), a 1x1 conv-BatchNorm shortcut, 2x2 max-pooling;
  then global average pooling and a linear head), 3x84x84, 5-way 5-shot, 15 query per class,
  meta-batch 4, 5 SGD steps, lr 0.01; miniimagenet-resnet12-long: the same with 20 steps.
BatchNorm uses batch statistics (track_running_stats=False), as metaloop without running statistics.
The timed step: inner loops for every task of the meta-batch, the query loss, the meta-gradient
(backward) and an Adam outer step. The median over timed iterations, after warm-up.

The peer "metaloop-higher" is higher's loop with `import metaloop as higher` as its only change.

Usage: python peers.py --peer higher|metaloop-higher|torchfunc|torchopt --workload sinusoid|omniglot|omniglot20|
       miniimagenet-conv4|miniimagenet-resnet12|miniimagenet-resnet12-long
       [--iters 20] [--warmup 3] [--threads 2] [--device cpu|cuda] [--meta-batch T] [--steps N]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WORKLOADS = {
    "sinusoid": dict(kind="mlp", meta_batch=25, steps=1, lr=0.01, support=10, query=10),
    "omniglot": dict(kind="conv", ways=5, shots=1, queries=15, meta_batch=8, steps=5, lr=0.4, filters=64),
    "omniglot20": dict(kind="conv", ways=20, shots=1, queries=15, meta_batch=32, steps=5, lr=0.4, filters=64),
    "miniimagenet-conv4": dict(kind="conv", ways=5, shots=1, queries=15, meta_batch=4, steps=5, lr=0.01, filters=32,
                               channels=3, side=84),
    "miniimagenet-resnet12": dict(kind="resnet12", ways=5, shots=5, queries=15, meta_batch=4, steps=5, lr=0.01,
                                  widths=(64, 160, 320, 640), channels=3, side=84),
    "miniimagenet-resnet12-long": dict(kind="resnet12", ways=5, shots=5, queries=15, meta_batch=4, steps=20, lr=0.01,
                                       widths=(64, 160, 320, 640), channels=3, side=84),
}


class ResNetBlock(nn.Module):
    """runtime/src/nn/resnet.rs's ResNetBlock (MetaOptNet's BasicBlock), names included."""

    def __init__(self, inplanes, planes):
        super().__init__()
        for i, c in enumerate([inplanes, planes, planes]):
            self.add_module(f"conv{i + 1}", nn.Conv2d(c, planes, 3, padding=1, bias=False))
            self.add_module(f"bn{i + 1}", nn.BatchNorm2d(planes, track_running_stats=False))
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False),
                                        nn.BatchNorm2d(planes, track_running_stats=False))

    def forward(self, x):
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        return F.max_pool2d(F.leaky_relu(out + self.downsample(x), 0.1), 2)


class ResNet12(nn.Module):
    def __init__(self, widths, ways, in_channels):
        super().__init__()
        ins = [in_channels] + list(widths[:3])
        for i in range(4):
            self.add_module(f"layer{i + 1}", nn.Sequential(ResNetBlock(ins[i], widths[i])))
        self.classifier = nn.Linear(widths[3], ways)

    def forward(self, x):
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_model(w):
    if w["kind"] == "mlp":
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    if w["kind"] == "resnet12":
        return ResNet12(w["widths"], w["ways"], w["channels"])
    layers, c, side = [], w.get("channels", 1), w.get("side", 28)
    for _ in range(4):
        layers += [nn.Conv2d(c, w["filters"], 3, padding=1), nn.BatchNorm2d(w["filters"], track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        c, side = w["filters"], side // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(w["filters"] * side * side, w["ways"]))


def make_batch(w, device):
    t = w["meta_batch"]
    if w["kind"] == "mlp":
        xs = torch.rand(t, w["support"], 1, device=device) * 10 - 5
        xq = torch.rand(t, w["query"], 1, device=device) * 10 - 5
        return xs, torch.sin(xs), xq, torch.sin(xq)
    ns, nq = w["ways"] * w["shots"], w["ways"] * w["queries"]
    shape = (w.get("channels", 1), w.get("side", 28), w.get("side", 28))
    xs = torch.rand(t, ns, *shape, device=device)
    xq = torch.rand(t, nq, *shape, device=device)
    ys = torch.arange(w["ways"], device=device).repeat_interleave(w["shots"]).expand(t, ns).contiguous()
    yq = torch.arange(w["ways"], device=device).repeat_interleave(w["queries"]).expand(t, nq).contiguous()
    return xs, ys, xq, yq


def loss_fn(w):
    return F.mse_loss if w["kind"] == "mlp" else F.cross_entropy


def step_higher(model, meta_opt, w, batch, higher=None):
    if higher is None:
        import higher
    xs, ys, xq, yq = batch
    loss = loss_fn(w)
    inner_opt = torch.optim.SGD(model.parameters(), lr=w["lr"])
    meta_opt.zero_grad()
    for i in range(w["meta_batch"]):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(w["steps"]):
                diffopt.step(loss(fmodel(xs[i]), ys[i]))
            (loss(fmodel(xq[i]), yq[i]) / w["meta_batch"]).backward()
    meta_opt.step()


def step_metaloop_higher(model, meta_opt, w, batch):
    """higher's loop above, unchanged, with `import metaloop as higher` (metaloop's Python package:
    innerloop_ctx runs the differentiable SGD steps in metaloop, the model's forward natively when
    metaloop has its layers)."""
    import metaloop as higher
    step_higher(model, meta_opt, w, batch, higher=higher)


def step_torchfunc(model, meta_opt, w, batch):
    from torch.func import functional_call, grad, vmap
    xs, ys, xq, yq = batch
    loss = loss_fn(w)
    params = dict(model.named_parameters())

    def inner(p, x, y):
        return loss(functional_call(model, p, (x,)), y)

    def task(p, x_s, y_s, x_q, y_q):
        for _ in range(w["steps"]):
            g = grad(inner)(p, x_s, y_s)
            p = {k: v - w["lr"] * g[k] for k, v in p.items()}
        return inner(p, x_q, y_q)

    meta_opt.zero_grad()
    losses = vmap(task, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)
    losses.mean().backward()
    meta_opt.step()


def step_torchopt(model, meta_opt, w, batch):
    import torchopt
    xs, ys, xq, yq = batch
    loss = loss_fn(w)
    inner_opt = torchopt.MetaSGD(model, lr=w["lr"])
    state = torchopt.extract_state_dict(model)
    meta_opt.zero_grad()
    for i in range(w["meta_batch"]):
        for _ in range(w["steps"]):
            inner_opt.step(loss(model(xs[i]), ys[i]))
        (loss(model(xq[i]), yq[i]) / w["meta_batch"]).backward()
        torchopt.recover_state_dict(model, state)
    meta_opt.step()


STEPS = {"higher": step_higher, "metaloop-higher": step_metaloop_higher, "torchfunc": step_torchfunc,
         "torchopt": step_torchopt}


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", choices=sorted(STEPS), required=True)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--meta-batch", type=int, help="override the workload's (e.g. to probe memory per task)")
    ap.add_argument("--steps", type=int, help="override the workload's inner steps (memory per step)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    w = dict(WORKLOADS[a.workload])
    for key in ("meta_batch", "steps"):
        if getattr(a, key) is not None:
            w[key] = getattr(a, key)
    device = torch.device(a.device)
    model = make_model(w).to(device)
    meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch(w, device)
    step = STEPS[a.peer]
    times = []

    def peak():
        return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mib()

    for i in range(a.warmup + a.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            step(model, meta_opt, w, batch)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
                raise
            print(json.dumps({"peer": a.peer, "workload": a.workload, "oom": True, "peak_mib": peak(),
                              "threads": a.threads, "device": a.device}))
            return
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({"peer": a.peer, "workload": a.workload, "tasks_per_s": w["meta_batch"] / median, "median_s": median,
                      "peak_mib": peak(), "threads": a.threads, "device": a.device,
                      "meta_batch": w["meta_batch"], "steps": w["steps"]}))


if __name__ == "__main__":
    main()
