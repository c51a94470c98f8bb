//! What build this is: the crate version and the git commit it was built from (set by the
//! build script, `unknown` outside a git checkout), for `--version` and the
//! `notify_build_info{version,commit}` metric.

/// The crate version.
pub const PACKAGE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short hash of the commit built, or `unknown`.
pub const COMMIT: &str = env!("NOTIFY_GIT_COMMIT");
/// `--version`: `0.1.0 (commit 1a2b3c4)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NOTIFY_GIT_COMMIT"),
    ")"
);
