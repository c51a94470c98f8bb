//! `notify-publish`: the command cron jobs run to announce new trending videos.
//!
//! It replaces the seed's PHP `NotificationPublisher`: one notification from flags, or many
//! from NDJSON, validated by notify-proto and sent as canonical JSON either straight to Redis
//! (`PUBLISH tvs:{REGION}`) or through a gateway's `POST /api/publish`. It reports how many
//! subscribers got each message and exits with a sysexits-style status ([`exit`]).
//!
//! # Layout
//! - [`cli`]: flags and `--help`.
//! - [`input`]: flags and NDJSON lines to validated notifications (defaults for `ts`, `rtl`).
//! - [`sink`]: the Redis and gateway destinations, batching, error classification.
//! - [`output`]: human and JSON results, summary, closed-stdout tolerance.
//! - [`run`]: ties them together; `main` only parses flags and prints the final error.

pub mod cli;
pub mod input;
pub mod output;
pub mod sink;

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use notify_proto::Notification;

pub use cli::Cli;
use input::FlagError;
use output::Reporter;
use sink::{Destination, GatewaySink, PublishError, RedisSink, Sink};

/// Process exit codes (sysexits.h where one fits), as documented in `--help`.
pub mod exit {
    /// Every message was published.
    pub const SUCCESS: u8 = 0;
    /// Anything not covered below (an unexpected reply).
    pub const FAILURE: u8 = 1;
    /// Usage error; clap exits with it for missing or malformed flags.
    pub const USAGE: u8 = 2;
    /// EX_DATAERR: some input was not a valid notification.
    pub const DATAERR: u8 = 65;
    /// EX_NOINPUT: the `--input` file cannot be read.
    pub const NOINPUT: u8 = 66;
    /// EX_UNAVAILABLE: Redis or the gateway cannot be reached, or its broker is down.
    pub const UNAVAILABLE: u8 = 69;
    /// EX_NOPERM: the gateway (401/403) or Redis refused the credentials.
    pub const NOPERM: u8 = 77;
}

/// The `--input` file (or stdin) could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", .path.display())]
pub struct InputError {
    /// The path, or `-`.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// The exit code for an error returned by [`run`]: the first error in its chain that has one.
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(publish) = cause.downcast_ref::<PublishError>() {
            return publish.exit_code();
        }
        if cause.is::<FlagError>() {
            return exit::DATAERR;
        }
        if cause.is::<InputError>() {
            return exit::NOINPUT;
        }
    }
    exit::FAILURE
}

/// Runs the command. Results and per-line problems are printed here; a returned error is the
/// one reason the run failed, for `main` to print once (its exit code: [`exit_code_of`]).
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0);
    let mut reporter = Reporter::new(
        BufWriter::new(io::stdout()),
        io::stderr(),
        cli.output,
        cli.quiet,
    );
    let result = match &cli.input {
        Some(path) => run_batch(&cli, path, now, started, &mut reporter).await,
        None => run_single(&cli, now, &mut reporter).await,
    };
    reporter.finish();
    result
}

async fn connect(cli: &Cli) -> Result<Sink, PublishError> {
    match &cli.gateway_url {
        Some(url) => Ok(Sink::Gateway(GatewaySink::new(
            url,
            cli.api_key.clone(),
            cli.timeout,
            usize::from(cli.concurrency),
        )?)),
        None => Ok(Sink::Redis(
            RedisSink::connect(
                &cli.redis_url,
                &cli.channel_prefix,
                cli.retention,
                cli.timeout,
            )
            .await?,
        )),
    }
}

async fn run_single<O: Write, E: Write>(
    cli: &Cli,
    now: i64,
    reporter: &mut Reporter<O, E>,
) -> anyhow::Result<u8> {
    let notification = input::from_flags(&cli.flag_fields(), now)?;
    let mut sink = connect(cli).await?;
    let destination = sink.destination(&notification);
    let mut outcome = None;
    let fatal = sink
        .publish_all(&[&notification], |_, result| outcome = Some(result))
        .await;
    fatal?;
    match outcome {
        Some(Ok(delivery)) => {
            reporter.published(None, &notification, &destination, &delivery);
            Ok(exit::SUCCESS)
        }
        Some(Err(error)) => Err(error.into()),
        None => Err(anyhow::anyhow!("no reply for the notification")),
    }
}

async fn run_batch<O: Write, E: Write>(
    cli: &Cli,
    path: &Path,
    now: i64,
    started: Instant,
    reporter: &mut Reporter<O, E>,
) -> anyhow::Result<u8> {
    let bytes = read_input(path)?;
    let lines = input::parse_ndjson(&bytes, now, cli.max_payload_bytes);
    drop(bytes);
    let mut valid: Vec<(usize, &Notification)> = Vec::with_capacity(lines.len());
    for line in &lines {
        match &line.parsed {
            Ok(notification) => valid.push((line.number, notification)),
            Err(error) => reporter.bad(line.number, &error.to_string()),
        }
    }

    let mut fatal = None;
    if !valid.is_empty() {
        match connect(cli).await {
            Ok(mut sink) => {
                let batch: Vec<&Notification> = valid.iter().map(|(_, n)| *n).collect();
                let destinations: Vec<Destination> =
                    batch.iter().map(|n| sink.destination(n)).collect();
                let mut reported = vec![false; batch.len()];
                let result = sink
                    .publish_all(&batch, |index, result| {
                        let number = valid[index].0;
                        match result {
                            Ok(delivery) => {
                                reporter.published(
                                    Some(number),
                                    batch[index],
                                    &destinations[index],
                                    &delivery,
                                );
                            }
                            // The fatal error is reported once, with the lines it stopped.
                            Err(error) if error.is_fatal() => return,
                            Err(PublishError::Rejected(reason)) => reporter.bad(number, &reason),
                            Err(error) => reporter.failed(number, &error.to_string()),
                        }
                        reported[index] = true;
                    })
                    .await;
                if let Err(error) = result {
                    let stopped: Vec<usize> = valid
                        .iter()
                        .zip(&reported)
                        .filter(|(_, done)| !**done)
                        .map(|((number, _), _)| *number)
                        .collect();
                    reporter.not_attempted(&stopped, &error.to_string());
                    fatal = Some(error);
                }
            }
            Err(error) => {
                let numbers: Vec<usize> = valid.iter().map(|(number, _)| *number).collect();
                reporter.not_attempted(&numbers, &error.to_string());
                fatal = Some(error);
            }
        }
    }

    reporter.summary(lines.len(), started.elapsed());
    if let Some(error) = fatal {
        return Err(error.into());
    }
    let counts = reporter.counts();
    Ok(if counts.failed > 0 {
        exit::FAILURE
    } else if counts.bad > 0 {
        exit::DATAERR
    } else {
        exit::SUCCESS
    })
}

fn read_input(path: &Path) -> Result<Vec<u8>, InputError> {
    let mut bytes = Vec::new();
    let result = if path == Path::new("-") {
        io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut bytes).map(|_| ()))
    };
    result.map_err(|source| InputError {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_error_chain() {
        let flag = input::from_flags(&input::FlagFields::default(), 0).unwrap_err();
        assert_eq!(exit_code_of(&anyhow::Error::from(flag)), exit::DATAERR);
        let denied = PublishError::Denied {
            target: "gateway".into(),
            reason: "401".into(),
        };
        assert_eq!(
            exit_code_of(&anyhow::Error::from(denied).context("publishing")),
            exit::NOPERM
        );
        let input = InputError {
            path: "x".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert_eq!(exit_code_of(&input.into()), exit::NOINPUT);
        assert_eq!(exit_code_of(&anyhow::anyhow!("other")), exit::FAILURE);
    }
}
