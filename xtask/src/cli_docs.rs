//! Shell completions (bash, zsh, fish) and man pages for the shipped binaries, generated from
//! their clap definitions so they never drift from `--help`.
//!
//! Layout written under the output directory, as packagers install them:
//! - `completions/bash/<bin>.bash`, `completions/zsh/_<bin>`, `completions/fish/<bin>.fish`
//! - `man/man1/<bin>.1` (and `<bin>-<subcommand>.1` for each subcommand)

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The shells a completion script is generated for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// A failure to write one generated file.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct WriteError {
    /// The file or directory that could not be written.
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The clap command of every shipped binary, named as the binary is.
pub fn shipped_commands() -> Vec<clap::Command> {
    vec![
        notify_gateway::GatewayConfig::command(),
        notify_publish::Cli::command(),
    ]
}

/// Writes the completions and man pages of every shipped binary under `out_dir`; returns the
/// files written.
pub fn write_all(out_dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for command in shipped_commands() {
        written.extend(write_completions(command.clone(), out_dir)?);
        written.extend(write_man_pages(command, out_dir)?);
    }
    Ok(written)
}

/// Writes one completion script per shell in [`SHELLS`] for `command`.
pub fn write_completions(
    mut command: clap::Command,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, WriteError> {
    let bin_name = command.get_name().to_owned();
    let mut written = Vec::new();
    for shell in SHELLS {
        let dir = out_dir.join("completions").join(shell.to_string());
        create_dir(&dir)?;
        let path =
            clap_complete::generate_to(shell, &mut command, &bin_name, &dir).map_err(|source| {
                WriteError {
                    path: dir.clone(),
                    source,
                }
            })?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the section-1 man page of `command` and of each of its visible subcommands.
pub fn write_man_pages(command: clap::Command, out_dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let dir = out_dir.join("man").join("man1");
    create_dir(&dir)?;
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();
    write_man_page_tree(command, &dir, &mut written)?;
    Ok(written)
}

fn write_man_page_tree(
    command: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), WriteError> {
    for subcommand in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_man_page_tree(subcommand.clone(), dir, written)?;
    }
    let man = clap_mangen::Man::new(command);
    let path = dir.join(man.get_filename());
    man.generate_to(dir).map_err(|source| WriteError {
        path: path.clone(),
        source,
    })?;
    written.push(path);
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_owned(),
        source,
    })
}
