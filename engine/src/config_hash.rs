//! The config hash that checkpoints carry, and the keys it leaves out because they change no
//! result (docs/run-directory.md): a resume may change those. Re-exported by engine::rundir.

use crate::checkpoint;
use crate::config::TrainConfig;

/// The keys that change no number a run computes or writes: how often it checks, logs and
/// checkpoints, how long a collective may take, and where decoded images are cached. They are
/// left out of [`config_hash`], so `train --resume` may change them (docs/run-directory.md says
/// why each one is neutral). Keys that change the summation order (`run.threads`,
/// `run.workers`, `run.task_chunk`) change f32 and f64 rounding, and stay in, except under
/// [`REPRODUCIBLE_NEUTRAL_KEYS`].
pub const NEUTRAL_KEYS: [&str; 7] = [
    "run.consistency_every",
    "run.collective_timeout_s",
    "task.cache_dir",
    "log.every",
    "log.checkpoint_every",
    "log.keep_checkpoints",
    "log.tensorboard",
];

/// The keys that change no number either with `run.reproducible = true` on the CPU, where the
/// sum over tasks is exact and every worker has one intra-op thread (docs/faults.md).
pub const REPRODUCIBLE_NEUTRAL_KEYS: [&str; 3] = ["run.threads", "run.workers", "run.task_chunk"];

/// Whether `cfg` makes [`REPRODUCIBLE_NEUTRAL_KEYS`] neutral.
fn exact_on_cpu(cfg: &TrainConfig) -> bool {
    cfg.run.reproducible && cfg.run.device == crate::config::DeviceChoice::Cpu
}

/// The keys of `cfg` that a resume may change: [`NEUTRAL_KEYS`], and with `run.reproducible`
/// on the CPU [`REPRODUCIBLE_NEUTRAL_KEYS`].
pub fn neutral_keys(cfg: &TrainConfig) -> Vec<&'static str> {
    let mut keys = NEUTRAL_KEYS.to_vec();
    if exact_on_cpu(cfg) {
        keys.extend(REPRODUCIBLE_NEUTRAL_KEYS);
    }
    keys
}

/// `cfg` with every key of [`neutral_keys`] at its default: the part of a config that decides
/// the results.
pub fn result_config(cfg: &TrainConfig) -> TrainConfig {
    let d = TrainConfig::default();
    let mut c = cfg.clone();
    c.run.consistency_every = d.run.consistency_every;
    c.run.collective_timeout_s = d.run.collective_timeout_s;
    c.task.cache_dir = d.task.cache_dir;
    c.log.every = d.log.every;
    c.log.checkpoint_every = d.log.checkpoint_every;
    c.log.keep_checkpoints = d.log.keep_checkpoints;
    c.log.tensorboard = d.log.tensorboard;
    if exact_on_cpu(cfg) {
        c.run.threads = d.run.threads;
        c.run.workers = d.run.workers;
        c.run.task_chunk = d.run.task_chunk;
    }
    c
}

/// sha256 (hex) of the canonical JSON form of a config's [`result_config`]: two configs have
/// the same hash exactly when every value but the neutral ones is the same, however their TOML
/// files were written. A config whose neutral keys are at their defaults keeps the hash it had
/// before neutral keys were left out.
pub fn config_hash(cfg: &TrainConfig) -> String {
    full_hash(&result_config(cfg))
}

/// Whether `recorded` (a checkpoint's hash) was written by `cfg`: its [`config_hash`], or the
/// hash of the whole config, which checkpoints written before [`NEUTRAL_KEYS`] existed hold.
pub fn hash_matches(cfg: &TrainConfig, recorded: &str) -> bool {
    recorded == config_hash(cfg) || recorded == full_hash(cfg)
}

/// sha256 (hex) of the canonical JSON form of every value of `cfg`.
fn full_hash(cfg: &TrainConfig) -> String {
    // Serialising plain structs of strings and numbers cannot fail.
    let json = serde_json::to_vec(cfg).unwrap_or_default();
    checkpoint::sha256_hex(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every leaf of `cfg`'s JSON form, as (dotted key, value).
    fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(x, &key, out);
                }
            }
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }

    /// The default config with `key` changed to another value of its type, if it deserializes.
    fn changed(key: &str, value: &serde_json::Value) -> Option<TrainConfig> {
        use serde_json::Value;
        let other = match value {
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) if n.is_u64() => Value::from(n.as_u64()? + 3),
            Value::Number(n) => Value::from(n.as_f64()? * 0.5 + 0.25),
            Value::String(s) => Value::from(format!("{s}x")),
            _ => return None,
        };
        let mut json = serde_json::to_value(TrainConfig::default()).ok()?;
        let (table, leaf) = key.split_once('.')?;
        json[table][leaf] = other;
        serde_json::from_value(json).ok()
    }

    #[test]
    fn neutral_keys_leave_the_hash_alone_and_every_other_key_changes_it() {
        let base = TrainConfig::default();
        let mut all = Vec::new();
        leaves(&serde_json::to_value(&base).unwrap(), "", &mut all);
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        for key in NEUTRAL_KEYS {
            assert!(keys.contains(&key), "{key} is not a config key");
        }
        let mut checked = 0;
        for (key, value) in &all {
            let Some(cfg) = changed(key, value) else {
                continue;
            };
            assert_ne!(cfg, base, "{key}");
            let neutral = NEUTRAL_KEYS.contains(&key.as_str());
            assert_eq!(config_hash(&cfg) == config_hash(&base), neutral, "{key}");
            // The whole config's hash, which older checkpoints hold, still tells them apart.
            assert!(hash_matches(&cfg, &full_hash(&cfg)), "{key}");
            assert!(!hash_matches(&base, &full_hash(&cfg)), "{key}");
            checked += 1;
        }
        assert!(checked > 35, "only {checked} keys could be changed");
    }

    #[test]
    fn threads_workers_and_chunks_are_neutral_only_when_reproducible_on_the_cpu() {
        let mut base = TrainConfig::default();
        base.run.reproducible = true;
        let mut other = base.clone();
        (other.run.threads, other.run.workers, other.run.task_chunk) = (3, 2, 5);
        assert_eq!(config_hash(&other), config_hash(&base));
        assert_eq!(neutral_keys(&other).len(), 10);
        for device in [
            crate::config::DeviceChoice::Auto,
            crate::config::DeviceChoice::Cuda,
        ] {
            let (mut b, mut o) = (base.clone(), other.clone());
            (b.run.device, o.run.device) = (device, device);
            assert_ne!(config_hash(&o), config_hash(&b), "{device:?}");
            assert_eq!(neutral_keys(&o), NEUTRAL_KEYS);
        }
        base.run.reproducible = false;
        other.run.reproducible = false;
        assert_ne!(config_hash(&other), config_hash(&base));
    }

    #[test]
    fn the_default_inner_optimizer_keeps_the_former_hash() {
        // Configs written before algorithm.inner_optimizer existed: "sgd" and no options are
        // left out of the serialised config, so its hash is the one their checkpoints hold.
        let cfg = TrainConfig::default();
        let json = serde_json::to_value(&cfg).unwrap();
        let algorithm = json["algorithm"].as_object().unwrap();
        assert!(!algorithm.contains_key("inner_optimizer"));
        assert!(!algorithm.contains_key("inner_options"));
        let text = "[algorithm]\ninner_optimizer = \"sgd\"\n";
        let explicit: TrainConfig = toml::from_str(text).unwrap();
        assert_eq!(config_hash(&explicit), config_hash(&cfg));
        let mut adam = cfg.clone();
        adam.algorithm.inner_optimizer = crate::config::OptimizerName::Adam;
        assert_ne!(config_hash(&adam), config_hash(&cfg));
    }

    #[test]
    fn a_config_with_neutral_keys_at_their_defaults_keeps_its_former_hash() {
        let mut cfg = TrainConfig::default();
        cfg.outer.lr = 0.5;
        assert_eq!(config_hash(&cfg), full_hash(&cfg));
    }
}
