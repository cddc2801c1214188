//! Reading a TOML config, applying `--set key=value` overrides, and turning every mistake into
//! one line that names the file or `--set`, the dotted key, and what was expected.
//!
//! This module reads the config file and nothing else; it never writes.

use std::collections::HashSet;
use std::path::Path;

use metaloop_engine::config::TrainConfig;
use metaloop_runtime::files::{read_text_bounded, MAX_TEXT_FILE};
use toml::{Table, Value};

use crate::errors::{bad, io_words};

/// Reads `path` (a regular file of at most 1 MiB), applies `sets` and validates: the config a
/// run uses.
pub fn load(path: &Path, sets: &[String]) -> anyhow::Result<TrainConfig> {
    load_given(path, sets).map(|(cfg, _)| cfg)
}

/// [`load`], with the dotted keys that the file and `sets` name (the others are defaults).
pub fn load_given(path: &Path, sets: &[String]) -> anyhow::Result<(TrainConfig, Vec<String>)> {
    let text = read_text_bounded(path, MAX_TEXT_FILE)
        .map_err(|e| bad(format!("{}: {}", path.display(), io_words(&e))))?;
    resolve_given(&path.display().to_string(), &text, sets)
}

/// Parses `text` (from `origin`, a file name used in messages), applies `sets` and validates.
pub fn resolve(origin: &str, text: &str, sets: &[String]) -> anyhow::Result<TrainConfig> {
    resolve_given(origin, text, sets).map(|(cfg, _)| cfg)
}

/// [`resolve`], with the dotted keys that `text` and `sets` name.
pub fn resolve_given(
    origin: &str,
    text: &str,
    sets: &[String],
) -> anyhow::Result<(TrainConfig, Vec<String>)> {
    let mut table: Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| line_col(text, s.start))
            .map(|(l, c)| format!("line {l}, column {c}: "))
            .unwrap_or_default();
        bad(format!("{origin}: {at}{}", e.message().trim()))
    })?;
    let mut from_set = HashSet::new();
    for s in sets {
        let (key, value) = apply_set(&mut table, s)?;
        from_set.insert(key.clone());
        // `--set outer={...}` sets every key under it.
        let mut under = Vec::new();
        leaves(&value, &key, &mut under);
        from_set.extend(under.into_iter().map(|(k, _)| k));
    }
    let origin_of = |key: &str| -> String {
        if from_set
            .iter()
            .any(|k| key == k || key.starts_with(&format!("{k}.")))
        {
            "--set".to_string()
        } else {
            origin.to_string()
        }
    };
    let mut given = Vec::new();
    leaves(&Value::Table(table.clone()), "", &mut given);
    let cfg: TrainConfig = serde_path_to_error::deserialize(Value::Table(table))
        .map_err(|e| deserialize_error(&e, &origin_of))?;
    cfg.validate()
        .map_err(|e| bad(format!("{}: {e}", origin_of(&e.key))))?;
    Ok((cfg, given.into_iter().map(|(k, _)| k).collect()))
}

/// The resolved config as TOML, for the run directory's `config.toml`.
pub fn to_toml(cfg: &TrainConfig) -> anyhow::Result<String> {
    let body = toml::to_string(cfg)?;
    Ok(format!(
        "# The resolved config of this run (file + --set overrides), written by `metaloop train`.\n\
         # `metaloop eval` and `metaloop train --resume` read it back.\n\n{body}"
    ))
}

/// The resolved config as TOML, every key present (defaults included), for `config show`.
pub fn show(cfg: &TrainConfig) -> anyhow::Result<String> {
    Ok(toml::to_string(cfg)?)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Applies one `key=value` to `table`; returns the dotted key and the value set.
fn apply_set(table: &mut Table, s: &str) -> anyhow::Result<(String, Value)> {
    let Some((key, raw)) = s.split_once('=') else {
        return Err(bad(format!(
            "--set {s}: expected key=value (e.g. outer.iterations=50)"
        )));
    };
    let key = key.trim();
    let path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|p| p.is_empty() || p.trim() != *p) {
        return Err(bad(format!(
            "--set {s}: `{key}` is not a dotted key (e.g. outer.iterations)"
        )));
    }
    // A TOML value (50, 1e-3, true, [40, 40], "x"); anything else is taken as a plain string.
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let mut at = table;
    for (i, part) in path[..path.len() - 1].iter().enumerate() {
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(bad(format!(
                    "--set {s}: `{}` is a value, not a table",
                    path[..=i].join(".")
                )))
            }
        };
    }
    at.insert(path[path.len() - 1].to_string(), value.clone());
    Ok((key.to_string(), value))
}

/// Every non-table value under `value`, with its dotted key. An empty table counts as a leaf.
fn leaves(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                leaves(v, &dotted(prefix, k), out);
            }
        }
        _ if prefix.is_empty() => {}
        _ => out.push((prefix.to_string(), value.clone())),
    }
}

/// The dotted key of `key` under `prefix` (`prefix.key`, or `key` at the top).
pub(crate) fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The field of serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The one-line error of a config that does not deserialize, naming the dotted key serde
/// reached (array indices left out: an array is one key) and what was expected.
fn deserialize_error(
    e: &serde_path_to_error::Error<toml::de::Error>,
    origin_of: &dyn Fn(&str) -> String,
) -> anyhow::Error {
    let key = e
        .path()
        .iter()
        .map_while(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(".");
    let message = e.inner().message().trim().to_string();
    if unknown_field(&message).is_some() {
        let expected = expected_fields(&message);
        return bad(format!(
            "{}: unknown key `{key}` (expected {expected})",
            origin_of(&key)
        ));
    }
    let message = unknown_variant(&message).unwrap_or(message);
    bad(format!("{}: {key}: {message}", origin_of(&key)))
}

/// serde's "unknown variant `x`, expected one of `a`, `b`" (or "expected `a` or `b`") for a
/// config enumeration, as `must be one of "a", "b", got "x"`.
fn unknown_variant(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown variant `")?;
    let (value, rest) = rest.split_once('`')?;
    let list = rest.strip_prefix(", expected ")?;
    let list = list.strip_prefix("one of ").unwrap_or(list);
    let allowed: Vec<String> = list
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .map(|name| format!("\"{}\"", name.trim_matches('`')))
        .collect();
    Some(format!(
        "must be one of {}, got \"{value}\"",
        allowed.join(", ")
    ))
}

/// "one of a, b, c" from serde's "..., expected one of `a`, `b`, `c`".
fn expected_fields(message: &str) -> String {
    match message.split_once(", expected ") {
        Some((_, list)) => list.replace('`', ""),
        None => "no other key here".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        resolve("c.toml", text, &sets).unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_key_names_its_dotted_path_and_the_allowed_keys() {
        let e = err("[outer]\nlrr = 0.1\n", &[]);
        assert!(e.starts_with("c.toml: unknown key `outer.lrr` (expected one of optimizer, lr, meta_batch, iterations"), "{e}");
        assert!(e.ends_with(')') && e.matches('`').count() == 2, "{e}");
        assert!(err("[outerr]\nlr = 0.1\n", &[])
            .starts_with("c.toml: unknown key `outerr` (expected one of run, task,"));
        assert!(err("", &["run.run=1"])
            .starts_with("--set: unknown key `run.run` (expected one of name,"));
    }

    #[test]
    fn a_wrong_type_or_range_names_the_key() {
        let e = err("[outer]\niterations = \"many\"\n", &[]);
        assert!(
            e.starts_with("c.toml: outer.iterations: invalid type: string \"many\""),
            "{e}"
        );
        assert_eq!(
            err("[algorithm]\ninner_lr = -1\n", &[]),
            "c.toml: algorithm.inner_lr: must be a finite number > 0, got -1"
        );
        assert_eq!(
            err("", &["algorithm.inner_lr=-1"]),
            "--set: algorithm.inner_lr: must be a finite number > 0, got -1"
        );
    }

    #[test]
    fn an_unknown_enumeration_value_lists_the_allowed_ones() {
        assert_eq!(
            err("", &["algorithm.name=mamal"]),
            "--set: algorithm.name: must be one of \"maml\", \"fomaml\", \"metasgd\", \"anil\", \"reptile\", \"pretrain\", \"lslr\", \"imaml\", got \"mamal\""
        );
        assert_eq!(
            err("[run]\ndtype = \"f16\"\n", &[]),
            "c.toml: run.dtype: must be one of \"f32\", \"f64\", got \"f16\""
        );
    }

    #[test]
    fn a_syntax_error_gives_line_and_column_on_one_line() {
        let e = err("[outer]\nlr = = 1\n", &[]);
        assert!(e.starts_with("c.toml: line 2, column "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn sets_parse_toml_values_and_plain_strings() {
        let sets: Vec<String> = [
            "outer.iterations=50",
            "run.name=\"x\"",
            "run.out_dir=somewhere",
            "model.hidden=[8, 8]",
            "algorithm.learn_lr=true",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cfg = resolve("c.toml", "[outer]\niterations = 7\n", &sets).unwrap();
        assert_eq!(cfg.outer.iterations, 50);
        assert_eq!(cfg.run.name, "x");
        assert_eq!(cfg.run.out_dir, "somewhere");
        assert_eq!(cfg.model.hidden, vec![8, 8]);
        assert!(cfg.algorithm.learn_lr);
        assert!(err("", &["outer.iterations"])
            .starts_with("--set outer.iterations: expected key=value"));
        assert!(err("[outer]\nlr = 0.1\n", &["outer.lr.x=1"])
            .contains("`outer.lr` is a value, not a table"));
    }

    #[test]
    fn the_imaml_and_annealing_keys_are_read_and_checked() {
        let base = "[algorithm]\nname = \"imaml\"\nimaml_lambda = 0.5\ncg_steps = 10\n";
        let cfg = resolve("c.toml", base, &[]).unwrap();
        assert_eq!(
            (cfg.algorithm.imaml_lambda, cfg.algorithm.cg_steps),
            (0.5, 10)
        );
        assert_eq!(cfg.algorithm.proximal(), Some(0.5));
        let set = |s: &str| err(base, &[s]);
        for (set_to, message) in [
            (
                "algorithm.imaml_lambda=0",
                "algorithm.imaml_lambda: must be a finite number > 0, got 0",
            ),
            (
                "algorithm.cg_steps=0",
                "algorithm.cg_steps: must be >= 1, got 0",
            ),
            (
                "algorithm.cg_damping=-1",
                "algorithm.cg_damping: must be finite and >= 0, got -1",
            ),
            (
                "algorithm.memory=\"recompute\"",
                "algorithm.memory: \"recompute\" applies to second-order maml, metasgd and anil",
            ),
        ] {
            let e = set(set_to);
            assert!(e.ends_with(message), "{set_to}: {e}");
        }
        for key in ["learn_lr", "multi_step_loss"] {
            let e = set(&format!("algorithm.{key}=true"));
            assert!(
                e.contains("algorithm.name: imaml differentiates only"),
                "{e}"
            );
        }
        let e = set("algorithm.first_order_until=10");
        assert!(
            e.contains("algorithm.first_order_until: anneals the derivative order"),
            "{e}"
        );
        let maml = resolve("c.toml", "", &["algorithm.first_order_until=10".into()]).unwrap();
        assert!(maml.algorithm.first_order_at(9) && !maml.algorithm.first_order_at(10));
        assert_eq!(maml.algorithm.proximal(), None);
    }

    #[test]
    fn the_resnet12_dataset_and_protocol_keys_are_read_and_checked() {
        let base = "[task]\nkind = \"cifarfs\"\nroot = \"r\"\nimage_size = 32\n\
                    split_dir = \"s\"\naugment = \"standard\"\n[model]\nbackbone = \"resnet12\"\n\
                    widths = [8, 16, 16, 16]\ndropblock = { rate = 0.1, size = 2 }\n\
                    [algorithm]\nmemory = \"recompute\"\ninner_steps = 5\n\
                    [eval]\nbatchnorm = \"support_only\"\n";
        let cfg = resolve("c.toml", base, &[]).unwrap();
        assert_eq!(cfg.model.widths, [8, 16, 16, 16]);
        assert_eq!(cfg.algorithm.checkpoint_interval(), 3, "ceil(sqrt(5))");
        let set = |s: &str| err(base, &[s]);
        let w = set("model.widths=[8,16,16]");
        assert!(
            w.ends_with("model.widths: must list 4 block widths, got 3"),
            "{w}"
        );
        assert!(
            set("model.dropblock.rate=1.5")
                .ends_with("model.dropblock.rate: must be in [0, 1), got 1.5"),
            "{}",
            set("model.dropblock.rate=1.5")
        );
        assert!(set("task.image_size=84")
            .ends_with("task.image_size: cifarfs images are 32×32: must be 32, got 84"));
        assert!(set("eval.batchnorm=\"query\"").ends_with(
            "eval.batchnorm: must be one of \"transductive\", \"support_only\", \"running\", got \"query\""
        ));
        assert!(set("task.augment=\"heavy\"")
            .ends_with("task.augment: must be one of \"none\", \"standard\", got \"heavy\""));
        // MAML++'s multi-step loss goes with recompute-and-adjoint (engine::algorithms::maml).
        let msl = resolve("c.toml", base, &["algorithm.multi_step_loss=true".into()]).unwrap();
        assert!(msl.algorithm.multi_step_loss);
        let no_split = err(&base.replace("split_dir = \"s\"\n", ""), &[]);
        assert!(
            no_split.ends_with(
                "task.split_dir: cifarfs needs the directory of train.txt, val.txt and test.txt"
            ),
            "{no_split}"
        );
    }

    #[test]
    fn every_committed_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                // Each config names its own run.
                assert_eq!(path.file_stem().unwrap().to_str().unwrap(), cfg.run.name);
                names.push(cfg.run.name);
            }
        }
        names.sort();
        assert_eq!(
            names,
            [
                "cifarfs_resnet12_5way_1shot",
                "cifarfs_resnet12_5way_5shot",
                "miniimagenet_5way_1shot",
                "miniimagenet_5way_5shot",
                "miniimagenet_resnet12_5way_1shot",
                "miniimagenet_resnet12_5way_5shot",
                "omniglot_20way_1shot",
                "omniglot_20way_1shot_mamlpp",
                "omniglot_20way_5shot",
                "omniglot_5way_1shot",
                "omniglot_5way_5shot",
                "sinusoid",
                "sinusoid_imaml",
                "tieredimagenet_resnet12_5way_1shot",
                "tieredimagenet_resnet12_5way_5shot"
            ]
        );
    }

    #[test]
    fn the_configs_carry_the_maml_papers_values() {
        let get = |name: &str| {
            load(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../configs")
                    .join(name),
                &[],
            )
            .unwrap()
        };
        let s = get("sinusoid.toml");
        assert_eq!(
            (
                s.task.shots,
                s.algorithm.inner_steps,
                s.algorithm.inner_lr,
                s.outer.meta_batch
            ),
            (10, 1, 0.01, 25)
        );
        assert_eq!(s.model.hidden, vec![40, 40]);
        for (name, ways, shots, steps, lr, test_steps, batch) in [
            ("omniglot_5way_1shot.toml", 5, 1, 1, 0.4, 3, 32),
            ("omniglot_5way_5shot.toml", 5, 5, 1, 0.4, 3, 32),
            ("omniglot_20way_1shot.toml", 20, 1, 5, 0.1, 5, 16),
            ("omniglot_20way_5shot.toml", 20, 5, 5, 0.1, 5, 16),
            ("miniimagenet_5way_1shot.toml", 5, 1, 5, 0.01, 10, 4),
            ("miniimagenet_5way_5shot.toml", 5, 5, 5, 0.01, 10, 2),
        ] {
            let c = get(name);
            assert_eq!(
                (
                    c.task.ways,
                    c.task.shots,
                    c.algorithm.inner_steps,
                    c.algorithm.inner_lr,
                    c.eval_inner_steps(),
                    c.outer.meta_batch
                ),
                (ways, shots, steps, lr, test_steps, batch),
                "{name}"
            );
            assert_eq!(
                (c.outer.iterations, c.outer.lr, c.eval.test_tasks),
                (60000, 1e-3, 600),
                "{name}"
            );
            let (filters, size) = if name.starts_with("omniglot") {
                (64, 28)
            } else {
                (32, 84)
            };
            assert_eq!(
                (c.model.filters, c.task.image_size),
                (filters, size),
                "{name}"
            );
        }
    }

    #[test]
    fn the_resolved_toml_reads_back_to_the_same_config() {
        let mut cfg = TrainConfig::default();
        cfg.task.val_root = Some("v".into());
        cfg.outer.lr = 3e-4;
        let text = to_toml(&cfg).unwrap();
        assert_eq!(resolve("r.toml", &text, &[]).unwrap(), cfg);
        let plain = to_toml(&TrainConfig::default()).unwrap();
        assert_eq!(
            resolve("r.toml", &plain, &[]).unwrap(),
            TrainConfig::default()
        );
    }
}
