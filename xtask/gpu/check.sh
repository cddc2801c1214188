#!/usr/bin/env bash
# The prepared GPU check of metaloop: packed by `cargo xtask gpu-kit` as .gpu/check.sh, run on a
# GPU machine that has no Rust toolchain and no network (python3 with PyTorch is enough).
#
#   bash .gpu/check.sh [--out DIR]      the check on cuda:0 (within 8 minutes on an H100)
#   bash .gpu/check.sh --dry-run        the same steps on the CPU with tiny sizes
#
# Steps, each under `timeout` and within its share of the time budget (a step whose share is spent
# is reported as skipped, never silently dropped):
#   tests   every CUDA test binary in the kit (--dry-run: each binary lists its tests, which proves
#           it loads)
#   bench   the memory goal (ResNet-12, 5 and 20 steps, planned into a 70 GiB budget; the dry run:
#           the sinusoid into 1 GiB), then
#           `metaloop bench` for omniglot20, omniglot, sinusoid and miniimagenet-resnet12 (the dry
#           run: the first three, and the peers on omniglot only) in each
#           switch combination that matters: run.precision default/fp32/tf32/bf16, the fused
#           optimizer kernels, recompute-and-adjoint for ResNet-12, and for the convolutional
#           workloads the task-batched convolution as batched GEMM (gemm: run.conv_tasks) and
#           grouped in channels-last order (nhwc: run.channels_last); tasks/s and peak memory
#   peers   benches/peers/peers.py (torch.func, higher, TorchOpt) on the same workloads
#   train   a short meta-training on generated Omniglot-layout data, with its meta-test accuracy
#           after adaptation
#   mpi     two ranks on one device through MPI (run.comm = "mpi") against one rank, f64 sinusoid
# Writes DIR/gpu-report.md, DIR/gpu-report.json, DIR/check.log and DIR/logs.tar.gz (four files:
# the device tool brings back at most eight). DIR: --out, else $OUT, else .gpu/out.
#
# Overrides (for running it in-tree, as the dry-run test does): --metaloop PATH, --tests DIR,
# --python PATH, --budget SECONDS.
set -uo pipefail

KIT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=${OUT:-$KIT/out}
DRY=0
METALOOP=$KIT/metaloop
TESTS=$KIT/tests
PY=python3
BUDGET=450
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --metaloop) METALOOP=$2; shift 2 ;;
    --tests) TESTS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR" || { echo "check.sh: cannot create $OUT_DIR" >&2; exit 2; }
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/metaloop-check.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
STEPS=$WORK/steps.tsv
: > "$STEPS"
exec > >(tee "$OUT_DIR/check.log") 2>&1
START=$(date +%s)

# The libraries: the kit's Open MPI, then the machine's own PyTorch and its NVIDIA packages.
if [ -f "$KIT/kit.env" ]; then . "$KIT/kit.env"; fi
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__) + "/lib")' 2>/dev/null || true)
if [ -n "$TORCH_LIB" ]; then
  SITE=$(dirname "$(dirname "$TORCH_LIB")")
  NV=$(ls -d "$SITE"/nvidia/*/lib 2>/dev/null | tr '\n' ':')
  export LD_LIBRARY_PATH=$KIT/lib:$TORCH_LIB:$NV${LD_LIBRARY_PATH:-}
fi
# Open MPI packed with the kit (relocated through OPAL_PREFIX), else the machine's.
if [ -x "$KIT/ompi/bin/mpirun" ]; then
  export OPAL_PREFIX=$KIT/ompi PMIX_INSTALL_PREFIX=$KIT/ompi/pmix PATH=$KIT/ompi/bin:$PATH
  export LD_LIBRARY_PATH=$KIT/ompi/lib:${LD_LIBRARY_PATH:-}
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
export OMPI_MCA_plm_rsh_agent=false OMPI_MCA_btl_vader_single_copy_mechanism=none
# Tests read their fixtures at the path they were compiled with.
if [ -n "${BUILD_ROOT:-}" ] && [ -d "$KIT/fixtures" ] && [ ! -d "$BUILD_ROOT/tests/fixtures" ]; then
  mkdir -p "$BUILD_ROOT/tests" 2>/dev/null && cp -r "$KIT/fixtures" "$BUILD_ROOT/tests/fixtures"
fi
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; BENCH_SIZE=(--iters 1 --warmup 0 --meta-batch 1 --steps 1)
  PEER_SIZE=(--iters 1 --warmup 0 --meta-batch 1 --steps 1 --threads 1)
else
  DEVICE=cuda; BENCH_SIZE=(--iters 5 --warmup 2); PEER_SIZE=(--iters 3 --warmup 1)
fi
echo "check.sh: device $DEVICE, kit $KIT, out $OUT_DIR, budget ${BUDGET}s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/gpu.txt" 2>/dev/null

# step NAME SHARE_END LIMIT CMD...: runs CMD (stdout to $LOGS/NAME.out, stderr to NAME.err) under
# `timeout`, at most LIMIT seconds and never past SHARE_END (seconds since the start); records
# name, status, exit code and seconds in steps.tsv.
step() {
  local name=$1 share_end=$2 limit=$3; shift 3
  local now=$(( $(date +%s) - START ))
  local left=$(( share_end - now ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    printf '%s\tskipped\t-\t0\n' "$name" >> "$STEPS"; echo "  $name: skipped (time budget)"; return
  fi
  local t0=$(date +%s.%N)
  timeout --kill-after=5 "$limit" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.err"
  local rc=$? status=ok
  local secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; elif [ $rc -ne 0 ]; then status=failed; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" >> "$STEPS"
  echo "  $name: $status (exit $rc, ${secs}s)"
}

# Shares of the budget, as ends in seconds since the start.
share() { echo $(( BUDGET * $1 / 100 )); }

echo "[tests]"
END=$(share 25)
for bin in "$TESTS"/*; do
  [ -x "$bin" ] || continue
  if [ "$DRY" = 1 ]; then step "test-$(basename "$bin")" "$END" 60 "$bin" --list
  else step "test-$(basename "$bin")" "$END" 120 "$bin" --test-threads 1; fi
done

echo "[bench]"
END=$(share 62)
WORKLOADS=(omniglot20 omniglot sinusoid miniimagenet-resnet12)
PEER_WORKLOADS=("${WORKLOADS[@]}")
if [ "$DRY" = 1 ]; then
  # One ResNet-12 step takes minutes on a small CPU, and each peer process seconds to import
  # PyTorch: the dry run keeps every kind of step, on fewer workloads.
  WORKLOADS=(omniglot20 omniglot sinusoid); PEER_WORKLOADS=(omniglot)
fi
# The memory goal first: the planner (run.memory_budget_gib) fits ResNet-12 (5 and 20 second-order
# steps, meta-batch 4, 84x84) into a 70 GiB budget on one 80 GB GPU; its plan and peak are in the
# result. The dry run plans the sinusoid into 1 GiB (the step's form only).
if [ "$DRY" = 1 ]; then PLANNED=(sinusoid); BUDGET_GIB=1
else PLANNED=(miniimagenet-resnet12 miniimagenet-resnet12-long); BUDGET_GIB=70; fi
for w in "${PLANNED[@]}"; do
  step "bench-$w-budget$BUDGET_GIB" "$END" 90 "$METALOOP" bench --workload "$w" --device "$DEVICE" \
    --json --iters 2 --warmup 1 --memory-budget-gib "$BUDGET_GIB"
done
for w in "${WORKLOADS[@]}"; do
  for combo in default fp32 tf32 bf16 default+fused recompute gemm nhwc; do
    [ "$combo" = recompute ] && [ "$w" != miniimagenet-resnet12 ] && continue
    # The convolution switches only for convolutional workloads.
    [[ "$combo" =~ ^(gemm|nhwc)$ ]] && [ "$w" = sinusoid ] && continue
    # The dry run proves their form on one workload.
    [[ "$combo" =~ ^(gemm|nhwc)$ ]] && [ "$DRY" = 1 ] && [ "$w" != omniglot ] && continue
    args=(--precision "${combo%%+*}")
    [ "$combo" = recompute ] && args=(--precision default --memory recompute)
    [ "$combo" = gemm ] && args=(--precision default --conv-tasks gemm)
    [ "$combo" = nhwc ] && args=(--precision default --conv-tasks grouped --channels-last)
    [[ "$combo" == *+fused ]] && args+=(--fused)
    step "bench-$w-$combo" "$END" 60 "$METALOOP" bench --workload "$w" --device "$DEVICE" --json \
      "${BENCH_SIZE[@]}" "${args[@]}"
  done
done

echo "[peers]"
END=$(share 84)
if [ -d "$KIT/wheels" ] && ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    "$KIT"/wheels/*.whl > "$LOGS/pip.out" 2>&1 && export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
for w in "${PEER_WORKLOADS[@]}"; do
  for peer in torchfunc higher torchopt; do
    step "peer-$peer-$w" "$END" 60 "$PY" "$KIT/peers/peers.py" --peer "$peer" --workload "$w" \
      --device "$DEVICE" "${PEER_SIZE[@]}"
  done
done

echo "[train]"
END=$(share 93)
# The kit's generated Omniglot-layout zips, else generated now (gen_omniglot.py, a few seconds).
DATA=$KIT/data/omniglot
if [ ! -f "$DATA/images_background.zip" ]; then
  DATA=$WORK/omniglot
  "$PY" "$KIT/gen_omniglot.py" "$DATA" --zip > "$LOGS/gen_omniglot.out" 2>&1
fi
if [ "$DRY" = 1 ]; then TRAIN=(outer.iterations=2 model.filters=8 eval.test_tasks=4 outer.meta_batch=2)
else TRAIN=(outer.iterations=300 eval.test_tasks=200); fi
sets=()
for kv in run.device=\""$DEVICE"\" run.name=\"omniglot-check\" run.out_dir=\""$WORK/runs"\" \
  task.root=\""$DATA"\" task.cache_dir=\""$WORK/cache"\" task.ways=5 task.queries=3 outer.meta_batch=16 \
  eval.every=0 log.every=50 log.checkpoint_every=0 "${TRAIN[@]}"; do sets+=(--set "$kv"); done
step train "$END" 120 "$METALOOP" train --config "$KIT/configs/omniglot_5way_1shot.toml" "${sets[@]}"
cp "$WORK/runs/omniglot-check/report.json" "$WORK/train-report.json" 2>/dev/null
cp "$WORK/runs/omniglot-check/metrics.jsonl" "$WORK/train-metrics.jsonl" 2>/dev/null

echo "[mpi]"
END=$BUDGET
MPI_SETS=(--set run.device=\""$DEVICE"\" --set run.dtype=\"f64\" --set run.comm=\"mpi\"
  --set outer.iterations=3 --set outer.meta_batch=4 --set eval.test_tasks=8 --set eval.every=0
  --set log.checkpoint_every=0 --set run.out_dir=\""$WORK/runs"\")
if command -v mpirun >/dev/null; then
  step mpi-1rank "$END" 60 "$METALOOP" train --config "$KIT/configs/sinusoid.toml" "${MPI_SETS[@]}" \
    --set run.name=\"mpi1\"
  step mpi-2ranks "$END" 90 "$METALOOP" launch -n 2 -- train --config "$KIT/configs/sinusoid.toml" \
    "${MPI_SETS[@]}" --set run.name=\"mpi2\"
else
  printf 'mpi\tskipped\t-\t0\n' >> "$STEPS"; echo "  mpi: skipped (no mpirun)"
fi

echo "[report]"
"$PY" "$KIT/report.py" --work "$WORK" --out "$OUT_DIR" --device "$DEVICE" --dry-run "$DRY" \
  --seconds $(( $(date +%s) - START ))
rc=$?
tar -czf "$OUT_DIR/logs.tar.gz" -C "$WORK" logs steps.tsv $(cd "$WORK" && ls train-* 2>/dev/null) 2>/dev/null
rm -rf "$WORK"
echo "check.sh: $(( $(date +%s) - START ))s, report in $OUT_DIR/gpu-report.md"
exit $rc
