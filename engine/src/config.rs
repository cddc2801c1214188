//! The meta-training configuration: plain serde structs with their defaults on the fields, so a
//! TOML file names only what differs from the defaults, and an unknown key is an error.
//!
//! `TrainConfig::validate` checks every value's range and names the offending key
//! (`algorithm.inner_lr: must be > 0, got -1`). Reading files and applying `--set` overrides is the
//! launcher's job; this module never touches the file system.

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
    /// batch's own statistics ("transductive", MAML's convention) or with the support set's
    /// ("support_only").
    EvalBatchNorm { Transductive = "transductive", SupportOnly = "support_only" }
}

choice! {
    /// The meta-learning algorithm (`algorithm.name`); each lives in `engine::algorithms`
    /// (`lslr`: MAML with MAML++'s per-layer, per-step learned inner learning rates).
    AlgorithmName { Maml = "maml", Fomaml = "fomaml", Metasgd = "metasgd", Anil = "anil",
        Reptile = "reptile", Pretrain = "pretrain", Lslr = "lslr" }
}

choice! {
    /// How second-order meta-gradients keep the unroll (`algorithm.memory`).
    Memory { Full = "full", Recompute = "recompute" }
}

choice! {
    /// The outer (meta) optimizer (`outer.optimizer`).
    OuterOptimizer { Adam = "adam", Sgd = "sgd" }
}

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

/// Everything a meta-training run needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub run: RunConfig,
    pub task: TaskConfig,
    pub model: ModelConfig,
    pub algorithm: AlgorithmConfig,
    pub outer: OuterConfig,
    pub eval: EvalConfig,
    pub log: LogConfig,
}

/// Identity, seeds and placement of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The run directory's name under `out_dir`.
    pub name: String,
    /// Directory that holds run directories.
    pub out_dir: String,
    /// Seed of initialisation and of task sampling.
    pub seed: u64,
    /// "cpu", "cuda" (cuda:<local rank>) or "auto" (cuda when available).
    pub device: DeviceChoice,
    /// "f32" or "f64".
    pub dtype: Dtype,
    /// Compare a checksum of the meta-parameters across ranks every this many iterations
    /// (0 = never); a mismatch stops every rank.
    pub consistency_every: u64,
    /// libtorch's CPU threads per rank (0 = libtorch's choice). Small models (the sinusoid MLP)
    /// run fastest on 1; under mpirun, cores / ranks per node.
    pub threads: usize,
    /// Task-parallel worker threads per rank, each with threads / workers intra-op threads
    /// (0 = automatic: one per thread on the CPU, one on CUDA; engine::workers).
    pub workers: usize,
    /// Seconds a collective (all-reduce, broadcast, barrier) may take before the job is ended
    /// as hung, naming the collective and the iteration (0 = wait for ever).
    pub collective_timeout_s: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "run".into(),
            out_dir: "runs".into(),
            seed: 0,
            device: DeviceChoice::Cpu,
            dtype: Dtype::F32,
            consistency_every: 100,
            threads: 0,
            workers: 0,
            collective_timeout_s: 600,
        }
    }
}

/// The task distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// "sinusoid", "omniglot", "miniimagenet", "tieredimagenet", "cifarfs", "fc100" or "folder".
    pub kind: TaskKind,
    /// Classes per task (classification).
    pub ways: i64,
    /// Support examples per class (classification) or support points K (regression).
    pub shots: i64,
    /// Query examples per class (classification) or query points (regression).
    pub queries: i64,
    /// Dataset root (image datasets). For "folder": the meta-training root.
    pub root: String,
    /// For "folder": the validation and test roots (optional).
    pub val_root: Option<String>,
    pub test_root: Option<String>,
    /// Where decoded images are cached ("" = the per-user cache, `~/.cache/metaloop/decoded`).
    pub cache_dir: String,
    /// Side of the square images after resizing (28 Omniglot, 84 miniImageNet).
    pub image_size: i64,
    /// For "cifarfs": the directory of the split's class lists (train.txt, val.txt, test.txt).
    pub split_dir: Option<String>,
    /// "none" or "standard" (augments the support images of training tasks).
    pub augment: Augment,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            kind: TaskKind::Sinusoid,
            ways: 5,
            shots: 10,
            queries: 10,
            root: String::new(),
            val_root: None,
            test_root: None,
            cache_dir: String::new(),
            image_size: 28,
            split_dir: None,
            augment: Augment::None,
        }
    }
}

/// The backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// "mlp" (regression), "conv4" or "resnet12" (classification).
    pub backbone: Backbone,
    /// Hidden widths of the MLP.
    pub hidden: Vec<i64>,
    /// Filters of each Conv-4 block.
    pub filters: i64,
    /// The four block widths of ResNet-12.
    pub widths: Vec<i64>,
    /// ResNet-12's MetaOptNet regularisation (absent = none).
    pub dropblock: Option<DropBlockConfig>,
    /// A safetensors file of PyTorch-named starting weights (`runtime::nn::load_starting_weights`):
    /// every parameter must be there with its shape, except the head, which stays freshly
    /// initialised when the file lacks it or has it for another number of ways.
    pub init_from: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backbone: Backbone::Mlp,
            hidden: vec![40, 40],
            filters: 64,
            widths: vec![64, 160, 320, 640],
            dropblock: None,
            init_from: None,
        }
    }
}

/// `model.dropblock = { rate, size }`: Dropout(rate) after ResNet-12's blocks 1 and 2,
/// DropBlock(rate, size) after blocks 3 and 4, as MetaOptNet (whose values, 0.1 and 5, are the
/// defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropBlockConfig {
    /// The drop rate, in [0, 1).
    pub rate: f64,
    /// DropBlock's block side.
    pub size: i64,
}

impl Default for DropBlockConfig {
    fn default() -> Self {
        DropBlockConfig { rate: 0.1, size: 5 }
    }
}

/// The meta-learning algorithm and its inner loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmConfig {
    /// "maml", "fomaml", "metasgd", "anil", "reptile", or "pretrain" (the baseline: θ trained
    /// jointly on all tasks' data, with no inner loop, and fine-tuned like the others at test
    /// time), or "lslr" (MAML with MAML++'s learned per-layer, per-step inner learning rates).
    pub name: AlgorithmName,
    /// Inner steps during meta-training.
    pub inner_steps: usize,
    /// Inner learning rate (the initial value when learned).
    pub inner_lr: f64,
    /// Inner SGD momentum (the initial value when learned).
    pub inner_momentum: f64,
    /// Meta-learn the inner lr (one per parameter tensor) as in higher's toy example. Meta-SGD
    /// learns one per element instead.
    pub learn_lr: bool,
    /// Meta-learn the inner momentum (one per parameter tensor).
    pub learn_momentum: bool,
    /// MAML++'s multi-step loss: the query loss after every inner step, weighted (with either
    /// memory mode).
    pub multi_step_loss: bool,
    /// How second-order meta-gradients keep the unroll: "full" (every step's graph, as higher)
    /// or "recompute" (only the parameter and optimizer-state trajectory; each step's graph is
    /// rebuilt in the backward pass: memory independent of activations × steps, about 1.5× the
    /// compute).
    pub memory: Memory,
    /// With "recompute": keep θ and the optimizer state every this many inner steps and
    /// recompute the steps between (0 = ceil(sqrt(inner_steps))).
    pub checkpoint_interval: usize,
}

impl Default for AlgorithmConfig {
    fn default() -> Self {
        AlgorithmConfig {
            name: AlgorithmName::Maml,
            inner_steps: 1,
            inner_lr: 0.01,
            inner_momentum: 0.0,
            learn_lr: false,
            learn_momentum: false,
            multi_step_loss: false,
            memory: Memory::Full,
            checkpoint_interval: 0,
        }
    }
}

/// The outer (meta) optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OuterConfig {
    /// "adam" or "sgd".
    pub optimizer: OuterOptimizer,
    /// Meta learning rate (Reptile: the outer step size ε on θ − φ).
    pub lr: f64,
    /// Tasks per meta-batch, over all ranks.
    pub meta_batch: usize,
    /// Outer iterations.
    pub iterations: u64,
    /// Outer steps skipped in a row (a NaN or Inf in the meta-gradient or an inner loop) before
    /// the run stops.
    pub max_nonfinite_skips: u32,
}

impl Default for OuterConfig {
    fn default() -> Self {
        OuterConfig {
            optimizer: OuterOptimizer::Adam,
            lr: 1e-3,
            meta_batch: 25,
            iterations: 1000,
            max_nonfinite_skips: 5,
        }
    }
}

/// Validation during training and the final meta-test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Validate every this many iterations (0 = never).
    pub every: u64,
    /// Tasks per validation.
    pub val_tasks: usize,
    /// Tasks of the final meta-test (600 in the papers).
    pub test_tasks: usize,
    /// Inner steps at evaluation (0 = the training value).
    pub inner_steps: usize,
    /// Classes per validation and meta-test task (0 = `task.ways`). Another number than the
    /// trained one evaluates with a head of this width whose rows start at zero
    /// (engine::protocol). Regression tasks have no classes: 0 only.
    #[serde(skip_serializing_if = "is_zero")]
    pub ways: usize,
    /// Support examples per class (classification) or support points K (regression) of
    /// validation and meta-test tasks (0 = `task.shots`).
    #[serde(skip_serializing_if = "is_zero")]
    pub shots: usize,
    /// How BatchNorm normalises the query at validation and meta-test.
    pub batchnorm: EvalBatchNorm,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: 500,
            val_tasks: 100,
            test_tasks: 600,
            inner_steps: 0,
            ways: 0,
            shots: 0,
            batchnorm: EvalBatchNorm::Transductive,
        }
    }
}

/// Logging and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Write a metrics line every this many iterations.
    pub every: u64,
    /// Write a checkpoint every this many iterations (0 = only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Write a TensorBoard event file into the run directory (the scalars of every metrics
    /// line and of every validation).
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            every: 20,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            tensorboard: true,
        }
    }
}

/// Left out of the written config (and of its hash) at its default, so that configs written
/// before the key existed keep their hash.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

fn positive(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(err(
            key,
            format!("must be a finite number > 0, got {value}"),
        ))
    }
}

/// A count as i64 for the bounds checks (saturating: a count beyond i64 is beyond every bound).
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn at_least(key: &str, value: i64, min: i64) -> Result<(), ConfigError> {
    if value >= min {
        Ok(())
    } else {
        Err(err(key, format!("must be >= {min}, got {value}")))
    }
}

impl ModelConfig {
    /// The backbone fits the task (an MLP for regression, Conv-4 or ResNet-12 for images) and
    /// its sizes.
    fn check(&self, classification: bool, kind: TaskKind) -> Result<(), ConfigError> {
        match (classification, self.backbone) {
            (false, Backbone::Conv4 | Backbone::Resnet12) => {
                return Err(err(
                    "model.backbone",
                    format!(
                        "sinusoid regression needs \"mlp\", got \"{}\"",
                        self.backbone
                    ),
                ))
            }
            (true, Backbone::Mlp) => {
                return Err(err(
                    "model.backbone",
                    format!("{kind} needs \"conv4\" or \"resnet12\", got \"mlp\""),
                ))
            }
            (false, Backbone::Mlp) | (true, Backbone::Conv4 | Backbone::Resnet12) => {}
        }
        if self.dropblock.is_some() && self.backbone != Backbone::Resnet12 {
            return Err(err("model.dropblock", "applies to \"resnet12\" only"));
        }
        match self.backbone {
            Backbone::Mlp => widths("model.hidden", &self.hidden),
            Backbone::Conv4 => at_least("model.filters", self.filters, 1),
            Backbone::Resnet12 => self.check_resnet12(),
        }
    }

    fn check_resnet12(&self) -> Result<(), ConfigError> {
        if self.widths.len() != 4 {
            return Err(err(
                "model.widths",
                format!("must list 4 block widths, got {}", self.widths.len()),
            ));
        }
        widths("model.widths", &self.widths)?;
        if let Some(d) = &self.dropblock {
            if !(0.0..1.0).contains(&d.rate) {
                return Err(err(
                    "model.dropblock.rate",
                    format!("must be in [0, 1), got {}", d.rate),
                ));
            }
            at_least("model.dropblock.size", d.size, 1)?;
        }
        Ok(())
    }
}

/// A non-empty list of widths >= 1.
fn widths(key: &str, list: &[i64]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(err(key, "must list at least one width"));
    }
    match list.iter().find(|h| **h < 1) {
        Some(h) => Err(err(key, format!("widths must be >= 1, got {h}"))),
        None => Ok(()),
    }
}

impl TaskConfig {
    /// The task's sizes, and the keys its kind needs.
    fn check(&self) -> Result<(), ConfigError> {
        at_least("task.shots", self.shots, 1)?;
        at_least("task.queries", self.queries, 1)?;
        if self.kind != TaskKind::Sinusoid {
            at_least("task.ways", self.ways, 2)?;
            at_least("task.image_size", self.image_size, 8)?;
            if self.root.is_empty() {
                return Err(err(
                    "task.root",
                    format!("must name the {} dataset directory", self.kind),
                ));
            }
            if self.kind == TaskKind::Cifarfs && self.split_dir.is_none() {
                return Err(err(
                    "task.split_dir",
                    "cifarfs needs the directory of train.txt, val.txt and test.txt",
                ));
            }
            let cifar = matches!(self.kind, TaskKind::Cifarfs | TaskKind::Fc100);
            if cifar && self.image_size != 32 {
                return Err(err(
                    "task.image_size",
                    format!(
                        "{} images are 32×32: must be 32, got {}",
                        self.kind, self.image_size
                    ),
                ));
            }
        } else if self.augment != Augment::None {
            return Err(err(
                "task.augment",
                "applies to image tasks only; use \"none\"",
            ));
        }
        Ok(())
    }
}

impl AlgorithmConfig {
    /// The recompute mode's checkpoint interval: `algorithm.checkpoint_interval`, or
    /// ceil(sqrt(inner_steps)) when 0 (the interval that balances stored and recomputed steps).
    pub fn checkpoint_interval(&self) -> usize {
        match self.checkpoint_interval {
            0 => (1..).find(|k| k * k >= self.inner_steps).unwrap_or(1),
            k => k,
        }
    }

    /// The options an algorithm cannot take: learned hyperparameters and the multi-step loss
    /// need a second-order meta-gradient, recompute one set of hyperparameters for every step.
    fn check_combination(&self) -> Result<(), ConfigError> {
        use AlgorithmName::*;
        let learns = self.learn_lr || self.learn_momentum || self.multi_step_loss;
        let refused = match self.name {
            Reptile => Some("reptile has no meta-gradient: learn_lr, learn_momentum and multi_step_loss must be false"),
            Fomaml => Some("fomaml has no second-order path: learn_lr, learn_momentum and multi_step_loss need \"maml\" (or \"anil\", \"metasgd\", \"lslr\")"),
            Pretrain => Some("pretrain (the joint-training baseline) has no inner loop to learn: learn_lr, learn_momentum and multi_step_loss must be false"),
            Maml | Metasgd | Anil | Lslr => None,
        };
        if let (true, Some(why)) = (learns, refused) {
            return Err(err("algorithm.name", why));
        }
        if self.memory == Memory::Recompute && !matches!(self.name, Maml | Metasgd | Anil) {
            return Err(err(
                "algorithm.memory",
                "\"recompute\" applies to second-order maml, metasgd and anil",
            ));
        }
        if self.learn_lr && matches!(self.name, Metasgd | Lslr) {
            return Err(err(
                "algorithm.learn_lr",
                format!(
                    "{} already learns its inner learning rates; leave learn_lr false",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// Checks every value; the first bad one is returned with its dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.run.name.is_empty() || self.run.name.contains('/') || self.run.name.starts_with('.')
        {
            return Err(err(
                "run.name",
                format!("must be a plain directory name, got {:?}", self.run.name),
            ));
        }
        if self.run.out_dir.is_empty() {
            return Err(err("run.out_dir", "must not be empty"));
        }
        self.task.check()?;
        let classification = self.is_classification();
        self.model.check(classification, self.task.kind)?;

        at_least(
            "algorithm.inner_steps",
            self.algorithm.inner_steps as i64,
            1,
        )?;
        positive("algorithm.inner_lr", self.algorithm.inner_lr)?;
        let m = self.algorithm.inner_momentum;
        if !(0.0..1.0).contains(&m) {
            return Err(err(
                "algorithm.inner_momentum",
                format!("must be in [0, 1), got {m}"),
            ));
        }
        self.algorithm.check_combination()?;

        positive("outer.lr", self.outer.lr)?;
        at_least("outer.meta_batch", self.outer.meta_batch as i64, 1)?;
        at_least("outer.iterations", self.outer.iterations as i64, 1)?;
        at_least(
            "outer.max_nonfinite_skips",
            self.outer.max_nonfinite_skips as i64,
            1,
        )?;

        at_least("eval.test_tasks", self.eval.test_tasks as i64, 2)?;
        if self.eval.ways != 0 {
            if !classification {
                return Err(err(
                    "eval.ways",
                    "sinusoid regression has no classes: leave it 0 (eval.shots sets the support points)",
                ));
            }
            at_least("eval.ways", to_i64(self.eval.ways), 2)?;
        }
        if self.eval.every > 0 {
            at_least("eval.val_tasks", self.eval.val_tasks as i64, 2)?;
        }
        at_least("log.every", self.log.every as i64, 1)?;
        at_least("log.keep_checkpoints", self.log.keep_checkpoints as i64, 1)?;
        self.validate_upper_bounds()
    }

    /// Upper bounds on every size, so that shapes, buffers and products of them stay far inside
    /// the integer types and the memory they are computed in (a typo such as
    /// `model.hidden=[4000000000]` is a config error, not an overflow or an abort).
    fn validate_upper_bounds(&self) -> Result<(), ConfigError> {
        const SIZE: i64 = 1 << 16;
        const COUNT: i64 = 1 << 24;
        let checks: [(&str, i64, i64); 18] = [
            ("task.ways", self.task.ways, SIZE),
            ("task.shots", self.task.shots, SIZE),
            ("task.queries", self.task.queries, SIZE),
            ("task.image_size", self.task.image_size, 4096),
            ("model.filters", self.model.filters, SIZE),
            (
                "model.hidden (layers)",
                self.model.hidden.len() as i64,
                1024,
            ),
            (
                "algorithm.inner_steps",
                to_i64(self.algorithm.inner_steps),
                COUNT,
            ),
            ("outer.meta_batch", to_i64(self.outer.meta_batch), COUNT),
            ("eval.val_tasks", to_i64(self.eval.val_tasks), COUNT),
            ("eval.test_tasks", to_i64(self.eval.test_tasks), COUNT),
            ("eval.inner_steps", to_i64(self.eval.inner_steps), COUNT),
            ("eval.ways", to_i64(self.eval.ways), SIZE),
            ("eval.shots", to_i64(self.eval.shots), SIZE),
            (
                "log.keep_checkpoints",
                to_i64(self.log.keep_checkpoints),
                COUNT,
            ),
            (
                "algorithm.checkpoint_interval",
                to_i64(self.algorithm.checkpoint_interval),
                COUNT,
            ),
            (
                "model.dropblock.size",
                self.model.dropblock.as_ref().map_or(0, |d| d.size),
                SIZE,
            ),
            ("run.threads", to_i64(self.run.threads), 1 << 12),
            ("run.workers", to_i64(self.run.workers), 1 << 12),
        ];
        for (key, value, max) in checks {
            if value > max {
                return Err(err(key, format!("must be <= {max}, got {value}")));
            }
        }
        for (key, list) in [
            ("model.hidden", &self.model.hidden),
            ("model.widths", &self.model.widths),
        ] {
            if let Some(h) = list.iter().find(|h| **h > SIZE) {
                return Err(err(key, format!("widths must be <= {SIZE}, got {h}")));
            }
        }
        // One task's examples: ways × (shots + queries) images of 3 × size × size values, in
        // training and at evaluation.
        let t = &self.task;
        let (ways, shots) = (to_i64(self.eval_ways()), to_i64(self.eval_shots()));
        for (key, ways, shots) in [("task.ways", t.ways, t.shots), ("eval.ways", ways, shots)] {
            let per_task = (ways.max(1) * (shots + t.queries))
                .checked_mul(3 * t.image_size.max(1).pow(2))
                .filter(|v| *v <= 1 << 32);
            if self.is_classification() && per_task.is_none() {
                return Err(err(
                    key,
                    "ways × (shots + queries) × 3 × image_size² must be <= 2^32 values per task",
                ));
            }
        }
        Ok(())
    }

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
