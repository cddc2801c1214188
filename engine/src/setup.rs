//! What a config builds: the device, the dtype, the task source and the backbone.
//!
//! These are the Trainer builder's defaults for the parts a caller does not bring; each is one
//! exhaustive `match` on a config enumeration, so a new value cannot fall through to another.
//! Loading image datasets reads (and caches) files; nothing here prints.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::{Layout, Params};
use tch::{Device, Kind};

use crate::config::{Backbone, ConvTasks, DeviceChoice, Dtype, Precision, TaskKind, TrainConfig};
use crate::data::{self, FewShot, ImageSpec, Sinusoid, TaskSource};
use crate::{Error, Result};

/// The device `run.device` names: `cuda` is cuda:<local rank> (modulo the visible devices).
pub fn device(choice: DeviceChoice) -> Result<Device> {
    let cuda = tch::Cuda::device_count() as usize;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda | DeviceChoice::Auto if cuda > 0 => {
            Ok(Device::Cuda(metaloop_runtime::comm::local_rank() % cuda))
        }
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda => Err(Error::Device(
            "\"cuda\" asked for, but libtorch sees no CUDA device here; use \"cpu\" or \"auto\""
                .into(),
        )),
    }
}

/// Makes `run.precision` the process's mode (runtime::precision) for a run on `device`; a mode
/// the device cannot honour ("tf32" on the CPU) is refused naming the key.
pub fn precision(choice: Precision, device: Device) -> Result<()> {
    use metaloop_runtime::precision::{self as p, Precision as P};
    let mode = match choice {
        Precision::Default => P::Default,
        Precision::Fp32 => P::Fp32,
        Precision::Tf32 => P::Tf32,
        Precision::Bf16 => P::Bf16,
    };
    mode.check(device).map_err(|reason| Error::InvalidSetting {
        what: "run.precision",
        reason,
    })?;
    Ok(p::set(mode)?)
}

/// Makes `run.conv_tasks` and `run.channels_last` the process's choice for task-batched
/// convolutions (runtime::nn::set_conv_tasks, set_channels_last).
pub fn conv_kernels(how: ConvTasks, channels_last: bool) {
    use metaloop_runtime::nn::{self, ConvTasks as C};
    nn::set_conv_tasks(match how {
        ConvTasks::Auto => C::Auto,
        ConvTasks::Grouped => C::Grouped,
        ConvTasks::PerTask => C::PerTask,
        ConvTasks::Gemm => C::Gemm,
    });
    nn::set_channels_last(channels_last);
}

/// The libtorch kind of `run.dtype`.
pub fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
    }
}

fn cache_dir(cfg: &TrainConfig) -> Option<PathBuf> {
    data::cache::default_dir(&cfg.task.cache_dir)
}

/// The task distribution the config names (loads and caches image datasets).
pub fn task_source(cfg: &TrainConfig) -> Result<Arc<dyn TaskSource>> {
    let t = &cfg.task;
    let size = t.image_size as u32;
    let dataset = match t.kind {
        TaskKind::Sinusoid => {
            return Ok(Arc::new(Sinusoid::new(
                t.shots as usize,
                t.queries as usize,
            )?))
        }
        TaskKind::Omniglot => {
            let mut c = data::omniglot::OmniglotConfig::new(&t.root);
            c.cache_dir = cache_dir(cfg);
            c.size = size;
            data::omniglot::load(&c)?
        }
        TaskKind::Miniimagenet => {
            let mut c = data::miniimagenet::MiniImageNetConfig::new(&t.root);
            c.cache_dir = cache_dir(cfg);
            c.size = size;
            data::miniimagenet::load(&c)?
        }
        TaskKind::Tieredimagenet => {
            let mut c = data::tieredimagenet::TieredImageNetConfig::new(&t.root);
            c.cache_dir = cache_dir(cfg);
            c.size = size;
            data::tieredimagenet::load(&c)?
        }
        TaskKind::Cifarfs => {
            // Validation made sure split_dir is set.
            let split_dir = t.split_dir.as_deref().unwrap_or_default();
            data::cifar::load_cifar_fs(Path::new(&t.root), Path::new(split_dir))?
        }
        TaskKind::Fc100 => data::cifar::load_fc100(Path::new(&t.root))?,
        TaskKind::Folder => {
            let mut c = data::folder::FolderConfig::new(&t.root, ImageSpec::rgb(size));
            c.val = t.val_root.as_ref().map(PathBuf::from);
            c.test = t.test_root.as_ref().map(PathBuf::from);
            c.cache_dir = cache_dir(cfg);
            data::folder::load(&c)?
        }
    };
    let written = match &dataset.report().cache {
        data::CacheStatus::Written(path) => Some(path.clone()),
        _ => None,
    };
    let episodes = FewShot::new(
        Arc::new(dataset),
        t.ways as usize,
        t.shots as usize,
        t.queries as usize,
    )
    .and_then(|e| e.check_whole().map(|()| e));
    if episodes.is_err() {
        // A refused run leaves nothing behind, not even the cache entry this load wrote.
        if let Some(path) = written {
            data::cache::remove_entry(&path);
        }
    }
    Ok(Arc::new(episodes?))
}

/// The backbone the config names, for inputs of `input_channels` channels.
pub fn build_model(cfg: &TrainConfig, input_channels: i64) -> Result<Box<dyn Module>> {
    match cfg.model.backbone {
        Backbone::Mlp => {
            let mut sizes = vec![1];
            sizes.extend(&cfg.model.hidden);
            sizes.push(1);
            Ok(Box::new(nn::mlp(&sizes)))
        }
        Backbone::Conv4 => Ok(Box::new(nn::conv4_steps(
            input_channels,
            cfg.task.ways,
            cfg.model.filters,
            cfg.task.image_size,
            per_step_rows(cfg),
        ))),
        Backbone::Resnet12 => Ok(Box::new(resnet12(cfg, input_channels)?)),
    }
}

/// The rows of MAML++'s per-step BatchNorm (`model.per_step_batchnorm`): one per training
/// inner step.
fn per_step_rows(cfg: &TrainConfig) -> Option<i64> {
    cfg.model
        .per_step_batchnorm
        .then_some(cfg.algorithm.inner_steps as i64)
}

/// ResNet-12 with `model.widths` and, when set, `model.dropblock`.
fn resnet12(cfg: &TrainConfig, input_channels: i64) -> Result<nn::ResNet12> {
    let m = &cfg.model;
    let widths: [i64; 4] = m.widths.as_slice().try_into().map_err(|_| {
        Error::Config(crate::config::ConfigError {
            key: "model.widths".into(),
            message: format!("must list 4 block widths, got {}", m.widths.len()),
        })
    })?;
    let mut net = nn::ResNet12::new(widths, cfg.task.ways, input_channels);
    if let Some(steps) = per_step_rows(cfg) {
        net = net.per_step_batchnorm(steps);
    }
    Ok(match &m.dropblock {
        Some(d) => net.dropblock(d.rate, d.size)?,
        None => net,
    })
}

/// θ0: the seeded initialisation of `model`, or the `model.init_from` file's weights over it.
/// The head (the parameters of the last module, e.g. `classifier.weight` and `classifier.bias`)
/// stays freshly initialised where the file lacks it or has it for another number of ways.
pub fn initial_params(
    cfg: &TrainConfig,
    model: &dyn Module,
    kind: Kind,
    device: Device,
) -> Result<Params> {
    check_model_size(cfg, model)?;
    let theta = Params::init(model, cfg.run.seed, kind, device)?;
    let Some(path) = &cfg.model.init_from else {
        return Ok(theta);
    };
    let layout = theta.layout().clone();
    let head = head_names(&layout);
    let loaded = nn::load_starting_weights(
        layout,
        Path::new(path),
        "",
        &head,
        cfg.run.seed,
        kind,
        device,
    )
    .map_err(|e| init_from_error(path, e))?;
    Ok(loaded.params)
}

/// The most parameters a model may have: 2^30, 4 GiB in f32 before the inner loop, its
/// gradients and the optimizer state multiply it. Each width has its own bound; this one bounds
/// their product.
pub const MAX_PARAMS: i64 = 1 << 30;

/// Refuses a model above [`MAX_PARAMS`] before anything is allocated, naming the key that sets
/// its widths and the parameter count.
fn check_model_size(cfg: &TrainConfig, model: &dyn Module) -> Result<()> {
    let n = model.layout()?.numel();
    if n <= MAX_PARAMS {
        return Ok(());
    }
    let key = match cfg.model.backbone {
        Backbone::Mlp => "model.hidden",
        Backbone::Conv4 => "model.filters",
        Backbone::Resnet12 => "model.widths",
    };
    Err(Error::Config(crate::config::ConfigError {
        key: key.into(),
        message: format!("the model would have {n} parameters, more than the {MAX_PARAMS} allowed"),
    }))
}

/// A `model.init_from` file that cannot be read as weights: the user's input, one line naming
/// the key, the file and why.
fn init_from_error(path: &str, e: metaloop_runtime::Error) -> Error {
    use metaloop_runtime::Error as R;
    let reason = match &e {
        R::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "no such file".to_string()
        }
        R::Io { source, .. } => source.to_string(),
        R::Safetensors { message, .. } => format!("not a safetensors file of weights ({message})"),
        _ => return e.into(),
    };
    Error::Config(crate::config::ConfigError {
        key: "model.init_from".into(),
        message: format!("{path}: {reason}"),
    })
}

/// The head of a model: the parameters of its last module (e.g. `classifier.weight` and
/// `classifier.bias`), the ones that depend on the number of ways.
pub fn head_names(layout: &Layout) -> Vec<String> {
    let module = |name: &str| name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
    let last = layout.names().last().map(module).unwrap_or_default();
    layout
        .names()
        .filter(|n| module(n) == last)
        .map(str::to_string)
        .collect()
}

/// The contiguous slice of `0..total` that rank `rank` of `size` takes (sizes differ by at most 1).
pub fn rank_slice(total: usize, rank: usize, size: usize) -> Range<usize> {
    (total * rank / size)..(total * (rank + 1) / size)
}
