//! `notify-publish`: the command cron jobs run to announce new trending videos.
//!
//! It replaces the seed's PHP `NotificationPublisher`: one notification from flags, or many
//! from NDJSON, validated by notify-proto and sent as canonical JSON either straight to Redis
//! (`PUBLISH tvs:{REGION}`) or through a gateway's `POST /api/publish`. It reports how far
//! each message reached (gateway nodes, or a gateway's browsers) and exits with a sysexits-style status ([`exit`]).
//!
//! # Layout
//! - [`cli`]: flags and `--help`.
//! - [`input`]: flags and NDJSON lines to validated notifications (defaults for `ts`, `rtl`).
//! - [`lines`]: reading NDJSON input line by line with bounded memory.
//! - [`sink`]: the Redis and gateway destinations, batching, error classification.
//! - [`output`]: human and JSON results, summary, closed-stdout tolerance.
//! - [`run`]: ties them together, publishing NDJSON input in bounded windows as it is read;
//!   `main` only parses flags and prints the final error.

pub mod cli;
pub mod input;
pub mod lines;
pub mod output;
pub mod sink;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lines::InputLines;
use notify_proto::Notification;
use tokio::io::AsyncRead;

pub use cli::Cli;

/// `--version`: the crate version and the git commit built (`unknown` outside a checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NOTIFY_GIT_COMMIT"),
    ")"
);
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
    /// EX_TEMPFAIL: published, but not acknowledged by `--wait-replicas` replicas in time.
    pub const TEMPFAIL: u8 = 75;
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
    let now = Notification::ts_now();
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
            cli.api_key().map(str::to_owned),
            cli.ca_cert.as_deref(),
            cli.timeout,
            usize::from(cli.concurrency),
        )?)),
        None => RedisSink::connect(
            cli.redis_url(),
            &cli.redis_tls(),
            cli.key_layout(),
            &cli.channel_prefix,
            cli.retention,
            cli.timeout,
            cli.wait_replicas,
        )
        .await
        .map(Sink::Redis)
        .map_err(|error| suggest_gateway(cli, error)),
    }
}

/// A newcomer who runs the gateway alone (embedded broker) and then `notify-publish` without
/// a target reaches for a Redis that is not there (the default, `redis://127.0.0.1:6379`):
/// when a Redis on this machine is unavailable, the error also says how to publish through a
/// local gateway instead.
fn suggest_gateway(cli: &Cli, error: PublishError) -> PublishError {
    let local_redis = reqwest::Url::parse(cli.redis_url())
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .is_some_and(|host| matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]"));
    match error {
        PublishError::Unavailable { target, reason } if local_redis => PublishError::Unavailable {
            target,
            reason: format!(
                "{reason}; to publish through a gateway instead, name it: --gateway-url {}",
                cli::LOCAL_GATEWAY_URL
            ),
        },
        other => other,
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

/// Valid messages published per round trip window: the Redis pipeline chunk.
pub const WINDOW_MESSAGES: usize = sink::REDIS_PIPELINE_CHUNK;

/// Input bytes per window: with the largest payloads a window holds fewer messages, so the
/// memory a run holds stays about this much whatever the input.
pub const WINDOW_BYTES: usize = 1024 * 1024;

/// A window that is not full is published once the input pauses this long, so a slow
/// producer's messages go out as they come.
const INPUT_PAUSE: Duration = Duration::from_millis(50);

/// Reads the input line by line and publishes it in windows of at most [`WINDOW_MESSAGES`]
/// messages or [`WINDOW_BYTES`] bytes, one window at a time: memory stays bounded however
/// long the input is, and the first messages are published before it ends.
async fn run_batch<O: Write, E: Write>(
    cli: &Cli,
    path: &Path,
    now: i64,
    started: Instant,
    reporter: &mut Reporter<O, E>,
) -> anyhow::Result<u8> {
    let mut lines = InputLines::new(open_input(path).await?, now, cli.max_payload_bytes);
    let mut publisher = WindowPublisher {
        cli,
        sink: None,
        window: Vec::new(),
        window_bytes: 0,
        unreplicated: 0,
    };
    let mut non_blank = 0;
    let mut read_error = None;
    let mut fatal = None;
    let mut finished = false;
    while fatal.is_none() {
        let next = if publisher.window.is_empty() {
            lines.next().await
        } else {
            match tokio::time::timeout(INPUT_PAUSE, lines.next()).await {
                Ok(next) => next,
                Err(_input_paused) => {
                    fatal = publisher.publish(reporter).await.err();
                    continue;
                }
            }
        };
        let line = match next {
            None => {
                finished = true;
                break;
            }
            Some(Err(source)) => {
                read_error = Some(InputError {
                    path: path.to_owned(),
                    source,
                });
                break;
            }
            Some(Ok(line)) => line,
        };
        non_blank += 1;
        match line.parsed {
            Ok(notification) => publisher.push(line.number, line.bytes, notification),
            Err(error) => reporter.bad(line.number, &error.to_string()),
        }
        if publisher.is_full() {
            fatal = publisher.publish(reporter).await.err();
        }
    }
    if fatal.is_none() && !publisher.window.is_empty() {
        fatal = publisher.publish(reporter).await.err();
    }
    if fatal.is_some() && !finished {
        reporter.unread_after(lines.lines_read());
    }

    reporter.summary(non_blank, started.elapsed());
    if let Some(error) = fatal {
        return Err(error.into());
    }
    if let Some(error) = read_error {
        return Err(error.into());
    }
    let counts = reporter.counts();
    Ok(if counts.failed > publisher.unreplicated {
        exit::FAILURE
    } else if publisher.unreplicated > 0 {
        exit::TEMPFAIL
    } else if counts.bad > 0 {
        exit::DATAERR
    } else {
        exit::SUCCESS
    })
}

/// The valid messages read but not yet published, and the destination, connected when the
/// first window is published.
struct WindowPublisher<'a> {
    cli: &'a Cli,
    sink: Option<Sink>,
    /// (line number, message).
    window: Vec<(usize, Notification)>,
    window_bytes: usize,
    /// Messages published but not acknowledged by `--wait-replicas` replicas (among the
    /// reporter's failed ones).
    unreplicated: usize,
}

impl WindowPublisher<'_> {
    fn push(&mut self, number: usize, bytes: usize, notification: Notification) {
        self.window_bytes += bytes;
        self.window.push((number, notification));
    }

    fn is_full(&self) -> bool {
        self.window.len() >= WINDOW_MESSAGES || self.window_bytes >= WINDOW_BYTES
    }

    /// Publishes the window and reports each message; empties the window. Returns the error
    /// that stops the run (its unpublished lines are reported as not attempted).
    async fn publish<O: Write, E: Write>(
        &mut self,
        reporter: &mut Reporter<O, E>,
    ) -> Result<(), PublishError> {
        let window = std::mem::take(&mut self.window);
        self.window_bytes = 0;
        let sink = match &mut self.sink {
            Some(sink) => sink,
            None => match connect(self.cli).await {
                Ok(sink) => self.sink.insert(sink),
                Err(error) => {
                    let numbers: Vec<usize> = window.iter().map(|(number, _)| *number).collect();
                    reporter.not_attempted(&numbers, &error.to_string());
                    return Err(error);
                }
            },
        };
        let batch: Vec<&Notification> = window.iter().map(|(_, n)| n).collect();
        let destinations: Vec<Destination> = batch.iter().map(|n| sink.destination(n)).collect();
        let mut reported = vec![false; batch.len()];
        let unreplicated = &mut self.unreplicated;
        let result = sink
            .publish_all(&batch, |index, result| {
                let number = window[index].0;
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
                    Err(error) => {
                        if matches!(error, PublishError::NotReplicated { .. }) {
                            *unreplicated += 1;
                        }
                        reporter.failed(number, &error.to_string());
                    }
                }
                reported[index] = true;
            })
            .await;
        if let Err(error) = result {
            let stopped: Vec<usize> = window
                .iter()
                .zip(&reported)
                .filter(|(_, done)| !**done)
                .map(|((number, _), _)| *number)
                .collect();
            reporter.not_attempted(&stopped, &error.to_string());
            return Err(error);
        }
        Ok(())
    }
}

/// The `--input` file, or stdin for `-`.
async fn open_input(path: &Path) -> Result<Box<dyn AsyncRead + Unpin + Send>, InputError> {
    if path == Path::new("-") {
        return Ok(Box::new(tokio::io::stdin()));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| InputError {
            path: path.to_owned(),
            source,
        })?;
    Ok(Box::new(file))
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
