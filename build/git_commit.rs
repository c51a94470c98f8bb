//! Build script shared by the binaries: sets `NOTIFY_GIT_COMMIT` to the short hash of the
//! checked-out commit for `--version` and `notify_build_info`, or to `unknown` outside a git
//! checkout (a source tarball). `NOTIFY_GIT_COMMIT` in the build environment overrides it.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=NOTIFY_GIT_COMMIT");
    let commit = std::env::var("NOTIFY_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: the HEAD file (a branch switch) and the branch's ref (a commit).
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(reference) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={reference}");
        }
    }
    println!("cargo:rustc-env=NOTIFY_GIT_COMMIT={commit}");
}
