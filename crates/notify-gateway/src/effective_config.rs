//! What `--check-config` prints: every setting's effective value, with where it came from
//! (flag, environment, `--config` file, built-in default), as TOML that the `--config` file
//! itself accepts. Secrets are masked: API keys entirely, Redis URLs with
//! [`redact_url`](notify_core::broker::redis::redact_url).

use std::fmt;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use notify_core::broker::redis::redact_url;

use crate::config::GatewayConfig;
use crate::config_file::{is_switch, settable_flag, takes_many, FileValues};

/// Flags whose values are masked whole.
const SECRET_FLAGS: [&str; 1] = ["api-key"];
/// Flags whose values are Redis URLs (password masked, the rest kept).
const URL_FLAGS: [&str; 1] = ["redis-url"];

/// One setting as `--check-config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The long flag name, also the file key.
    pub key: String,
    /// The value as TOML, secrets masked; `None`: not set.
    pub value: Option<String>,
    /// `flag`, `env`, `file` or `default`.
    pub source: &'static str,
    /// What a listen address as typed (`localhost:8765`, `:8765`) resolved to, when that
    /// differs from the text: the address that is bound.
    pub resolved: Option<String>,
}

/// Every setting, in `--help` order.
#[derive(Debug, Clone, Default)]
pub struct EffectiveConfig {
    /// The configuration file, if one was read.
    pub file: Option<String>,
    /// The settings.
    pub settings: Vec<Setting>,
}

impl EffectiveConfig {
    /// Reads each flag's values and source from `matches` (parsed by `command`, whose
    /// defaults `file` may have set).
    pub fn from_matches(
        command: &Command,
        matches: &ArgMatches,
        file: &FileValues,
        config: &GatewayConfig,
    ) -> Self {
        let mut settings = Vec::new();
        for arg in command.get_arguments() {
            let Some(key) = arg.get_long() else { continue };
            if settable_flag(command, key).is_none() {
                continue;
            }
            let id = arg.get_id().as_str();
            // One of the two Redis URL sources may have been overridden by the other.
            let dropped = (id == "redis_url" && config.redis_url.is_none())
                || (id == "redis_url_file" && config.redis_url_file.is_none());
            let raw: Vec<String> = match matches.get_raw(id) {
                Some(values) if !dropped => values
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect(),
                _ => Vec::new(),
            };
            let source = match matches.value_source(id) {
                _ if raw.is_empty() => "default",
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                Some(ValueSource::DefaultValue) if file.sets(id) => "file",
                _ => "default",
            };
            let shown: Vec<String> = raw
                .iter()
                .map(|value| {
                    if SECRET_FLAGS.contains(&key) {
                        "***".to_owned()
                    } else if URL_FLAGS.contains(&key) {
                        redact_url(value)
                    } else {
                        value.clone()
                    }
                })
                .collect();
            let value = if shown.is_empty() {
                None
            } else if is_switch(arg) {
                Some(shown.concat())
            } else if takes_many(arg) {
                let items: Vec<String> = shown.iter().map(|item| toml_scalar(item)).collect();
                Some(format!("[{}]", items.join(", ")))
            } else {
                Some(toml_scalar(&shown[0]))
            };
            let bound = match key {
                "listen" => Some(config.listen),
                "admin-listen" => config.admin_listen,
                _ => None,
            };
            let resolved = bound
                .map(|address| address.to_string())
                .filter(|address| raw.first().is_some_and(|typed| typed != address));
            settings.push(Setting {
                key: key.to_owned(),
                value,
                source,
                resolved,
            });
        }
        EffectiveConfig {
            file: config
                .config
                .as_ref()
                .map(|path| path.display().to_string()),
            settings,
        }
    }
}

/// A number stays bare; anything else is a quoted TOML string.
fn toml_scalar(value: &str) -> String {
    if value.parse::<i64>().is_ok() {
        value.to_owned()
    } else {
        serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
    }
}

impl fmt::Display for EffectiveConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "# notify-gateway {}: effective configuration, secrets masked",
            crate::build_info::VERSION
        )?;
        match &self.file {
            Some(file) => writeln!(formatter, "# configuration file: {file}")?,
            None => writeln!(formatter, "# configuration file: none")?,
        }
        writeln!(
            formatter,
            "# precedence: flag > environment (NOTIFY_*) > file > default"
        )?;
        for setting in &self.settings {
            match &setting.value {
                Some(value) => {
                    write!(formatter, "{} = {value}  # {}", setting.key, setting.source)?;
                    match &setting.resolved {
                        Some(address) => writeln!(formatter, ", binds {address}")?,
                        None => writeln!(formatter)?,
                    }
                }
                None => writeln!(formatter, "# {} is not set", setting.key)?,
            }
        }
        Ok(())
    }
}
