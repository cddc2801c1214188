//! docs/configuration.md is generated from the config types, and this test keeps it current.
//!
//! Keys and descriptions come from the fields and doc comments of engine/src/config.rs,
//! engine/src/config/algorithm.rs and engine/src/config/outer.rs (`[outer]` and
//! `algorithm.inner_options`).
//! Defaults come from `Default`, which reads the fields' serde attributes. Allowed values come
//! from the enumerations' `ALL` and from the fields' `Allowed:` doc lines.
//! `METALOOP_WRITE_DOCS=1` (what `cargo xtask docs` sets) rewrites the file instead of checking it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use metaloop_engine::config::*;
use serde_json::Value;

/// One field of a config struct, as written in config.rs.
struct Field {
    name: String,
    ty: String,
    doc: Vec<String>,
    attrs: String,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// config.rs, config/algorithm.rs and config/outer.rs, where the config structs are written.
fn config_source() -> String {
    [
        "engine/src/config.rs",
        "engine/src/config/algorithm.rs",
        "engine/src/config/outer.rs",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(workspace().join(f)).unwrap())
    .collect::<Vec<_>>()
    .join("\n")
}

/// The `pub struct` definitions of config.rs and their fields, in source order.
fn parse_structs(src: &str) -> BTreeMap<String, Vec<Field>> {
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, Vec<Field>)> = None;
    let (mut doc, mut attrs) = (Vec::new(), String::new());
    for line in src.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("pub struct ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some((name.to_string(), Vec::new()));
        } else if line == "}" {
            if let Some((name, fields)) = current.take() {
                structs.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut() {
            if let Some(text) = line.strip_prefix("///") {
                doc.push(text.trim().to_string());
            } else if line.starts_with("#[") {
                attrs.push_str(line);
            } else if let Some((name, ty)) =
                line.strip_prefix("pub ").and_then(|l| l.split_once(": "))
            {
                let ty = ty.trim_end_matches(',').to_string();
                let (doc, attrs) = (std::mem::take(&mut doc), std::mem::take(&mut attrs));
                fields.push(Field {
                    name: name.to_string(),
                    ty,
                    doc,
                    attrs,
                });
            }
        }
    }
    structs
}

/// Every struct's default, serialized: the default column.
fn defaults() -> BTreeMap<&'static str, Value> {
    let v = |x: serde_json::Result<Value>| x.expect("a config serializes");
    BTreeMap::from([
        ("RunConfig", v(serde_json::to_value(RunConfig::default()))),
        ("TaskConfig", v(serde_json::to_value(TaskConfig::default()))),
        (
            "ModelConfig",
            v(serde_json::to_value(ModelConfig::default())),
        ),
        (
            "DropBlockConfig",
            v(serde_json::to_value(DropBlockConfig::default())),
        ),
        (
            "AlgorithmConfig",
            v(serde_json::to_value(AlgorithmConfig::default())),
        ),
        (
            "OuterConfig",
            v(serde_json::to_value(OuterConfig::default())),
        ),
        (
            "OptimizerOptions",
            v(serde_json::to_value(OptimizerOptions::default())),
        ),
        ("EvalConfig", v(serde_json::to_value(EvalConfig::default()))),
        ("LogConfig", v(serde_json::to_value(LogConfig::default()))),
    ])
}

/// The names an enumeration's values have in a config, or None for other types.
fn choices(ty: &str) -> Option<Vec<&'static str>> {
    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Option<Vec<&'static str>> {
        Some(all.iter().map(|v| name(*v)).collect())
    }
    match ty {
        "DeviceChoice" => names(DeviceChoice::ALL, DeviceChoice::name),
        "Dtype" => names(Dtype::ALL, Dtype::name),
        "TaskKind" => names(TaskKind::ALL, TaskKind::name),
        "Backbone" => names(Backbone::ALL, Backbone::name),
        "Augment" => names(Augment::ALL, Augment::name),
        "EvalBatchNorm" => names(EvalBatchNorm::ALL, EvalBatchNorm::name),
        "AlgorithmName" => names(AlgorithmName::ALL, AlgorithmName::name),
        "Memory" => names(Memory::ALL, Memory::name),
        "OptimizerName" => names(OptimizerName::ALL, OptimizerName::name),
        "Schedule" => names(Schedule::ALL, Schedule::name),
        "Precision" => names(Precision::ALL, Precision::name),
        "Comm" => names(Comm::ALL, Comm::name),
        "ConvTasks" => names(ConvTasks::ALL, ConvTasks::name),
        _ => None,
    }
}

/// What a type takes, for fields without an enumeration.
fn type_words(ty: &str) -> &'static str {
    match ty {
        "u64" | "usize" | "u32" => "an integer >= 0",
        "i64" => "an integer",
        "f64" => "a number",
        "bool" => "true or false",
        "String" => "a string",
        "Option<String>" => "a string, or unset",
        "Vec<i64>" => "a list of integers",
        "Option<f64>" => "a number, or unset",
        "Option<bool>" => "true or false, or unset",
        "Option<[f64; 2]>" => "a list of two numbers, or unset",
        other => panic!("config.rs: no words for the type `{other}`; add them to type_words"),
    }
}

/// A default as TOML writes it ("unset" for an absent optional value).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Number(n) if n.is_f64() => format!("{:?}", n.as_f64().unwrap()),
        other => other.to_string(),
    }
}

/// One table row: key, default, allowed values, description.
fn row(key: &str, f: &Field, default: &Value) -> String {
    let value = match default.get(&f.name) {
        Some(v) => toml_value(v),
        None if f.attrs.contains("skip_serializing_if = \"is_zero\"") => "0".into(),
        None if f
            .attrs
            .contains("skip_serializing_if = \"Option::is_none\"") =>
        {
            "unset".into()
        }
        // Left out while at their defaults, so that older configs keep their hash.
        None if f.attrs.contains("Precision::is_default") => "\"default\"".into(),
        None if f.attrs.contains("Comm::is_auto") => "\"auto\"".into(),
        None if f.attrs.contains("ConvTasks::is_auto") => "\"auto\"".into(),
        None if f.attrs.contains("std::ops::Not::not") => "false".into(),
        None if f.attrs.contains("MemoryBudget::is_auto") => "\"auto\"".into(),
        None if f.attrs.contains("OptimizerName::is_sgd") => "\"sgd\"".into(),
        None => panic!("{key}: missing from the serialized default"),
    };
    let (allowed, text): (Vec<&String>, Vec<&String>) =
        f.doc.iter().partition(|l| l.starts_with("Allowed:"));
    assert!(
        !text.is_empty(),
        "{key}: the field has no doc comment in config.rs"
    );
    // An `Allowed:` line replaces the type's words; an enumeration's names always come first.
    let allowed: Vec<&str> = allowed
        .iter()
        .map(|a| {
            a.trim_start_matches("Allowed:")
                .trim()
                .trim_end_matches('.')
        })
        .collect();
    let words = match (choices(&f.ty), allowed.is_empty()) {
        (Some(names), _) => {
            let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            let mut parts = vec![names.join(", ")];
            parts.extend(allowed.iter().map(|a| a.to_string()));
            parts.join("; ")
        }
        (None, false) => allowed.join(" "),
        (None, true)
            if f.ty.starts_with("Option<")
                && !f.ty.starts_with("Option<String")
                && !f.ty.starts_with("Option<f64")
                && !f.ty.starts_with("Option<bool")
                && !f.ty.starts_with("Option<[") =>
        {
            "a table, or unset".into()
        }
        (None, true) => type_words(&f.ty).into(),
    };
    let cells = [
        format!("`{key}`"),
        format!("`{value}`"),
        words,
        text.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    ];
    format!("| {} |", cells.map(|c| c.replace('|', "\\|")).join(" | "))
}

/// The whole reference page.
fn markdown() -> String {
    let src = config_source();
    let structs = parse_structs(&src);
    let defaults = defaults();
    let mut out = String::from(HEADER);
    for section in &structs["TrainConfig"] {
        out.push_str(&format!("\n## `[{}]`\n\n", section.name));
        out.push_str("| key | default | allowed | description |\n|---|---|---|---|\n");
        let mut tables = vec![(section.name.clone(), section.ty.as_str())];
        while let Some((prefix, ty)) = tables.pop() {
            let fields = structs
                .get(ty)
                .unwrap_or_else(|| panic!("config.rs: no struct {ty}"));
            for f in fields {
                let key = format!("{prefix}.{}", f.name);
                out.push_str(&row(&key, f, &defaults[ty]));
                out.push('\n');
                if let Some(inner) =
                    f.ty.strip_prefix("Option<")
                        .and_then(|t| t.strip_suffix('>'))
                {
                    if structs.contains_key(inner) {
                        tables.insert(0, (key, inner));
                    }
                }
            }
        }
    }
    out
}

const HEADER: &str = "# Configuration reference

<!-- Generated by `cargo xtask docs` from engine/src/config.rs and engine/src/config/outer.rs.
Do not edit by hand. -->

A run reads one TOML file (`metaloop train --config FILE`). The file names only what differs
from the defaults below. `--set key=value` overrides one key: a dotted key and a TOML value.

An unknown key, a wrongly typed value or a value outside its allowed range stops the command.
It prints one line naming the key and what is allowed, exits with code 2 and writes nothing.

The defaults sit on the fields of engine/src/config.rs (`[outer]`: engine/src/config/outer.rs),
in their `#[serde(default ...)]` attributes. `TrainConfig::default()` is an empty file. The
checks are in engine/src/config/validate.rs.
";

#[test]
fn configuration_reference_is_current() {
    let path = workspace().join("docs/configuration.md");
    let text = markdown();
    if std::env::var_os("METALOOP_WRITE_DOCS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/configuration.md is stale: run `cargo xtask docs`"
    );
}

#[test]
fn every_serialized_key_is_a_documented_field() {
    let src = config_source();
    let structs = parse_structs(&src);
    for (ty, value) in defaults() {
        let fields: Vec<&str> = structs[ty].iter().map(|f| f.name.as_str()).collect();
        for key in value.as_object().unwrap().keys() {
            assert!(
                fields.contains(&key.as_str()),
                "{ty}.{key}: not parsed from config.rs"
            );
        }
    }
    let sections: Vec<&str> = structs["TrainConfig"]
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let all = serde_json::to_value(TrainConfig::default()).unwrap();
    assert_eq!(all.as_object().unwrap().len(), sections.len());
}

#[test]
fn default_is_an_empty_file() {
    let empty: TrainConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, TrainConfig::default());
    let cfg = TrainConfig::default();
    assert_eq!(
        (cfg.run.name.as_str(), cfg.run.consistency_every),
        ("run", 100)
    );
    assert_eq!(
        (cfg.outer.lr, cfg.outer.meta_batch, cfg.eval.test_tasks),
        (1e-3, 25, 600)
    );
    assert_eq!(cfg.model.widths, vec![64, 160, 320, 640]);
    assert!(cfg.log.tensorboard);
    assert_eq!(
        (
            DropBlockConfig::default().rate,
            DropBlockConfig::default().size
        ),
        (0.1, 5)
    );
}
