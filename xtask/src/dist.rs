//! `cargo xtask dist`: the release tarball.
//!
//! Builds the shipped binaries in release mode, stages them under
//! `target/dist/notify-<version>-<target>/` with completions, man pages, `deploy/`, README,
//! licences and CHANGELOG, and packs that directory as `dist/notify-<version>-<target>.tar.gz`
//! (entries with fixed ownership and times, so two packs of the same files are identical).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use flate2::Compression;

/// The binaries an operator installs; the load generator and examples are not shipped.
const SHIPPED_BINARIES: [&str; 2] = ["notify-gateway", "notify-publish"];

/// Files from the workspace root copied into the archive's root.
const ROOT_FILES: [&str; 4] = ["README.md", "CHANGELOG.md", "LICENSE-MIT", "LICENSE-APACHE"];

/// Directories from the workspace root copied as they are (the systemd unit, example
/// configuration, container and Kubernetes files).
const ROOT_DIRS: [&str; 1] = ["deploy"];

pub fn run(target: Option<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root();
    let target = match target {
        Some(target) => target,
        None => host_target()?,
    };
    let name = format!("notify-{}-{target}", env!("CARGO_PKG_VERSION"));

    build_release(&root, &target)?;

    let stage = root.join("target").join("dist").join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("removing the old staging directory {}", stage.display()))?;
    }
    let bin_dir = stage.join("bin");
    create_dir(&bin_dir)?;
    let release_dir = root.join("target").join(&target).join("release");
    for binary in SHIPPED_BINARIES {
        copy(&release_dir.join(binary), &bin_dir.join(binary))?;
    }
    xtask::cli_docs::write_all(&stage).context("generating completions and man pages")?;
    for file in ROOT_FILES {
        copy(&root.join(file), &stage.join(file))?;
    }
    for dir in ROOT_DIRS {
        copy_dir(&root.join(dir), &stage.join(dir))?;
    }

    let dist_dir = root.join("dist");
    create_dir(&dist_dir)?;
    let tarball = dist_dir.join(format!("{name}.tar.gz"));
    pack(&stage, &name, &tarball)?;
    let size = std::fs::metadata(&tarball)
        .with_context(|| format!("reading the size of {}", tarball.display()))?
        .len();
    println!(
        "wrote {} ({:.1} MiB) in {:.0?}",
        tarball.display(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed()
    );
    Ok(())
}

/// The workspace root: xtask lives one directory below it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent directory")
        .to_owned()
}

/// A `cargo` command without the variables `cargo run` set for xtask itself: build scripts
/// that watch them (ring's watches `CARGO_MANIFEST_DIR`) would otherwise see a change and
/// rebuild the whole release tree that a plain `cargo build --release` had left fresh.
fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name)
        {
            cargo.env_remove(name);
        }
    }
    cargo
}

/// This machine's target triple, as rustc names it (`host:` in `rustc -vV`).
fn host_target() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV to learn the host target")?;
    if !output.status.success() {
        bail!(
            "rustc -vV failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout).context("rustc -vV printed non-UTF-8")?;
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no `host:` line")
}

/// `cargo build --release --locked --target <target>` of the shipped binaries (an explicit
/// target puts them in `target/<target>/release/` whatever the host).
fn build_release(root: &Path, target: &str) -> anyhow::Result<()> {
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--release", "--locked", "--target", target]);
    for binary in SHIPPED_BINARIES {
        build.args(["--package", binary, "--bin", binary]);
    }
    let status = build.status().context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

fn pack(stage: &Path, name: &str, tarball: &Path) -> anyhow::Result<()> {
    let file = File::create(tarball).with_context(|| format!("creating {}", tarball.display()))?;
    let mut archive = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    archive.mode(tar::HeaderMode::Deterministic);
    archive
        .append_dir_all(name, stage)
        .with_context(|| format!("packing {}", stage.display()))?;
    archive
        .into_inner()
        .and_then(GzEncoder::finish)
        .with_context(|| format!("finishing {}", tarball.display()))?;
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    create_dir(to)?;
    let entries = std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", from.display()))?;
        let path = entry.path();
        let destination = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &destination)?;
        } else {
            copy(&path, &destination)?;
        }
    }
    Ok(())
}
