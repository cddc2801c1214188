//! ANIL (Raghu et al. 2020): second-order MAML whose inner loop adapts only the head; the body
//! still receives the meta-gradient.

use metaloop_runtime::Layout;

use super::{maml, Algorithm, MetaGrad, Shard};
use crate::data::MetaBatch;

/// Almost No Inner Loop.
#[derive(Debug, Clone, Copy)]
pub struct Anil;

impl Algorithm for Anil {
    /// Everything but the head, which is the last module: every name that does not share the
    /// last parameter's prefix.
    fn frozen(&self, layout: &Layout) -> Vec<String> {
        let prefix = |n: &str| n.rsplit_once('.').map_or("", |(p, _)| p).to_string();
        let head = layout.names().last().map(prefix).unwrap_or_default();
        layout
            .names()
            .filter(|&n| prefix(n) != head)
            .map(str::to_string)
            .collect()
    }
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        maml::second_order_or_recompute(shard, batch, global_tasks)
    }
}
