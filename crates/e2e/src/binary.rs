//! Where the `scalelab` binary is, and a warning when it is older than the sources.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};

/// The path of the `scalelab` binary the harness runs.
///
/// `SCALELAB_BIN` if set; otherwise `scalelab` in the profile directory of the running test
/// (`target/debug/deps/e2e-1234` gives `target/debug/scalelab`). Cargo does not build another
/// package's binary for a test, so build it first: `cargo build -p cli && cargo test -p e2e`.
/// A binary older than the workspace's sources is used anyway, with a warning on stderr.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SCALELAB_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("SCALELAB_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("finding the test executable")?;
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .ok_or_else(|| anyhow!("cannot find the target directory from {}", exe.display()))?;
    let path = profile_dir.join("scalelab");
    if !path.is_file() {
        bail!(
            "{} does not exist: the end-to-end tests drive the real binary, so build it first \
             (`cargo build -p cli`, or `cargo build --release -p cli` for `--release` tests), \
             or point SCALELAB_BIN at one",
            path.display()
        );
    }
    warn_if_stale(&path);
    Ok(path)
}

/// Warns when a source file of the workspace is newer than the binary.
fn warn_if_stale(binary: &Path) {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(newer) = newest_source(&crates).filter(|(time, _)| *time > built) {
        eprintln!(
            "warning: {} is older than {}; run `cargo build -p cli` to test the current code",
            binary.display(),
            newer.1.display()
        );
    }
}

/// The most recently modified `.rs` or `.toml` file under `dir`.
fn newest_source(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
                let Ok(modified) = meta.modified() else {
                    continue;
                };
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest
}
