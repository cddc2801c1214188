//! The meta-training configuration: plain serde structs.
//!
//! Each field names its default in its `#[serde(default ...)]` attribute, so a TOML file names
//! only what differs. A field without one takes its type's default (0, false, "", unset).
//! `Default` reads an empty table, so it cannot disagree with the attributes. An unknown key is
//! an error.
//!
//! A field's doc comment is its line in docs/configuration.md; an `Allowed:` line is that
//! table's allowed values (engine/tests/config_reference.rs writes and checks the file).
//! `validate` (config/validate.rs) checks every value's range and names the offending key.
//! Reading files and applying `--set` overrides is the launcher's job.

mod algorithm;
mod budget;
mod choice;
mod outer;
mod validate;

pub use algorithm::AlgorithmConfig;
pub use budget::MemoryBudget;
pub use choice::{
    AlgorithmName, Augment, Backbone, Comm, ConvTasks, DeviceChoice, Dtype, EvalBatchNorm, Memory,
    OptimizerName, Precision, Schedule, TaskKind,
};
pub use outer::{OptimizerOptions, OuterConfig};

use serde::{Deserialize, Serialize};

/// A value that failed validation: the dotted key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// `impl Default` from the field attributes: the value serde gives an empty table.
macro_rules! default_from_fields {
    ($($name:ident),+) => {$(
        impl Default for $name {
            fn default() -> Self {
                let empty = serde_json::Value::Object(serde_json::Map::new());
                serde_json::from_value(empty).expect("every field has a default")
            }
        }
    )+};
}

default_from_fields!(
    TrainConfig,
    RunConfig,
    TaskConfig,
    ModelConfig,
    DropBlockConfig,
    AlgorithmConfig,
    OuterConfig,
    EvalConfig,
    LogConfig
);

/// The defaults that are not their type's default, named by the fields' attributes.
mod d {
    use super::*;

    pub fn u64_<const N: u64>() -> u64 {
        N
    }
    pub fn usize_<const N: usize>() -> usize {
        N
    }
    pub fn i64_<const N: i64>() -> i64 {
        N
    }
    pub fn u32_<const N: u32>() -> u32 {
        N
    }
    pub fn yes() -> bool {
        true
    }
    pub fn run_name() -> String {
        "run".into()
    }
    pub fn out_dir() -> String {
        "runs".into()
    }
    pub fn cpu() -> DeviceChoice {
        DeviceChoice::Cpu
    }
    pub fn f32() -> Dtype {
        Dtype::F32
    }
    pub fn sinusoid() -> TaskKind {
        TaskKind::Sinusoid
    }
    pub fn no_augment() -> Augment {
        Augment::None
    }
    pub fn mlp() -> Backbone {
        Backbone::Mlp
    }
    pub fn hidden() -> Vec<i64> {
        vec![40, 40]
    }
    pub fn widths() -> Vec<i64> {
        vec![64, 160, 320, 640]
    }
    pub fn drop_rate() -> f64 {
        0.1
    }
    pub fn maml() -> AlgorithmName {
        AlgorithmName::Maml
    }
    pub fn inner_lr() -> f64 {
        0.01
    }
    pub fn full() -> Memory {
        Memory::Full
    }
    pub fn adam() -> OptimizerName {
        OptimizerName::Adam
    }
    pub fn sgd() -> OptimizerName {
        OptimizerName::Sgd
    }
    pub fn outer_lr() -> f64 {
        1e-3
    }
    pub fn constant() -> Schedule {
        Schedule::Constant
    }
    pub fn third() -> f64 {
        1.0 / 3.0
    }
    pub fn gamma() -> f64 {
        0.1
    }
    pub fn imaml_lambda() -> f64 {
        2.0
    }
    pub fn transductive() -> EvalBatchNorm {
        EvalBatchNorm::Transductive
    }
}

/// Everything a meta-training run needs: one section per table of the TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub task: TaskConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub algorithm: AlgorithmConfig,
    #[serde(default)]
    pub outer: OuterConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// Identity, seeds and placement of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The run directory's name under `out_dir`.
    /// Allowed: a plain directory name (no `/`, not starting with `.`).
    #[serde(default = "d::run_name")]
    pub name: String,
    /// Directory that holds run directories.
    /// Allowed: a non-empty path.
    #[serde(default = "d::out_dir")]
    pub out_dir: String,
    /// Seed of initialisation and of task sampling.
    #[serde(default)]
    pub seed: u64,
    /// Where a rank computes: the CPU, cuda:<local rank>, or CUDA when available.
    #[serde(default = "d::cpu")]
    pub device: DeviceChoice,
    /// The floating-point type of parameters and data.
    #[serde(default = "d::f32")]
    pub dtype: Dtype,
    /// Compare a checksum of the meta-parameters across ranks every this many iterations
    /// (0 = never). A mismatch stops every rank.
    #[serde(default = "d::u64_::<100>")]
    pub consistency_every: u64,
    /// libtorch's CPU threads per rank (0 = libtorch's choice). Small models (the sinusoid MLP)
    /// run fastest on 1. Under mpirun: cores / ranks per node.
    /// Allowed: 0 to 4096.
    #[serde(default)]
    pub threads: usize,
    /// Task-parallel worker threads per rank, each with threads / workers intra-op threads
    /// (0 = automatic: one per thread on the CPU, one on CUDA; engine::workers).
    /// Allowed: 0 to 4096.
    #[serde(default)]
    pub workers: usize,
    /// Tasks each worker runs at once (0 = all of its tasks). A worker runs its tasks in chunks
    /// of this many, one after another, and adds up their meta-gradients before the all-reduce:
    /// the same meta-gradient (up to summation order) with one chunk's unroll in memory at a
    /// time (docs/large-models.md).
    /// Allowed: 0 to 16777216.
    #[serde(default)]
    pub task_chunk: usize,
    /// Bit-identical results on any number of ranks, workers and task chunks (docs/faults.md):
    /// each task's meta-gradient computed alone, summed exactly as integers on a fixed-point
    /// scale (engine::exact), one intra-op thread per worker on the CPU. Off by default: it
    /// costs time (benches/README.md). Left out of the config's hash while false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reproducible: bool,
    /// Peak memory the run may hold, GiB: "auto" (free memory and limits), a number, or 0 (no
    /// planning). The planner measures one task and picks the task chunk, workers, memory mode
    /// and checkpoint interval the config leaves out (docs/large-models.md). Not hashed at "auto".
    /// Allowed: "auto", or a number of GiB from 0 to 1048576.
    #[serde(default, skip_serializing_if = "MemoryBudget::is_auto")]
    pub memory_budget_gib: MemoryBudget,
    /// Seconds a collective (all-reduce, broadcast, barrier) may take before the job is ended
    /// as hung, naming the collective and the iteration (0 = wait for ever).
    #[serde(default = "d::u64_::<600>")]
    pub collective_timeout_s: u64,
    /// How convolutions and matrix products compute: "default" (libtorch's: TF32 convolutions
    /// and f32 matrix products on CUDA), "fp32" (no TF32), "tf32" (CUDA only) or "bf16" (bf16
    /// convolutions and matrix products, the rest f32). Left out of the config's hash while
    /// "default".
    #[serde(default, skip_serializing_if = "Precision::is_default")]
    pub precision: Precision,
    /// How ranks all-reduce the meta-gradient: "mpi" through host memory (several ranks may share
    /// a GPU), "nccl" on the GPU (CUDA runs), "auto" NCCL when every rank of a node has its own
    /// GPU, else MPI. Left out of the config's hash while "auto".
    #[serde(default, skip_serializing_if = "Comm::is_auto")]
    pub comm: Comm,
    /// How task-batched convolutions run their tasks: "auto" (one convolution per task on the
    /// CPU, one grouped cuDNN kernel on CUDA), "grouped" (tasks folded into the channels),
    /// "per_task", or "gemm" (im2col and one batched matrix product with per-task weights). The
    /// values are the same up to summation order. Left out of the config's hash while "auto".
    #[serde(default, skip_serializing_if = "ConvTasks::is_auto")]
    pub conv_tasks: ConvTasks,
    /// Folded (grouped) convolutions and their BatchNorm in channels-last memory order (NHWC),
    /// as cuDNN's tensor-core kernels prefer. Same values up to summation order. Left out of the
    /// config's hash while false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub channels_last: bool,
}

/// The task distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The task distribution; `folder` is folder-per-class images.
    #[serde(default = "d::sinusoid")]
    pub kind: TaskKind,
    /// Classes per task (classification).
    /// Allowed: 2 to 65536 (image tasks).
    #[serde(default = "d::i64_::<5>")]
    pub ways: i64,
    /// Support examples per class (classification) or support points K (regression).
    /// Allowed: 1 to 65536.
    #[serde(default = "d::i64_::<10>")]
    pub shots: i64,
    /// Query examples per class (classification) or query points (regression).
    /// Allowed: 1 to 65536.
    #[serde(default = "d::i64_::<10>")]
    pub queries: i64,
    /// Dataset root (image datasets). For "folder": the meta-training root.
    /// Allowed: a directory; required by every kind but "sinusoid".
    #[serde(default)]
    pub root: String,
    /// For "folder": the validation root.
    #[serde(default)]
    pub val_root: Option<String>,
    /// For "folder": the test root.
    #[serde(default)]
    pub test_root: Option<String>,
    /// Where decoded images are cached ("" = the per-user cache, `~/.cache/metaloop/decoded`).
    #[serde(default)]
    pub cache_dir: String,
    /// Side of the square images after resizing (28 Omniglot, 84 miniImageNet).
    /// Allowed: 8 to 4096; 32 for "cifarfs" and "fc100".
    #[serde(default = "d::i64_::<28>")]
    pub image_size: i64,
    /// For "cifarfs": the directory of the split's class lists (train.txt, val.txt, test.txt).
    /// Allowed: a directory; required by "cifarfs".
    #[serde(default)]
    pub split_dir: Option<String>,
    /// Augments the support images of training tasks. "standard" is MetaOptNet's random crop
    /// with padding, horizontal flip and colour jitter (`data::augment`), drawn from each task's
    /// seed.
    /// Allowed: "none" for "sinusoid".
    #[serde(default = "d::no_augment")]
    pub augment: Augment,
}

/// The backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// "mlp" (regression), "conv4" or "resnet12" (classification).
    #[serde(default = "d::mlp")]
    pub backbone: Backbone,
    /// Hidden widths of the MLP.
    /// Allowed: 1 to 1024 widths, each 1 to 65536.
    #[serde(default = "d::hidden")]
    pub hidden: Vec<i64>,
    /// Filters of each Conv-4 block.
    /// Allowed: 1 to 65536.
    #[serde(default = "d::i64_::<64>")]
    pub filters: i64,
    /// The four block widths of ResNet-12.
    /// Allowed: 4 widths, each 1 to 65536.
    #[serde(default = "d::widths")]
    pub widths: Vec<i64>,
    /// ResNet-12's MetaOptNet regularisation (unset = none).
    /// Allowed: a table `{ rate, size }`; "resnet12" only.
    #[serde(default)]
    pub dropblock: Option<DropBlockConfig>,
    /// MAML++'s per-step BatchNorm weights and biases (BNWB, Antoniou et al. 2019): every
    /// BatchNorm holds one row of "weight" and "bias" per inner step, `[inner_steps, C]`; inner
    /// step s uses row s, the query after the last step the last row, and meta-test steps past
    /// the rows the last row. Statistics stay the batch's own (BNRS is not kept).
    /// Allowed: "conv4" and "resnet12", not with "imaml" or "pretrain".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_step_batchnorm: bool,
    /// A safetensors file of PyTorch-named starting weights (`runtime::nn::load_starting_weights`).
    /// Every parameter must be there with its shape, except the head. The head stays freshly
    /// initialised when the file lacks it or has it for another number of ways.
    #[serde(default)]
    pub init_from: Option<String>,
}

/// `model.dropblock = { rate, size }`: Dropout(rate) after ResNet-12's blocks 1 and 2,
/// DropBlock(rate, size) after blocks 3 and 4, as MetaOptNet (whose values, 0.1 and 5, are the
/// defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropBlockConfig {
    /// The drop rate.
    /// Allowed: [0, 1).
    #[serde(default = "d::drop_rate")]
    pub rate: f64,
    /// DropBlock's block side.
    /// Allowed: 1 to 65536.
    #[serde(default = "d::i64_::<5>")]
    pub size: i64,
}

/// Validation during training and the final meta-test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validate every this many iterations (0 = never).
    #[serde(default = "d::u64_::<500>")]
    pub every: u64,
    /// Tasks per validation.
    /// Allowed: 2 to 2^24 (when `every` > 0).
    #[serde(default = "d::usize_::<100>")]
    pub val_tasks: usize,
    /// Tasks of the final meta-test (600 in the papers).
    /// Allowed: 2 to 2^24.
    #[serde(default = "d::usize_::<600>")]
    pub test_tasks: usize,
    /// Inner steps at evaluation (0 = the training value).
    /// Allowed: 0 to 2^24.
    #[serde(default)]
    pub inner_steps: usize,
    /// Classes per validation and meta-test task (0 = `task.ways`). Another number than the
    /// trained one evaluates with a head of this width whose rows start at zero
    /// (engine::protocol). Regression tasks have no classes: 0 only.
    /// Allowed: 0, or 2 to 65536.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ways: usize,
    /// Support examples per class (classification) or support points K (regression) of
    /// validation and meta-test tasks (0 = `task.shots`).
    /// Allowed: 0 to 65536.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shots: usize,
    /// How BatchNorm normalises at validation and meta-test: with the query batch's own
    /// statistics ("transductive", MAML's convention), with the support set's
    /// ("support_only"), or, support and query alike, with running statistics that training
    /// keeps ("running": PyTorch's eval mode; one row per inner step with
    /// `model.per_step_batchnorm`, MAML++'s BNRS). "running" saves them in model.safetensors.
    /// Allowed: "running" with "conv4" or "resnet12", not with "pretrain".
    #[serde(default = "d::transductive")]
    pub batchnorm: EvalBatchNorm,
}

/// Logging and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Write a metrics line every this many iterations.
    /// Allowed: at least 1.
    #[serde(default = "d::u64_::<20>")]
    pub every: u64,
    /// Write a checkpoint every this many iterations (0 = only at the end).
    #[serde(default = "d::u64_::<500>")]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    /// Allowed: 1 to 2^24.
    #[serde(default = "d::usize_::<3>")]
    pub keep_checkpoints: usize,
    /// Write a TensorBoard event file into the run directory (the scalars of every metrics
    /// line and of every validation; engine::fit writes them).
    #[serde(default = "d::yes")]
    pub tensorboard: bool,
}

/// Left out of the written config (and of its hash) at its default, so that configs written
/// before the key existed keep their hash.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TrainConfig {
    /// Classes per evaluation task: `eval.ways`, or `task.ways` when 0.
    pub fn eval_ways(&self) -> usize {
        match self.eval.ways {
            0 => usize::try_from(self.task.ways).unwrap_or(0),
            w => w,
        }
    }

    /// Support examples per class (support points) of evaluation tasks: `eval.shots`, or
    /// `task.shots` when 0.
    pub fn eval_shots(&self) -> usize {
        match self.eval.shots {
            0 => usize::try_from(self.task.shots).unwrap_or(0),
            s => s,
        }
    }

    /// Inner steps used at evaluation.
    pub fn eval_inner_steps(&self) -> usize {
        if self.eval.inner_steps == 0 {
            self.algorithm.inner_steps
        } else {
            self.eval.inner_steps
        }
    }

    /// True for classification tasks (accuracy is reported), false for regression (MSE).
    pub fn is_classification(&self) -> bool {
        self.task.kind != TaskKind::Sinusoid
    }
}
