//! `notify-publish` entry point: parse flags, run, print the one error (with its causes) and
//! exit with the code documented in `--help`. Everything else lives in the library.

use std::io::Write;
use std::process::ExitCode;

use notify_publish::{exit, exit_code_of, run, Cli};

fn main() -> ExitCode {
    // reqwest and redis use rustls without choosing a crypto provider; ring is the one this
    // workspace builds. An error only means one is installed already.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse_checked();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "notify-publish: starting tokio: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "notify-publish: {error:#}");
            ExitCode::from(exit_code_of(&error))
        }
    }
}
