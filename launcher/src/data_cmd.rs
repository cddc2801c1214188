//! `metaloop data fetch | check`: getting a dataset onto the machine and checking it.
//!
//! `fetch omniglot` downloads Omniglot's two zips from the Omniglot repository
//! (github.com/brendenlake/omniglot, `python/`) with ureq (rustls), resuming a partial download
//! with an HTTP Range request. Each file is written to a hidden `.<name>.part` and renamed to its
//! name only after every check passed, so a name that exists is a complete, checked file: the
//! zip's own CRC-32 of every entry, Omniglot's known structure (images_background: 30
//! alphabets, 964 characters; images_evaluation: 20 alphabets, 659 characters; 20 drawings per
//! character), and the MD5 that torchvision publishes for each zip (torchvision/datasets/
//! omniglot.py, `zips_md5`; no published SHA-256 is known, so the SHA-256 is computed and printed
//! for the record, not checked). A failed check deletes the partial file; an interrupted transfer
//! keeps it for the next run to resume. `METALOOP_OMNIGLOT_URL` replaces the base URL (a mirror,
//! or a test's local server); with it, the MD5s are those of `METALOOP_OMNIGLOT_MD5`
//! (`<background>,<evaluation>`) when set, else unchecked.
//!
//! `fetch miniimagenet` prints where the files come from: ImageNet's licence allows no
//! automatic download. `check <kind> <root>` loads a dataset with the engine's loader and prints
//! its layout and counts, without training.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use md5::Digest;

use crate::errors::bad;

/// The Omniglot repository's `python/` folder, as raw files.
const OMNIGLOT_URL: &str = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python";
const URL_ENV: &str = "METALOOP_OMNIGLOT_URL";
const MD5_ENV: &str = "METALOOP_OMNIGLOT_MD5";
/// The most bytes one archive may have. The published zips are 9.5 MB (background) and 6.5 MB
/// (evaluation); a mirror that announces or sends more is refused, so that a wrong server cannot
/// fill the disk.
const MAX_ARCHIVE_BYTES: u64 = 32 << 20;
/// Drawings of every Omniglot character (20 people drew each).
const DRAWINGS: usize = 20;

/// One of Omniglot's two zips and the structure it is known to have.
struct Archive {
    set: &'static str,
    alphabets: usize,
    characters: usize,
    /// torchvision's published MD5 (torchvision/datasets/omniglot.py).
    md5: &'static str,
}

const OMNIGLOT: [Archive; 2] = [
    Archive {
        set: "images_background",
        alphabets: 30,
        characters: 964,
        md5: "68d2efa1b9178cc56df9314c21c6e718",
    },
    Archive {
        set: "images_evaluation",
        alphabets: 20,
        characters: 659,
        md5: "6b91aef0f799c5bb55b94e3f2daec811",
    },
];

#[derive(Subcommand)]
pub enum DataCommand {
    /// Downloads and checks a dataset (omniglot), or says where to get it (miniimagenet).
    Fetch {
        /// omniglot or miniimagenet.
        kind: String,
        /// Target folder (default: data/<kind>, what the configs' task.root expects).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Checks a dataset's layout and counts with the loader training uses, without training.
    Check {
        /// omniglot, miniimagenet or folder (one folder per class).
        kind: String,
        /// The dataset's folder.
        root: PathBuf,
    },
}

/// Runs a `metaloop data` command.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch { kind, to } => {
            let to = to.unwrap_or_else(|| Path::new("data").join(&kind));
            match kind.as_str() {
                "omniglot" => fetch_omniglot(&to),
                "miniimagenet" => {
                    print!("{}", miniimagenet_instructions(&to));
                    Ok(())
                }
                other => Err(bad(format!(
                    "data fetch: unknown dataset {other:?}, expected omniglot or miniimagenet"
                ))),
            }
        }
        DataCommand::Check { kind, root } => check(&kind, &root),
    }
}

fn fetch_omniglot(to: &Path) -> Result<()> {
    let custom = std::env::var(URL_ENV).ok().filter(|u| !u.is_empty());
    let base = custom
        .as_deref()
        .unwrap_or(OMNIGLOT_URL)
        .trim_end_matches('/');
    let md5s = expected_md5s(custom.is_some())?;
    let made = !to.exists();
    std::fs::create_dir_all(to)
        .map_err(|e| bad(format!("{}: {}", to.display(), crate::errors::io_words(&e))))?;
    let result = fetch_archives(to, base, md5s);
    if result.is_err() && made {
        // Only succeeds while empty: a partial download stays for the next run to resume.
        let _ = std::fs::remove_dir(to);
    }
    result
}

fn fetch_archives(to: &Path, base: &str, md5s: Vec<Option<String>>) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(20))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    for (archive, md5) in OMNIGLOT.iter().zip(md5s) {
        let file = to.join(format!("{}.zip", archive.set));
        if to.join(archive.set).is_dir() {
            println!(
                "{}: present as a folder, not downloaded",
                to.join(archive.set).display()
            );
            continue;
        }
        if file.is_file() {
            let summary = verify(&file, archive, md5.as_deref()).map_err(|e| {
                bad(format!(
                    "{}: {e:#}; delete it to download it again",
                    file.display()
                ))
            })?;
            println!("{}: present, {summary}", file.display());
            continue;
        }
        let part = to.join(format!(".{}.zip.part", archive.set));
        let url = format!("{base}/{}.zip", archive.set);
        download(&agent, &url, &part)?;
        match verify(&part, archive, md5.as_deref()) {
            Ok(summary) => {
                std::fs::rename(&part, &file).with_context(|| file.display().to_string())?;
                File::open(to).and_then(|d| d.sync_all()).ok();
                println!("{}: {summary}", file.display());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(bad(format!("{url}: {e:#} (nothing kept)")));
            }
        }
    }
    println!(
        "omniglot is in {}: task.root = {:?}",
        to.display(),
        to.display().to_string()
    );
    Ok(())
}

/// The MD5 to check for each archive: the published ones for the Omniglot repository, those
/// of `METALOOP_OMNIGLOT_MD5` for another source, or none.
fn expected_md5s(custom: bool) -> Result<Vec<Option<String>>> {
    if !custom {
        return Ok(OMNIGLOT.iter().map(|a| Some(a.md5.to_string())).collect());
    }
    let Some(list) = std::env::var(MD5_ENV).ok().filter(|v| !v.is_empty()) else {
        return Ok(vec![None; OMNIGLOT.len()]);
    };
    let md5s: Vec<String> = list.split(',').map(|s| s.trim().to_lowercase()).collect();
    if md5s.len() != OMNIGLOT.len() || md5s.iter().any(|m| m.len() != 32) {
        return Err(bad(format!(
            "{MD5_ENV}: expected two MD5s (32 hex digits) as <background>,<evaluation>, got {list:?}"
        )));
    }
    Ok(md5s.into_iter().map(Some).collect())
}

/// Downloads `url` into `part`, continuing from `part`'s length when the server honours a Range
/// request. Network failures are one-line bad-input errors; the partial file stays for a resume.
fn download(agent: &ureq::Agent, url: &str, part: &Path) -> Result<()> {
    let have = part.metadata().map_or(0, |m| m.len());
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        // The partial file is already whole: the checks decide.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            return Err(bad(format!("{url}: HTTP {code} {}", r.status_text())))
        }
        Err(ureq::Error::Transport(t)) => {
            return Err(bad(format!(
            "{url}: cannot download ({}): check the network, or set {URL_ENV} to a reachable copy",
            one_line(&t.to_string())
        )))
        }
    };
    let start = if response.status() == 206 { have } else { 0 };
    let length: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    let total = length.map(|l| l + start);
    if let Some(t) = total.filter(|&t| t > MAX_ARCHIVE_BYTES) {
        let _ = std::fs::remove_file(part);
        return Err(bad(format!(
            "{url}: the server announces {t} bytes, more than the {MAX_ARCHIVE_BYTES} an Omniglot archive may have (nothing kept)"
        )));
    }
    let mut file = File::options()
        .create(true)
        .append(start > 0)
        .write(true)
        .truncate(start == 0)
        .open(part)
        .with_context(|| part.display().to_string())?;
    if start > 0 {
        file.seek(std::io::SeekFrom::End(0))?;
    }
    let bar = progress_bar(url, total, start);
    let body = response
        .into_reader()
        .take((MAX_ARCHIVE_BYTES + 1).saturating_sub(start));
    let written = copy_body(body, &mut file, &bar);
    bar.finish_and_clear();
    if start + written.as_ref().map_or_else(|(n, _)| *n, |n| *n) > MAX_ARCHIVE_BYTES {
        drop(file);
        let _ = std::fs::remove_file(part);
        return Err(bad(format!(
            "{url}: the server sent more than the {MAX_ARCHIVE_BYTES} bytes an Omniglot archive may have (nothing kept)"
        )));
    }
    file.sync_all()
        .with_context(|| part.display().to_string())?;
    let got = start + written.as_ref().map_or_else(|(n, _)| *n, |n| *n);
    match (written, total) {
        (Err((_, e)), _) => Err(bad(format!(
            "{url}: download interrupted after {got} bytes ({}); run the same command again to resume",
            one_line(&e.to_string())
        ))),
        (Ok(_), Some(t)) if got != t => Err(bad(format!(
            "{url}: download interrupted after {got} of {t} bytes; run the same command again to resume"
        ))),
        (Ok(_), _) => Ok(()),
    }
}

/// Copies the body into `file`, advancing the bar; the bytes written, also on failure.
fn copy_body(
    mut body: impl Read,
    file: &mut File,
    bar: &indicatif::ProgressBar,
) -> std::result::Result<u64, (u64, std::io::Error)> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = match body.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((n, e)),
        };
        file.write_all(&buf[..k]).map_err(|e| (n, e))?;
        n += k as u64;
        bar.inc(k as u64);
    }
}

fn progress_bar(url: &str, total: Option<u64>, start: u64) -> indicatif::ProgressBar {
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let (bar, template) = match total {
        Some(t) => (
            indicatif::ProgressBar::new(t),
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{prefix} {spinner} {bytes} {bytes_per_sec}",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name);
    bar.set_position(start);
    bar
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a downloaded zip: its MD5 (when one is expected), every entry's CRC-32, and
/// Omniglot's structure. Returns a one-line summary.
fn verify(path: &Path, archive: &Archive, md5: Option<&str>) -> Result<String> {
    let (got_md5, sha256) = digests(path)?;
    if let Some(want) = md5 {
        if got_md5 != want {
            anyhow::bail!("MD5 {got_md5}, expected {want} (published by torchvision)");
        }
    }
    let counts = zip_structure(path, archive.set)?;
    let alphabets: BTreeSet<&String> = counts.keys().map(|(a, _)| a).collect();
    if alphabets.len() != archive.alphabets || counts.len() != archive.characters {
        anyhow::bail!(
            "{} alphabets and {} characters, expected {} and {} (Omniglot's {})",
            alphabets.len(),
            counts.len(),
            archive.alphabets,
            archive.characters,
            archive.set
        );
    }
    if let Some(((a, c), n)) = counts.iter().find(|(_, n)| **n != DRAWINGS) {
        anyhow::bail!("{a}/{c} has {n} drawings, expected {DRAWINGS}");
    }
    let md5_note = if md5.is_some() {
        "checked"
    } else {
        "not checked"
    };
    Ok(format!(
        "{} alphabets, {} characters, {} drawings; zip CRCs checked; MD5 {got_md5} ({md5_note}); SHA-256 {sha256}",
        alphabets.len(),
        counts.len(),
        counts.len() * DRAWINGS
    ))
}

fn digests(path: &Path) -> Result<(String, String)> {
    let mut file = File::open(path).with_context(|| path.display().to_string())?;
    let (mut md5, mut sha) = (md5::Md5::new(), sha2::Sha256::new());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = file.read(&mut buf)?;
        if k == 0 {
            break;
        }
        md5.update(&buf[..k]);
        sha.update(&buf[..k]);
    }
    Ok((hex(&md5.finalize()), hex(&sha.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads every entry of the zip (the zip crate checks each entry's CRC-32 at its end) and
/// counts the PNG drawings per (alphabet, character) of `<set>/<alphabet>/<character>/*.png`.
fn zip_structure(path: &Path, set: &str) -> Result<BTreeMap<(String, String), usize>> {
    let file = File::open(path).with_context(|| path.display().to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("not a readable zip archive ({e})"))?;
    let mut counts = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| anyhow::anyhow!("zip entry {i}: {e}"))?;
        let name = entry.name().to_string();
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| anyhow::anyhow!("zip entry {name}: {e}"))?;
        if entry.is_dir() || name.starts_with("__MACOSX/") {
            continue;
        }
        let parts: Vec<&str> = name.split('/').collect();
        let parts = match parts.first() {
            Some(&first) if first == set => &parts[1..],
            _ => &parts[..],
        };
        match parts {
            [alphabet, character, file] if file.ends_with(".png") => {
                *counts
                    .entry((alphabet.to_string(), character.to_string()))
                    .or_insert(0) += 1;
            }
            _ if parts.last().is_some_and(|f| f.starts_with('.')) => {}
            _ => anyhow::bail!(
                "unexpected entry {name}, expected {set}/<alphabet>/<character>/<drawing>.png"
            ),
        }
    }
    Ok(counts)
}

fn miniimagenet_instructions(to: &Path) -> String {
    format!(
        "miniImageNet cannot be downloaded automatically: its images are ImageNet's (ILSVRC-2012),
whose licence requires each user to accept ImageNet's terms (image-net.org).

Where the files come from:
  - train.csv, val.csv, test.csv: Ravi & Larochelle's split (github.com/twitter/meta-learning-lstm,
    data/miniImagenet/): 64, 16 and 20 classes of 600 images, lines `filename,label`.
  - images/: the 60,000 listed images, taken from the ILSVRC-2012 training set and resized to
    84x84 (other sizes are resized when loaded).

Expected layout:
  {to}/images/n0153282900000005.jpg ...
  {to}/train.csv
  {to}/val.csv
  {to}/test.csv

Then check it: metaloop data check miniimagenet {to}
",
        to = to.display()
    )
}

/// `metaloop data check`: loads the dataset with the loader training uses and prints its counts.
fn check(kind: &str, root: &Path) -> Result<()> {
    use metaloop_engine::data::{self, ImageSpec, Split};
    let ds = match kind {
        "omniglot" => data::omniglot::load(&data::omniglot::OmniglotConfig::new(root)),
        "miniimagenet" => {
            data::miniimagenet::load(&data::miniimagenet::MiniImageNetConfig::new(root))
        }
        "folder" => data::folder::load(&data::folder::FolderConfig::new(root, ImageSpec::rgb(84))),
        other => {
            return Err(bad(format!(
                "data check: unknown dataset {other:?}, expected omniglot, miniimagenet or folder"
            )))
        }
    }
    .map_err(crate::errors::setup_error)?;
    println!("{kind} {}: {} images", root.display(), ds.report().images);
    for split in Split::ALL {
        let Ok(classes) = ds.classes(split) else {
            continue;
        };
        let images: usize = classes.iter().map(|&c| ds.class_len(c)).sum();
        println!(
            "  {}: {} classes, {images} images",
            split.name(),
            classes.len()
        );
    }
    if kind == "omniglot" {
        println!("{}", omniglot_structure(&ds));
    }
    Ok(())
}

/// Alphabets, characters and drawings per set, compared with Omniglot's known structure.
fn omniglot_structure(ds: &metaloop_engine::data::ImageDataset) -> String {
    use metaloop_engine::data::{ClassRef, Split};
    let mut sets: BTreeMap<String, (BTreeSet<String>, usize, BTreeSet<usize>)> = BTreeMap::new();
    for split in Split::ALL {
        for &c in ds.classes(split).unwrap_or(&[]) {
            if c.rotation != 0 {
                continue;
            }
            let name = ds.class_name(ClassRef {
                class: c.class,
                rotation: 0,
            });
            let parts: Vec<&str> = name.split('/').collect();
            if let [set, alphabet, _] = parts[..] {
                let e = sets.entry(set.to_string()).or_default();
                e.0.insert(alphabet.to_string());
                e.1 += 1;
                e.2.insert(ds.class_len(c));
            }
        }
    }
    let mut lines = Vec::new();
    let mut standard = true;
    for a in &OMNIGLOT {
        let (alphabets, characters, drawings) = sets
            .get(a.set)
            .map_or((0, 0, BTreeSet::new()), |e| (e.0.len(), e.1, e.2.clone()));
        standard &= alphabets == a.alphabets
            && characters == a.characters
            && drawings.iter().all(|&d| d == DRAWINGS);
        lines.push(format!(
            "  {}: {alphabets} alphabets, {characters} characters, drawings per character {drawings:?}",
            a.set
        ));
    }
    lines.push(if standard {
        "  the standard Omniglot (30 + 20 alphabets, 964 + 659 characters, 20 drawings each)".into()
    } else {
        "  note: not the standard Omniglot (30 + 20 alphabets, 964 + 659 characters, 20 drawings each)".into()
    });
    lines.join("\n")
}
