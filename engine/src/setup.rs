//! What a config builds: the device, the dtype, the task source and the backbone.
//!
//! These are the Trainer builder's defaults for the parts a caller does not bring; each is one
//! exhaustive `match` on a config enumeration, so a new value cannot fall through to another.
//! Loading image datasets reads (and caches) files; nothing here prints.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use metaloop_runtime::nn::{self, Module};
use tch::{Device, Kind};

use crate::config::{Backbone, DeviceChoice, Dtype, TaskKind, TrainConfig};
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
        TaskKind::Folder => {
            let mut c = data::folder::FolderConfig::new(&t.root, ImageSpec::rgb(size));
            c.val = t.val_root.as_ref().map(PathBuf::from);
            c.test = t.test_root.as_ref().map(PathBuf::from);
            c.cache_dir = cache_dir(cfg);
            data::folder::load(&c)?
        }
    };
    let episodes = FewShot::new(
        Arc::new(dataset),
        t.ways as usize,
        t.shots as usize,
        t.queries as usize,
    )?;
    episodes.check_whole()?;
    Ok(Arc::new(episodes))
}

/// The backbone the config names, for inputs of `input_channels` channels.
pub fn build_model(cfg: &TrainConfig, input_channels: i64) -> Box<dyn Module> {
    match cfg.model.backbone {
        Backbone::Mlp => {
            let mut sizes = vec![1];
            sizes.extend(&cfg.model.hidden);
            sizes.push(1);
            Box::new(nn::mlp(&sizes))
        }
        Backbone::Conv4 => Box::new(nn::conv4_sized(
            input_channels,
            cfg.task.ways,
            cfg.model.filters,
            cfg.task.image_size,
        )),
    }
}

/// The contiguous slice of `0..total` that rank `rank` of `size` takes (sizes differ by at most 1).
pub fn rank_slice(total: usize, rank: usize, size: usize) -> Range<usize> {
    (total * rank / size)..(total * (rank + 1) / size)
}
