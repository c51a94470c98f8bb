//! Command-line flags (clap derive). Settings that describe where and how to publish can also
//! come from `NOTIFY_*` environment variables; the flags that describe the one notification
//! (`--region`, `--title`, …) deliberately cannot, so a stray variable never changes a message.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::input::FlagFields;
use crate::output::Format;

/// `--help` text after the flags: input format and exit status.
pub const AFTER_HELP: &str = "\
Input (--input FILE, or --input - for stdin): one JSON object per line, the seed's shape:
  {\"event\":\"new_trending\",\"region\":\"AE\",\"video_id\":\"…\",\"title\":\"…\",\"thumbnail\":\"https://…\",\"channel\":\"…\"}
  \"rtl\" defaults from the region (true for AE, SA, IL, …) and \"ts\" to now; blank lines are skipped.

Exit status:
  0   every message was published
  1   any other failure (an unexpected reply from Redis or the gateway)
  2   usage error: a missing or malformed flag
  65  some input was bad: a flag value that makes no valid notification (\"invalid --title:
      field `title` is empty\"), or NDJSON lines, each named (\"line 3: field `title` is
      missing\"); the good lines were still published
  66  the --input file cannot be read
  69  Redis or the gateway is unavailable (connection refused, no answer within --timeout,
      or the gateway's broker is down); the summary counts what was not published
  77  permission denied: the gateway answered 401/403 (missing or wrong --api-key), or Redis
      refused the credentials in --redis-url
When several apply, 77 and 69 win over 1, and 1 over 65.";

/// Publish `new_trending` notifications to Redis or a notify gateway, one from flags or many
/// from NDJSON, and report how many subscribers got each.
#[derive(Debug, Parser)]
#[command(name = "notify-publish", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Region of the one notification: ISO 3166-1 alpha-2, case-insensitive (AE, fi, …)
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub region: Option<String>,

    /// Video id of the one notification
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub video_id: Option<String>,

    /// Video title, any script
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub title: Option<String>,

    /// Thumbnail URL (http or https)
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub thumbnail: Option<String>,

    /// Channel (uploader) title
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub channel: Option<String>,

    /// Mark the title right-to-left (default: from the region)
    #[arg(long, conflicts_with_all = ["no_rtl", "input"])]
    pub rtl: bool,

    /// Mark the title left-to-right (default: from the region)
    #[arg(long, conflicts_with = "input")]
    pub no_rtl: bool,

    /// Publish time, Unix seconds (default: now)
    #[arg(long, value_name = "UNIX_SECONDS", conflicts_with = "input")]
    pub ts: Option<i64>,

    /// Publish every line of an NDJSON file instead; `-` reads stdin
    #[arg(long, short, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Redis to PUBLISH to (ignored with --gateway-url)
    #[arg(
        long,
        env = "NOTIFY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_parser = parse_redis_url
    )]
    pub redis_url: String,

    /// Channel prefix: messages go to {prefix}{REGION}
    #[arg(long, env = "NOTIFY_CHANNEL_PREFIX", default_value = notify_proto::DEFAULT_CHANNEL_PREFIX)]
    pub channel_prefix: String,

    /// Messages kept in each region's Redis stream for resume (approximate MAXLEN)
    #[arg(long, env = "NOTIFY_HISTORY_RETENTION", default_value_t = notify_core::broker::redis::DEFAULT_RETENTION)]
    pub retention: usize,

    /// Publish through a gateway's POST /api/publish instead of Redis (http://host:port)
    #[arg(long, env = "NOTIFY_GATEWAY_URL", value_parser = parse_gateway_url)]
    pub gateway_url: Option<String>,

    /// Bearer key for the gateway's /api/publish
    #[arg(long, env = "NOTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Connect and reply timeout for Redis or the gateway (humantime: 5s, 500ms)
    #[arg(long, env = "NOTIFY_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Regions published concurrently through a gateway, for --input (one request in flight per
    /// region keeps each region's messages in input order)
    #[arg(long, env = "NOTIFY_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Largest canonical JSON accepted per message, in bytes (the gateway's limit)
    #[arg(long, env = "NOTIFY_MAX_PAYLOAD_BYTES", default_value_t = notify_proto::DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// human: sentences (successes on stdout, problems and the summary on stderr);
    /// json: one object per message on stdout, then {"summary":{…}}
    #[arg(long, env = "NOTIFY_OUTPUT", value_enum, default_value_t = Format::Human)]
    pub output: Format,

    /// Do not print a line per published message (human output; errors and the summary stay)
    #[arg(long, short)]
    pub quiet: bool,
}

impl Cli {
    /// The one notification's flags, when not reading `--input`.
    pub fn flag_fields(&self) -> FlagFields {
        FlagFields {
            region: self.region.clone().unwrap_or_default(),
            video_id: self.video_id.clone().unwrap_or_default(),
            title: self.title.clone().unwrap_or_default(),
            thumbnail: self.thumbnail.clone().unwrap_or_default(),
            channel: self.channel.clone().unwrap_or_default(),
            rtl: match (self.rtl, self.no_rtl) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            ts: self.ts,
        }
    }
}

fn parse_redis_url(url: &str) -> Result<String, String> {
    redis::Client::open(url)
        .map(|_| url.to_owned())
        .map_err(|error| format!("not a Redis URL (redis://host:port[/db]): {error}"))
}

fn parse_gateway_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("expected http://host:port (plain HTTP; terminate TLS in front of the gateway)")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || rest.contains(char::is_whitespace) {
        return Err("expected http://host:port".to_owned());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if timeout.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn after_help_documents_every_exit_code() {
        for code in [
            crate::exit::SUCCESS,
            crate::exit::FAILURE,
            crate::exit::USAGE,
            crate::exit::DATAERR,
            crate::exit::NOINPUT,
            crate::exit::UNAVAILABLE,
            crate::exit::NOPERM,
        ] {
            assert!(
                AFTER_HELP.contains(&format!("\n  {code:<3} ")),
                "exit code {code} is not in --help"
            );
        }
    }

    #[test]
    fn flags_or_input() {
        let single = Cli::try_parse_from([
            "notify-publish",
            "--region",
            "AE",
            "--video-id",
            "v",
            "--title",
            "t",
            "--thumbnail",
            "https://x/a",
            "--channel",
            "c",
            "--no-rtl",
        ])
        .unwrap();
        assert_eq!(single.flag_fields().rtl, Some(false));
        assert_eq!(single.timeout, Duration::from_secs(5));
        assert!(Cli::try_parse_from(["notify-publish", "--input", "-"]).is_ok());
        assert!(Cli::try_parse_from(["notify-publish"]).is_err());
        assert!(Cli::try_parse_from(["notify-publish", "--input", "-", "--region", "AE"]).is_err());
        assert!(Cli::try_parse_from(["notify-publish", "-i", "-", "--timeout", "0s"]).is_err());
        assert!(
            Cli::try_parse_from(["notify-publish", "-i", "-", "--gateway-url", "ftp://x"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["notify-publish", "-i", "-", "--redis-url", "http://x"]).is_err()
        );
    }
}
