//! Release tasks for the notify workspace, run as `cargo xtask <task>` (the alias is in
//! `.cargo/config.toml`).
//!
//! # Layout
//! - [`cli_docs`]: shell completions and man pages generated from the clap definitions of the
//!   shipped binaries (`notify-gateway`, `notify-publish`).
//!
//! The binary (`main.rs`) adds `dist`: release build, staging and the tarball.

pub mod cli_docs;
