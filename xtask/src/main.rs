//! `cargo xtask <task>`: release tasks for the notify workspace.
//!
//! - `dist [--target TRIPLE]`: release binaries, completions, man pages and the files an
//!   operator needs, packed as `dist/notify-<version>-<target>.tar.gz`.
//! - `cli-docs --out DIR`: only the completions and man pages (fast; what the tests run).

mod dist;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Release tasks for the notify workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build release binaries and pack them with completions, man pages, the systemd unit,
    /// the deploy/ examples, README, licences and CHANGELOG into dist/.
    Dist {
        /// Target triple to build for (default: this machine's).
        #[arg(long)]
        target: Option<String>,
    },
    /// Write shell completions and man pages for the shipped binaries.
    CliDocs {
        /// Directory to write completions/ and man/ into.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Dist { target } => dist::run(target),
        Task::CliDocs { out } => xtask::cli_docs::write_all(&out)
            .map(|written| println!("wrote {} files under {}", written.len(), out.display()))
            .context("generating completions and man pages"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
