//! BatchNorm running statistics, owned by the caller ([`BnState`]). It only holds tensors; the
//! layers decide what goes in.

use std::collections::BTreeMap;

use tch::Tensor;

/// BatchNorm running statistics, owned by the caller and passed to
/// [`Module::forward_with_state`](super::Module::forward_with_state).
///
/// Entries are named as PyTorch's buffers ("0.1.running_mean", "0.1.running_var"), shaped `[C]`
/// for single-task parameters and `[T, C]` (one row per task) for task-batched ones. A train
/// forward replaces entries with new tensors rather than writing into them, so a clone taken
/// before a step still holds that step's statistics: keep one clone per inner step to have
/// statistics "per step". Missing entries read as mean 0, variance 1.
#[derive(Debug, Default)]
pub struct BnState {
    stats: BTreeMap<String, Tensor>,
}

/// A cheap clone: the tensors are shared, which is safe because forwards replace entries and
/// never write into them.
impl Clone for BnState {
    fn clone(&self) -> BnState {
        BnState {
            stats: self
                .stats
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
        }
    }
}

impl BnState {
    pub fn new() -> BnState {
        BnState::default()
    }

    /// The statistic `name` ("0.1.running_mean"), if a train forward stored it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.stats.get(name)
    }

    /// Sets a statistic (e.g. read from a checkpoint).
    pub fn insert(&mut self, name: impl Into<String>, value: Tensor) {
        self.stats.insert(name.into(), value);
    }

    /// `(name, tensor)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.stats.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
}
