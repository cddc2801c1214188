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
