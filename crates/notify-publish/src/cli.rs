//! Command-line flags (clap derive). Settings that describe where and how to publish can also
//! come from `NOTIFY_*` environment variables; the flags that describe the one notification
//! (`--region`, `--title`, …) deliberately cannot, so a stray variable never changes a message.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use notify_core::broker::redis::{redact_url, split_seeds, suggest_redis_url, RedisTls};
use notify_proto::KeyLayout;

use crate::input::FlagFields;
use crate::output::Format;

/// `--help` text after the flags: input format and exit status.
pub const AFTER_HELP: &str = "\
Input (--input FILE, or --input - for stdin): one JSON object per line, the seed's shape:
  {\"event\":\"new_trending\",\"region\":\"AE\",\"video_id\":\"…\",\"title\":\"…\",\"thumbnail\":\"https://…\",\"channel\":\"…\"}
  \"rtl\" defaults from the region (true for AE, SA, IL, …) and \"ts\" to now; blank lines are skipped.

Exit status:
  0   every message was published
  1   any other failure (an unexpected reply from Redis or the gateway, a --ca-cert or
      --redis-* TLS file that cannot be read)
  2   usage error: a missing or malformed flag or URL, an empty or blank API key (also an
      empty NOTIFY_API_KEY), an --api-key-file that cannot be read or holds no key
  65  some input was bad: a flag value that makes no valid notification (\"invalid --title:
      field `title` is empty\"), or NDJSON lines, each named (\"line 3: field `title` is
      missing\"); the good lines were still published
  66  the --input file cannot be read
  69  Redis or the gateway is unavailable (connection refused, a failed TLS handshake such
      as a certificate from an unknown CA, no answer within --timeout, or the gateway's
      broker is down); the summary counts what was not published
  75  with --wait-replicas N: some messages were published but fewer than N replicas
      acknowledged them in time, so a failover may lose them (each is named)
  77  permission denied: the gateway answered 401/403 (missing or wrong --api-key), or Redis
      refused the credentials in --redis-url
When several apply, 77 and 69 win over 1, 1 over 75, and 75 over 65.";

/// Where messages go when neither `--redis-url` nor `--gateway-url` is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The gateway's own default address, suggested when a local Redis is not there.
pub const LOCAL_GATEWAY_URL: &str = "http://127.0.0.1:8765";

/// Publish `new_trending` notifications to Redis or a notify gateway, one from flags or many
/// from NDJSON, and report how far each reached (gateway nodes, or a gateway's browsers).
#[derive(Debug, Parser)]
#[command(name = "notify-publish", version = crate::VERSION, after_help = AFTER_HELP)]
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

    /// Redis to PUBLISH to: redis://[:password@]host:port[/db], or rediss://… for TLS, or
    /// the primary Redis Sentinel names: redis+sentinel://[:password@]h1:26379,h2:26379/MASTER[/db]
    /// [?sentinel_password=…] (redis+sentinels:// for TLS) (ignored with --gateway-url)
    #[arg(
        long,
        env = "NOTIFY_REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// File holding the Redis URL (first non-comment line), so its password is neither on the
    /// command line nor in the environment; instead of --redis-url
    #[arg(long, env = "NOTIFY_REDIS_URL_FILE", value_name = "FILE", conflicts_with = "redis_url", value_parser = parse_redis_url_file)]
    pub redis_url_file: Option<String>,

    /// --redis-url names a Redis Cluster: seed nodes, comma-separated
    /// (redis://h1:7000,redis://h2:7001); keys are hash-tagged per region and messages go out
    /// with SPUBLISH (ignored with --gateway-url)
    #[arg(long, env = "NOTIFY_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// PEM file of the CA that signed the Redis server's certificate (rediss://), instead of
    /// the system's roots
    #[arg(long, env = "NOTIFY_REDIS_CA_CERT", value_name = "FILE")]
    pub redis_ca_cert: Option<PathBuf>,

    /// PEM certificate presented to Redis when it asks for one (rediss://)
    #[arg(
        long,
        env = "NOTIFY_REDIS_CLIENT_CERT",
        value_name = "FILE",
        requires = "redis_client_key"
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert
    #[arg(
        long,
        env = "NOTIFY_REDIS_CLIENT_KEY",
        value_name = "FILE",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,

    /// After each pipeline of messages, wait (Redis WAIT, up to 3/4 of --timeout) until this
    /// many replicas hold it; messages not acknowledged by them are reported (exit 75): a
    /// failover before replication would lose them. 0: do not wait. Not with
    /// --redis-cluster (WAIT answers for one shard only)
    #[arg(
        long,
        env = "NOTIFY_WAIT_REPLICAS",
        default_value_t = 0,
        value_name = "N",
        conflicts_with_all = ["gateway_url", "redis_cluster"]
    )]
    pub wait_replicas: u32,

    /// Channel prefix: messages go to {prefix}{REGION}
    #[arg(long, env = "NOTIFY_CHANNEL_PREFIX", default_value = notify_proto::DEFAULT_CHANNEL_PREFIX)]
    pub channel_prefix: String,

    /// Messages kept in each region's Redis stream for resume (approximate MAXLEN)
    #[arg(long, env = "NOTIFY_HISTORY_RETENTION", default_value_t = notify_core::broker::redis::DEFAULT_RETENTION)]
    pub retention: usize,

    /// Publish through a gateway's POST /api/publish instead of Redis (http://host:port or
    /// https://host:port)
    #[arg(long, env = "NOTIFY_GATEWAY_URL", hide_env_values = true)]
    pub gateway_url: Option<String>,

    /// PEM file of the CA that signed the gateway's certificate (https://), trusted instead
    /// of the system's roots
    #[arg(long, env = "NOTIFY_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Bearer key for the gateway's /api/publish; empty or blank is an error
    #[arg(long, env = "NOTIFY_API_KEY", hide_env_values = true, value_parser = parse_api_key)]
    pub api_key: Option<String>,

    /// File holding the bearer key (surrounding whitespace and the final newline are
    /// ignored), so the key is neither on the command line nor in the environment
    #[arg(
        long = "api-key-file",
        env = "NOTIFY_API_KEY_FILE",
        value_name = "FILE",
        value_parser = read_api_key_file,
        conflicts_with = "api_key"
    )]
    pub api_key_from_file: Option<String>,

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
    /// json: one object per message on stdout ("redis_channel" or "gateway",
    /// "gateway_nodes_reached" or "clients_reached", "id"), then {"summary":{…}}
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

impl Cli {
    /// Parses the command line and checks the URLs and key variables, exiting with status 2
    /// and a usage message on error, like clap does for the checks it can make itself.
    pub fn parse_checked() -> Cli {
        let cli = Cli::parse();
        if let Err(message) = cli.check(|name| std::env::var_os(name)) {
            Cli::command()
                .error(clap::error::ErrorKind::ValueValidation, message)
                .exit();
        }
        cli
    }

    /// What clap cannot check without echoing a secret: the URLs (a URL in an error is
    /// always redacted) and a key variable that is set but empty (never taken as "no key").
    /// `env` reads an environment variable.
    pub fn check(&self, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<(), String> {
        if self.redis_cluster {
            split_seeds(self.redis_url())
                .into_iter()
                .try_for_each(check_redis_url)?;
        } else {
            check_redis_url(self.redis_url())?;
        }
        if let Some(url) = &self.gateway_url {
            check_gateway_url(url)?;
        }
        for variable in ["NOTIFY_API_KEY", "NOTIFY_API_KEY_FILE"] {
            let set_but_empty = env(variable).is_some_and(|value| value.is_empty());
            if set_but_empty && self.api_key().is_none() {
                return Err(format!(
                    "{variable} is set but empty: give a key, or unset it to publish without one"
                ));
            }
        }
        Ok(())
    }

    /// The Redis URL, from --redis-url-file when given, else --redis-url.
    pub fn redis_url(&self) -> &str {
        self.redis_url_file.as_deref().unwrap_or(&self.redis_url)
    }

    /// The bearer key, from --api-key or --api-key-file.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key
            .as_deref()
            .or(self.api_key_from_file.as_deref())
    }

    /// The key names of the Redis given: hash-tagged for a cluster.
    pub fn key_layout(&self) -> KeyLayout {
        KeyLayout::for_cluster(self.redis_cluster)
    }

    /// The TLS files for a rediss:// URL.
    pub fn redis_tls(&self) -> RedisTls {
        RedisTls::from_files(
            self.redis_ca_cert.clone(),
            self.redis_client_cert.clone(),
            self.redis_client_key.clone(),
        )
    }
}

fn parse_redis_url_file(path: &str) -> Result<String, String> {
    notify_core::broker::redis::read_url_file(std::path::Path::new(path))
        .map_err(|error| error.to_string())
}

fn check_redis_url(url: &str) -> Result<(), String> {
    if let Some(suggestion) = suggest_redis_url(url) {
        let shown = &suggestion["redis://".len()..];
        return Err(format!(
            "--redis-url {shown:?} is not a Redis URL: did you mean {suggestion}?"
        ));
    }
    if let Some(parsed) = notify_core::broker::redis::sentinel_url::SentinelUrl::parse(url) {
        return parsed.map(drop).map_err(|error| {
            format!(
                "invalid --redis-url {}: {error} (redis+sentinel://[:password@]host:port,…/MASTER_NAME[/db])",
                redact_url(url)
            )
        });
    }
    redis::Client::open(url).map(drop).map_err(|error| {
        format!(
            "invalid --redis-url {}: not a Redis URL (redis://[:password@]host:port[/db] or \
             rediss://…): {error}",
            redact_url(url)
        )
    })
}

fn check_gateway_url(url: &str) -> Result<(), String> {
    let expected = "expected http://host:port or https://host:port";
    let invalid = |why: &str| format!("invalid --gateway-url {}: {why}", redact_url(url));
    if !url.contains("://") {
        return Err(invalid(&format!(
            "no scheme; did you mean {}?",
            redact_url(&format!("http://{}", url.trim()))
        )));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|error| invalid(&format!("{error}; {expected}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(expected));
    }
    Ok(())
}

fn parse_api_key(key: &str) -> Result<String, String> {
    if key.trim().is_empty() {
        return Err("the key is empty or blank".to_owned());
    }
    Ok(key.to_owned())
}

fn read_api_key_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read it: {error}"))?;
    let key = text.trim();
    if key.is_empty() {
        return Err("the file holds no key (it is empty or blank)".to_owned());
    }
    Ok(key.to_owned())
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
    }

    fn checked(args: &[&str]) -> Result<(), String> {
        let mut all = vec!["notify-publish", "-i", "-"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().check(|_| None)
    }

    #[test]
    fn url_errors_are_redacted() {
        assert!(checked(&["--gateway-url", "https://gw.example:8443"]).is_ok());
        assert!(checked(&["--redis-url", "rediss://:pw@127.0.0.1:6380/0"]).is_ok());
        for (flag, url) in [
            ("--gateway-url", "ftp://user:s3cr/et@x"),
            ("--gateway-url", "https://user:s3cr/et@"),
            ("--redis-url", "http://:s3cr/et@x"),
            ("--redis-url", "redis://:s3cr/et@host:port"),
            ("--redis-url", "redis://user:s3cr@et@host:nope"),
        ] {
            let error = checked(&[flag, url]).unwrap_err();
            assert!(error.contains(flag), "{error}");
            assert!(!error.contains("s3cr"), "{flag} {url}: {error}");
            assert!(!error.contains("et@"), "{flag} {url}: {error}");
        }
    }

    #[test]
    fn addresses_without_a_scheme_get_a_suggestion() {
        let error = checked(&["--redis-url", "127.0.0.1:6379"]).unwrap_err();
        assert_eq!(
            error,
            "--redis-url \"127.0.0.1:6379\" is not a Redis URL: did you mean redis://127.0.0.1:6379?"
        );
        let error = checked(&["--gateway-url", "127.0.0.1:8765"]).unwrap_err();
        assert!(
            error.ends_with("did you mean http://127.0.0.1:8765?"),
            "{error}"
        );
    }

    #[test]
    fn a_key_is_never_empty() {
        for key in ["", "   ", "\t"] {
            let error =
                Cli::try_parse_from(["notify-publish", "-i", "-", "--api-key", key]).unwrap_err();
            assert_eq!(error.exit_code(), 2);
        }
        let given = Cli::try_parse_from(["notify-publish", "-i", "-", "--api-key", "k1"]).unwrap();
        assert_eq!(given.api_key(), Some("k1"));
        // A variable set but empty is refused, not read as "no key".
        let cli = Cli::try_parse_from(["notify-publish", "-i", "-"]).unwrap();
        let empty = |name: &str| (name == "NOTIFY_API_KEY").then(std::ffi::OsString::new);
        assert!(cli.check(empty).unwrap_err().contains("NOTIFY_API_KEY"));
        assert!(cli.check(|_| None).is_ok());
    }

    #[test]
    fn key_file_is_trimmed_and_never_blank() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("notify-publish-key-{}", std::process::id()));
        std::fs::write(&path, "  k-from-file\n").unwrap();
        let file = path.to_str().unwrap();
        let cli = Cli::try_parse_from(["notify-publish", "-i", "-", "--api-key-file", file]);
        assert_eq!(cli.unwrap().api_key(), Some("k-from-file"));
        std::fs::write(&path, " \n\n").unwrap();
        let blank = Cli::try_parse_from(["notify-publish", "-i", "-", "--api-key-file", file]);
        assert_eq!(blank.unwrap_err().exit_code(), 2);
        std::fs::remove_file(&path).unwrap();
        let missing = Cli::try_parse_from(["notify-publish", "-i", "-", "--api-key-file", file]);
        assert_eq!(missing.unwrap_err().exit_code(), 2);
        let both = Cli::try_parse_from([
            "notify-publish",
            "-i",
            "-",
            "--api-key",
            "a",
            "--api-key-file",
            "/dev/null",
        ]);
        assert!(both.is_err());
    }
}
