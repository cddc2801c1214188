//! The config's enumerations: serde enums with lowercase names, listed in `ALL`.

use serde::{Deserialize, Serialize};

/// A config enumeration: serde reads and writes the lowercase names, so an unknown value fails
/// to parse with serde's "unknown variant `x`, expected one of ..." (the launcher adds the key);
/// `ALL`, `name()`, `Display` and `FromStr` come with it.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name configs use.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let all: Vec<String> = Self::ALL.iter().map(|v| format!("{:?}", v.name())).collect();
                    format!("must be one of {}, got {s:?}", all.join(", "))
                })
            }
        }
    };
}

choice! {
    /// Where a rank computes (`run.device`): the CPU, cuda:<local rank>, or CUDA when libtorch
    /// sees a device (else the CPU).
    DeviceChoice { Cpu = "cpu", Cuda = "cuda", Auto = "auto" }
}

choice! {
    /// The floating-point type of parameters and data (`run.dtype`).
    Dtype { F32 = "f32", F64 = "f64" }
}

choice! {
    /// How convolutions and matrix products compute (`run.precision`, runtime::precision):
    /// "default" is libtorch's own choice (on CUDA: TF32 convolutions, f32 matrix products);
    /// "fp32" strict f32; "tf32" TF32 for both (CUDA only); "bf16" both in bf16, everything else
    /// (parameters, optimizer state, BatchNorm, losses, meta-gradient) in f32.
    Precision { Default = "default", Fp32 = "fp32", Tf32 = "tf32", Bf16 = "bf16" }
}

choice! {
    /// How ranks all-reduce the meta-gradient (`run.comm`): "mpi" through host memory (also for
    /// several ranks on one GPU), "nccl" on the GPU (CUDA runs, one GPU per rank), "auto" NCCL
    /// when every rank of a node has a GPU of its own, else MPI.
    Comm { Auto = "auto", Mpi = "mpi", Nccl = "nccl" }
}

impl Default for Precision {
    fn default() -> Self {
        Precision::Default
    }
}

impl Precision {
    /// True for "default" (left out of a serialised config, so its hash stays as before).
    pub fn is_default(&self) -> bool {
        *self == Precision::Default
    }
}

choice! {
    /// How task-batched convolutions run their tasks (`run.conv_tasks`, runtime::nn::ConvTasks):
    /// "auto" (a loop over tasks on the CPU, one grouped cuDNN kernel on CUDA), "grouped" (tasks
    /// folded into the channels, `groups = T`), "per_task" (one convolution per task) or "gemm"
    /// (tasks folded into the batch: im2col and one batched matrix product with per-task weights).
    ConvTasks { Auto = "auto", Grouped = "grouped", PerTask = "per_task", Gemm = "gemm" }
}

impl Default for ConvTasks {
    fn default() -> Self {
        ConvTasks::Auto
    }
}

impl ConvTasks {
    /// True for "auto" (left out of a serialised config, as `Precision::is_default`).
    pub fn is_auto(&self) -> bool {
        *self == ConvTasks::Auto
    }
}

impl Default for Comm {
    fn default() -> Self {
        Comm::Auto
    }
}

impl Comm {
    /// True for "auto" (left out of a serialised config, as `Precision::is_default`).
    pub fn is_auto(&self) -> bool {
        *self == Comm::Auto
    }
}

choice! {
    /// The task distribution (`task.kind`); `folder` is folder-per-class images.
    TaskKind { Sinusoid = "sinusoid", Omniglot = "omniglot",
        Miniimagenet = "miniimagenet", Tieredimagenet = "tieredimagenet", Cifarfs = "cifarfs",
        Fc100 = "fc100", Folder = "folder" }
}

choice! {
    /// The model (`model.backbone`).
    Backbone { Mlp = "mlp", Conv4 = "conv4", Resnet12 = "resnet12" }
}

choice! {
    /// Data augmentation of the support images of training tasks (`task.augment`): "standard"
    /// is MetaOptNet's random crop with padding, horizontal flip and colour jitter
    /// (`data::augment`), drawn from each task's seed.
    Augment { None = "none", Standard = "standard" }
}

choice! {
    /// How BatchNorm normalises a task's query at meta-test (`eval.batchnorm`): with the query
    /// batch's own statistics ("transductive", MAML's convention), with the support set's
    /// ("support_only"), or with running statistics kept during training ("running",
    /// engine::running).
    EvalBatchNorm { Transductive = "transductive", SupportOnly = "support_only", Running = "running" }
}

choice! {
    /// The meta-learning algorithm (`algorithm.name`); each lives in `engine::algorithms`
    /// (`lslr`: MAML with MAML++'s per-layer, per-step learned inner learning rates; `imaml`:
    /// implicit gradients at a proximal inner solution).
    AlgorithmName { Maml = "maml", Fomaml = "fomaml", Metasgd = "metasgd", Anil = "anil",
        Reptile = "reptile", Pretrain = "pretrain", Lslr = "lslr", Imaml = "imaml" }
}

choice! {
    /// How second-order meta-gradients keep the unroll (`algorithm.memory`).
    Memory { Full = "full", Recompute = "recompute" }
}

choice! {
    /// An optimizer (`outer.optimizer`, `algorithm.inner_optimizer`): one of runtime::optim's,
    /// as torch.optim's class of that name.
    OptimizerName { Adam = "adam", Sgd = "sgd", Adamw = "adamw", Adamax = "adamax",
        Adagrad = "adagrad", Adadelta = "adadelta", Rmsprop = "rmsprop", Rprop = "rprop",
        Radam = "radam" }
}

impl OptimizerName {
    /// True for "sgd" (the inner optimizer's default, left out of a serialised config so that
    /// its hash stays as before).
    pub fn is_sgd(&self) -> bool {
        *self == OptimizerName::Sgd
    }

    /// Whether the optimizer has a "momentum" hyperparameter (sgd, rmsprop).
    pub fn has_momentum(self) -> bool {
        matches!(self, OptimizerName::Sgd | OptimizerName::Rmsprop)
    }
}

choice! {
    /// The outer learning-rate schedule after the warm-up (`outer.schedule`; engine::schedule).
    Schedule { Constant = "constant", Cosine = "cosine", Step = "step", Linear = "linear" }
}
