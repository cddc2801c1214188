//! `cargo xtask docs`: regenerates docs/configuration.md and prints the prose measures.
//!
//! The reference is written by engine/tests/config_reference.rs (it reads the config types).
//! The measures: sentences of the prose outside code blocks and tables, split at `.`, `!` and
//! `?` at a word's end, and at list bullets. Headings and the `>` of quotes are left out.

use std::path::Path;
use std::process::ExitCode;

/// The Markdown files a newcomer reads, with the limits their sentences keep.
pub const DOCS: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "docs/run-directory.md",
    "docs/datasets.md",
    "docs/faults.md",
];

/// Words per sentence: the average and the longest must stay at or under these.
pub const MAX_AVERAGE: f64 = 25.0;
pub const MAX_SENTENCE: usize = 80;

/// `cargo xtask docs [--measure]`: with `--measure`, only prints the measures.
pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if args.iter().any(|a| a == "--measure") {
        print_measures(&crate::setup::repo_root())?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::setup::run(false)?;
    // `--workspace`, as `cargo xtask test` builds: `-p` would resolve other features and rebuild
    // tch and torch-sys.
    let code = crate::run_status(crate::cargo().env("METALOOP_WRITE_DOCS", "1").args([
        "test",
        "--workspace",
        "--test",
        "config_reference",
    ]))?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    println!("xtask: docs: wrote docs/configuration.md");
    print_measures(&crate::setup::repo_root())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints one line per file: lines, sentences, average and longest sentence in words.
pub fn print_measures(root: &Path) -> anyhow::Result<()> {
    for name in DOCS {
        let text =
            std::fs::read_to_string(root.join(name)).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let m = measure(&text);
        let within = m.average < MAX_AVERAGE && m.longest <= MAX_SENTENCE;
        println!(
            "{name}: {} lines, {} sentences, {:.1} words on average, longest {}{}",
            text.lines().count(),
            m.sentences,
            m.average,
            m.longest,
            if within { "" } else { " (over the limits)" }
        );
    }
    Ok(())
}

/// Sentence lengths of a Markdown text.
#[derive(Debug, PartialEq)]
pub struct Measure {
    pub sentences: usize,
    pub average: f64,
    pub longest: usize,
}

/// Measures the prose of `text` (see the module's doc).
pub fn measure(text: &str) -> Measure {
    let lengths: Vec<usize> = sentences(text)
        .iter()
        .map(|s| s.split_whitespace().count())
        .collect();
    let total: usize = lengths.iter().sum();
    Measure {
        sentences: lengths.len(),
        average: total as f64 / lengths.len().max(1) as f64,
        longest: lengths.iter().copied().max().unwrap_or(0),
    }
}

/// The prose's sentences, each with at least one word.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_code = false;
    for line in text.lines() {
        let t = line.trim_start().trim_start_matches('>').trim_start();
        if t.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || t.starts_with('|') || t.starts_with('#') || t.starts_with("<!--") {
            continue;
        }
        let words = match bullet_text(t) {
            Some(rest) => {
                flush(&mut current, &mut out);
                rest
            }
            None if t.is_empty() => {
                flush(&mut current, &mut out);
                t
            }
            None => t,
        };
        for word in words.split_whitespace() {
            current.push_str(word);
            current.push(' ');
            if word.ends_with(['.', '!', '?']) || word.ends_with(".)") || word.ends_with(".*") {
                flush(&mut current, &mut out);
            }
        }
    }
    flush(&mut current, &mut out);
    out
}

/// A list item's text without its marker (`- `, `* ` or `1. `), or None for other lines.
fn bullet_text(t: &str) -> Option<&str> {
    if let Some(rest) = t.strip_prefix("- ").or_else(|| t.strip_prefix("* ")) {
        return Some(rest);
    }
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    (digits > 0)
        .then(|| t[digits..].strip_prefix(". "))
        .flatten()
}

fn flush(current: &mut String, out: &mut Vec<String>) {
    let s = current.trim();
    if s.split_whitespace()
        .any(|w| w.chars().any(char::is_alphanumeric))
    {
        out.push(s.to_string());
    }
    current.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_stops_and_bullets_outside_code_and_tables() {
        let text = "# Title\n\nOne two three. Four five!\n- six seven\n- eight\n\n```\nnot. counted.\n```\n| a. | b. |\nnine ten eleven twelve?\n";
        let s = sentences(text);
        assert_eq!(
            s,
            [
                "One two three.",
                "Four five!",
                "six seven",
                "eight",
                "nine ten eleven twelve?"
            ]
        );
        let m = measure(text);
        assert_eq!((m.sentences, m.longest), (5, 4));
        assert!((m.average - 12.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn file_names_and_dotted_words_do_not_end_a_sentence() {
        assert_eq!(
            sentences("Edit engine/src/config.rs and e.g.x then stop.").len(),
            1
        );
    }

    /// The newcomer's docs keep short sentences (measured as above).
    #[test]
    fn docs_keep_short_sentences() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for name in DOCS {
            let m = measure(&std::fs::read_to_string(root.join(name)).unwrap());
            assert!(
                m.average < MAX_AVERAGE && m.longest <= MAX_SENTENCE,
                "{name}: {:.1} words a sentence on average (limit {MAX_AVERAGE}), longest {} (limit {MAX_SENTENCE})",
                m.average,
                m.longest
            );
        }
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(
            readme.lines().count() <= 150,
            "README.md: more than 150 lines"
        );
    }
}
