//! Does a task's meta-gradient depend on how many tasks share its batch? Task i's gradient
//! (θ0 and the learned hyperparameters, f32, on the CPU) computed in batches of 1, 2, 3 and 6
//! tasks, compared bit for bit. `run.reproducible` computes every task alone, so its sums never
//! depend on the answer; this test records the answer for the task-batched kernels.

use crate::algorithms::{adapt, query_losses};
use crate::bench::{self, Model, Options, Workload, WORKLOADS};
use crate::config::{AlgorithmName, ConvTasks, Memory, Precision};
use crate::train::Trainer;
use tch::{Device, Tensor};

const TASKS: usize = 6;

fn options() -> Options {
    Options {
        iters: 1,
        warmup: 0,
        device: Device::Cpu,
        fused: false,
        workers: 1,
        threads: 1,
        memory: Memory::Full,
        algorithm: AlgorithmName::Maml,
        task_chunk: 0,
        precision: Precision::Default,
        conv_tasks: ConvTasks::Auto,
        channels_last: false,
        reproducible: false,
        // No planning: the test runs the settings it names.
        memory_budget: crate::config::MemoryBudget::Gib(0.0),
        fixed: crate::plan::Fixed::default(),
    }
}

/// The bits of each task's meta-gradient (θ0 then the learned hyperparameters, flat) when the
/// tasks run in batches of `size`.
fn per_task_bits(t: &mut Trainer, size: usize) -> Vec<Vec<u32>> {
    let batch = t.tasks.next_batch(&t.cfg, 0, 0..TASKS).unwrap();
    let batch = t.net.prepare(batch).unwrap();
    let steps = t.cfg.algorithm.inner_steps;
    let mut inputs = vec![t.meta.theta.flat().shallow_clone()];
    inputs.extend(t.meta.learned.iter().map(|h| h.tensor.shallow_clone()));
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let mut out = Vec::new();
    for start in (0..TASKS).step_by(size) {
        let b = batch.slice(start..start + size).unwrap();
        let shard = t.net.shard(&t.cfg, &t.meta, 0, &b);
        let inner = adapt(&shard, &b, steps, true, |_, _| Ok(())).unwrap();
        let q = query_losses(&shard, &inner, &b, steps - 1).unwrap();
        for j in 0..size as i64 {
            let g = Tensor::run_backward(&[q.loss.get(j)], &refs, true, false);
            let flat: Vec<Tensor> = g.iter().map(|g| g.reshape([-1])).collect();
            let v = Vec::<f32>::try_from(&Tensor::cat(&flat, 0)).unwrap();
            out.push(v.iter().map(|x| x.to_bits()).collect());
        }
    }
    out
}

/// Each task's gradient bits in batches of 1, 2, 3 and 6 tasks.
fn bits_by_batch_size(w: &Workload, learn_lr: bool) -> Vec<Vec<Vec<u32>>> {
    let mut w = *w;
    w.meta_batch = TASKS as i64;
    let mut t = bench::trainer(&w, &options()).unwrap();
    if learn_lr {
        // The sinusoid config's own tasks and model, with a learned inner lr per tensor.
        let mut cfg = t.cfg.clone();
        cfg.algorithm.learn_lr = true;
        t = Trainer::builder(&cfg).build().unwrap();
    }
    [1, 2, 3, 6]
        .into_iter()
        .map(|size| per_task_bits(&mut t, size))
        .collect()
}

/// Measured with libtorch 2.11.0's CPU kernels: a task's gradient is the same in batches of 2,
/// 3 and 6 (asserted), but a task alone gets other bits (about 1 ulp in the MLP; amplified by
/// the inner steps in the Conv-4): batched matrix products and convolutions take another path
/// for one task. So `run.reproducible` runs every task alone, whatever the split.
#[test]
fn per_task_gradients_against_the_batch_size() {
    let sinusoid = WORKLOADS[0];
    let conv = Workload {
        name: "tiny-conv",
        model: Model::Conv4 { filters: 8 },
        steps: 2,
        ..WORKLOADS[1]
    };
    for (name, w, learn) in [("mlp", sinusoid, true), ("conv4", conv, false)] {
        let bits = bits_by_batch_size(&w, learn);
        for (size, batched) in [2, 3, 6].iter().zip(&bits[1..]) {
            assert_eq!(
                batched, &bits[1],
                "{name}: batches of {size} against batches of 2"
            );
        }
    }
}
