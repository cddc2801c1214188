//! Tidy checks, run as ordinary tests so that `cargo xtask test` checks everything CI checks:
//! the architecture invariants of ARCHITECTURE.md, by reading the sources.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources(crate_dir: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(crate_dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_path_buf(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// Lines that are code, not comments (a line comment or doc comment is skipped).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

/// `line` with the contents of its string literals removed (`"nccl"` becomes `""`).
fn without_string_literals(line: &str) -> String {
    let mut out = String::new();
    let (mut inside, mut escaped) = (false, false);
    for c in line.chars() {
        if inside {
            if escaped {
                escaped = false;
                continue;
            }
            if c == '\\' {
                escaped = true;
                continue;
            }
            if c != '"' {
                continue;
            }
            inside = false;
        } else if c == '"' {
            inside = true;
        }
        out.push(c);
    }
    out
}

#[test]
fn only_runtime_comm_touches_mpi_or_nccl() {
    let mut offenders = Vec::new();
    for dir in ["runtime/src", "engine/src", "launcher/src"] {
        for (path, text) in sources(dir) {
            if path.starts_with("runtime/src/comm") {
                continue;
            }
            for (n, line) in code_lines(&text) {
                // Config values name the backends ("nccl" in `run.comm`): text, not a call.
                let line = &without_string_literals(line);
                if line.contains("mpi::") || line.contains("use mpi") || line.contains("nccl") {
                    offenders.push(format!("{}:{n}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only runtime::comm may touch MPI or NCCL:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn only_runtime_kernels_holds_unsafe_code() {
    let mut offenders = Vec::new();
    for dir in ["runtime/src", "engine/src", "launcher/src", "src"] {
        for (path, text) in sources(dir) {
            // runtime::comm::nccl calls NCCL's C API (through cudarc's bindings), which takes raw
            // device pointers: its unsafe blocks stay in that one file.
            if path.starts_with("runtime/src/kernels")
                || path == Path::new("runtime/src/comm/nccl.rs")
            {
                continue;
            }
            for (n, line) in code_lines(&text) {
                if line.contains("unsafe ") || line.contains("unsafe{") {
                    offenders.push(format!("{}:{n}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only runtime::kernels (and runtime::comm::nccl, NCCL's C API) may hold unsafe code:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn libraries_never_print_or_parse_arguments() {
    let mut offenders = Vec::new();
    for dir in ["runtime/src", "engine/src"] {
        for (path, text) in sources(dir) {
            for (n, line) in code_lines(&text) {
                for bad in [
                    "println!",
                    "eprintln!",
                    "print!(",
                    "std::env::args",
                    "clap::",
                    "anyhow",
                ] {
                    if line.contains(bad) {
                        offenders.push(format!("{}:{n}: {}", path.display(), line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "runtime and engine must not print, parse arguments or use anyhow:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn library_code_has_no_stubs() {
    let mut offenders = Vec::new();
    for dir in ["runtime/src", "engine/src", "launcher/src"] {
        for (path, text) in sources(dir) {
            for (n, line) in code_lines(&text) {
                // The macro names are built so that this file does not contain them itself.
                if [concat!("todo", "!("), concat!("unimplemented", "!(")]
                    .iter()
                    .any(|m| line.contains(m))
                {
                    offenders.push(format!("{}:{n}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "stubs in library code:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_module_says_what_it_is_for() {
    let mut offenders = Vec::new();
    for dir in ["runtime/src", "engine/src", "launcher/src"] {
        for (path, text) in sources(dir) {
            if !text.trim_start().starts_with("//!") {
                offenders.push(path.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these modules do not start with a `//!` line saying what they are for:\n{}",
        offenders.join("\n")
    );
}

/// Process-wide allocator settings are runtime::host_memory's alone: glibc's `mallopt` and the
/// caching allocator's C functions are called only from its FFI half, runtime::kernels::host_ffi
/// (the one place with unsafe code for them), and nothing else reaches into that module.
#[test]
fn only_runtime_host_memory_changes_the_allocator() {
    let ffi = Path::new("runtime/src/kernels/host_ffi.rs");
    let api = Path::new("runtime/src/host_memory.rs");
    let mut offenders = Vec::new();
    for dir in ["runtime/src", "engine/src", "launcher/src", "src"] {
        for (path, text) in sources(dir) {
            for (n, line) in code_lines(&text) {
                let allocator_call = ["mallopt", "metaloop_install_caching_host_allocator"]
                    .iter()
                    .any(|f| line.contains(f));
                if (allocator_call && path != ffi) || (line.contains("host_ffi") && path != api) {
                    if path == Path::new("runtime/src/kernels/mod.rs")
                        && line.trim() == "pub(crate) mod host_ffi;"
                    {
                        continue;
                    }
                    offenders.push(format!("{}:{n}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only runtime::host_memory (through runtime::kernels::host_ffi) may change the process's \
         allocator:\n{}",
        offenders.join("\n")
    );
}

/// A crate's modules, one per file: `a/b.rs` and `a/b/mod.rs` are `["a", "b"]`.
fn module_of(path: &Path, src: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The `a::b::c` paths after `prefix` in `code` (a `{..}` group after it adds each member).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].chars().last().is_some_and(ident) {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let (head, tail) = match rest.find(|c: char| !(ident(c) || c == ':')) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let base: Vec<String> = head
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if (head.is_empty() || head.ends_with("::")) && tail.starts_with('{') {
            let group = &tail[1..tail.find('}').unwrap_or(tail.len())];
            for member in group.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let mut p = base.clone();
                p.extend(member.split("::").map(|s| s.trim().to_string()));
                out.push(p);
            }
        } else {
            out.push(base);
        }
    }
    out
}

/// Import circles between modules of one crate that are not nested in each other: a module may
/// use its parent and the reverse (a trait in `mod.rs` and its implementations), but two
/// modules side by side must not need each other. Re-exports (`pub use child::Item`) count as
/// the child. Returns each cycle found, as module paths.
fn sibling_circles(src: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: Vec<(Vec<String>, String)> = files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let code: String = code_lines(&text)
                .map(|(_, l)| l)
                .take_while(|l| !l.contains("#[cfg(test)]"))
                .collect::<Vec<_>>()
                .join("\n");
            (module_of(p, &root), code)
        })
        .collect();
    let index = |m: &[String]| modules.iter().position(|(n, _)| n.as_slice() == m);
    let mut reexports = std::collections::HashMap::new();
    for (m, code) in &modules {
        for line in code
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("pub use "))
        {
            for p in paths_after(line, "pub use ") {
                let p: Vec<String> = p.into_iter().filter(|s| s != "self").collect();
                let mut child = m.clone();
                child.push(p[0].clone());
                if p.len() > 1 && index(&child).is_some() {
                    reexports.insert((m.clone(), p.last().unwrap().clone()), child);
                }
            }
        }
    }
    let nested = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let mut edges = vec![std::collections::BTreeSet::new(); modules.len()];
    for (i, (m, code)) in modules.iter().enumerate() {
        let parent = &m[..m.len().saturating_sub(1)];
        let mut refs = paths_after(code, "crate::");
        refs.extend(paths_after(code, "super::").into_iter().map(|p| {
            let mut full = parent.to_vec();
            full.extend(p);
            full
        }));
        for r in refs {
            let Some(k) = (1..=r.len()).rev().find(|&k| index(&r[..k]).is_some()) else {
                continue;
            };
            let target = r
                .get(k)
                .and_then(|item| reexports.get(&(r[..k].to_vec(), item.clone())))
                .cloned()
                .unwrap_or_else(|| r[..k].to_vec());
            if !nested(m, &target) {
                edges[i].insert(index(&target).unwrap());
            }
        }
    }
    // A depth-first search: an edge back to a module on the current path closes a circle.
    fn visit(
        v: usize,
        edges: &[std::collections::BTreeSet<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
        found: &mut Vec<Vec<usize>>,
    ) {
        state[v] = 1;
        path.push(v);
        for &w in &edges[v] {
            if state[w] == 1 {
                let from = path.iter().position(|&p| p == w).unwrap();
                found.push(path[from..].to_vec());
            } else if state[w] == 0 {
                visit(w, edges, state, path, found);
            }
        }
        path.pop();
        state[v] = 2;
    }
    let mut state = vec![0u8; modules.len()];
    let mut found = Vec::new();
    for v in 0..modules.len() {
        if state[v] == 0 {
            visit(v, &edges, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
        .into_iter()
        .map(|c| {
            c.iter()
                .map(|&i| modules[i].0.join("::"))
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect()
}

#[test]
fn no_import_circle_between_sibling_modules() {
    for src in ["runtime/src", "engine/src", "launcher/src"] {
        let circles = sibling_circles(src);
        assert!(
            circles.is_empty(),
            "{src}: modules side by side that need each other:\n{}",
            circles.join("\n")
        );
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let code_a = "use crate::b::Thing;\n";
    let code_b = "use crate::{a::Other, c};\n";
    assert_eq!(paths_after(code_a, "crate::"), [["b", "Thing"]]);
    assert_eq!(
        paths_after(code_b, "crate::"),
        [vec!["a", "Other"], vec!["c"]]
    );
}

#[test]
fn no_source_file_is_over_500_lines() {
    // Kernel code is exempt: one file per element function would only scatter it.
    let exempt = ["runtime/src/kernels/cpu/mod.rs"];
    let mut long = Vec::new();
    for dir in ["runtime/src", "engine/src", "launcher/src"] {
        for (path, text) in sources(dir) {
            let n = text.lines().count();
            if n > 500 && !exempt.iter().any(|e| path == Path::new(e)) {
                long.push(format!("{}: {n} lines", path.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these files by job:\n{}",
        long.join("\n")
    );
}
