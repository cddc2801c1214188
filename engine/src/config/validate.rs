//! `TrainConfig::validate`: every value's range, and the options that exclude each other.
//!
//! The first bad value comes back as a `ConfigError` with its dotted key
//! (`algorithm.inner_lr: must be a finite number > 0, got -1`).

use super::{
    AlgorithmConfig, AlgorithmName, Augment, Backbone, Comm, ConfigError, DeviceChoice,
    EvalBatchNorm, Memory, ModelConfig, TaskConfig, TaskKind, TrainConfig,
};

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
        if self.per_step_batchnorm && self.backbone == Backbone::Mlp {
            return Err(err(
                "model.per_step_batchnorm",
                "applies to \"conv4\" and \"resnet12\" (the MLP has no BatchNorm)",
            ));
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
    /// The options an algorithm cannot take: learned hyperparameters and the multi-step loss
    /// need a second-order meta-gradient, recompute one set of hyperparameters for every step.
    fn check_combination(&self) -> Result<(), ConfigError> {
        use AlgorithmName::*;
        let learns = self.learn_lr || self.learn_momentum || self.multi_step_loss;
        let refused = match self.name {
            Reptile => Some("reptile has no meta-gradient: learn_lr, learn_momentum and multi_step_loss must be false"),
            Fomaml => Some("fomaml has no second-order path: learn_lr, learn_momentum and multi_step_loss need \"maml\" (or \"anil\", \"metasgd\", \"lslr\")"),
            Pretrain => Some("pretrain (the joint-training baseline) has no inner loop to learn: learn_lr, learn_momentum and multi_step_loss must be false"),
            Imaml => Some("imaml differentiates only the inner solution, not the unroll: learn_lr, learn_momentum and multi_step_loss must be false"),
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
        let clip = self.inner_clip_grad_norm;
        if !(clip.is_finite() && clip >= 0.0) {
            return Err(err(
                "algorithm.inner_clip_grad_norm",
                format!("must be finite and >= 0, got {clip}"),
            ));
        }
        if clip > 0.0 && self.memory == Memory::Recompute {
            return Err(err(
                "algorithm.inner_clip_grad_norm",
                "is not supported with algorithm.memory = \"recompute\" (its adjoint pass has no gradient callback)",
            ));
        }
        if self.first_order_until > 0 && matches!(self.name, Fomaml | Reptile | Pretrain | Imaml) {
            return Err(err(
                "algorithm.first_order_until",
                format!(
                    "anneals the derivative order of maml, metasgd, anil and lslr; {} has no second-order path: leave it 0",
                    self.name
                ),
            ));
        }
        self.check_imaml()?;
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

impl AlgorithmConfig {
    /// iMAML's regulariser, conjugate-gradient steps and damping.
    fn check_imaml(&self) -> Result<(), ConfigError> {
        positive("algorithm.imaml_lambda", self.imaml_lambda)?;
        at_least("algorithm.cg_steps", to_i64(self.cg_steps), 1)?;
        let d = self.cg_damping;
        if !(d.is_finite() && d >= 0.0) {
            return Err(err(
                "algorithm.cg_damping",
                format!("must be finite and >= 0, got {d}"),
            ));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// The BatchNorm switches: running statistics need BatchNorm and an inner loop to keep them
    /// from; per-step BatchNorm needs an inner loop whose steps pick its rows.
    fn check_batchnorm(&self) -> Result<(), ConfigError> {
        if self.eval.batchnorm == EvalBatchNorm::Running
            && (self.model.backbone == Backbone::Mlp
                || self.algorithm.name == AlgorithmName::Pretrain)
        {
            return Err(err(
                "eval.batchnorm",
                "\"running\" keeps statistics from the inner loops' support forwards: it needs \"conv4\" or \"resnet12\" and an algorithm with an inner loop (not \"pretrain\")",
            ));
        }
        if self.model.per_step_batchnorm
            && matches!(
                self.algorithm.name,
                AlgorithmName::Pretrain | AlgorithmName::Imaml
            )
        {
            return Err(err(
                "model.per_step_batchnorm",
                format!(
                    "is not for {}: imaml's implicit gradient holds one support loss at the inner optimum, not one per step, and pretrain has no inner loop",
                    self.algorithm.name
                ),
            ));
        }
        Ok(())
    }

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
        if self.run.comm == Comm::Nccl && self.run.device == DeviceChoice::Cpu {
            return Err(err(
                "run.comm",
                "\"nccl\" needs run.device = \"cuda\" (NCCL reduces GPU tensors); use \"mpi\" or \"auto\" on the CPU",
            ));
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
        crate::outer_options::validate_inner(&self.algorithm)?;
        self.check_batchnorm()?;

        positive("outer.lr", self.outer.lr)?;
        at_least("outer.meta_batch", self.outer.meta_batch as i64, 1)?;
        at_least("outer.iterations", self.outer.iterations as i64, 1)?;
        at_least(
            "outer.max_nonfinite_skips",
            self.outer.max_nonfinite_skips as i64,
            1,
        )?;
        crate::outer_options::validate(&self.outer)?;

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
        let checks: [(&str, i64, i64); 20] = [
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
            ("run.task_chunk", to_i64(self.run.task_chunk), COUNT),
            ("algorithm.cg_steps", to_i64(self.algorithm.cg_steps), COUNT),
        ];
        for (key, value, max) in checks {
            if value > max {
                return Err(err(key, format!("must be <= {max}, got {value}")));
            }
        }
        if let super::MemoryBudget::Gib(g) = self.run.memory_budget_gib {
            if !(0.0..=super::MemoryBudget::MAX_GIB).contains(&g) {
                return Err(err(
                    "run.memory_budget_gib",
                    format!("must be \"auto\" or a number of GiB from 0 to 1048576, got {g}"),
                ));
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
}
