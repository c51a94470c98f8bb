//! The `--config` file: a TOML table whose keys are the gateway's long flag names
//! (`queue-limit = 512`, `regions = ["AE", "FI"]`).
//!
//! This module owns reading that file and turning it into per-flag values; it knows no flag
//! by name. Every key is checked against the command's own flags, so the file accepts exactly
//! the flags `--help` lists, and each value goes through that flag's own value parser, so a
//! bad value is refused with the file's line before anything starts. The values then become
//! the flags' defaults ([`FileValues::apply`]): a flag or its `NOTIFY_*` variable still wins,
//! and the built-in default is used only where the file is silent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};
use toml::de::{DeTable, DeValue};

/// Flags that only make sense on the command line (they choose or act on the file).
const COMMAND_LINE_ONLY: [&str; 2] = ["config", "check-config"];

/// Why the configuration file cannot be used. Each message names the file, and the line
/// when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("{}: not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with its line and column.
        message: String,
    },
    /// A key that names no flag.
    #[error("{}:{line}: unknown key `{key}`{hint}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The key as written.
        key: String,
        /// A "did you mean" suggestion, or empty.
        hint: String,
    },
    /// A value of a type no flag takes (a table, a date), or an array for a single-valued
    /// flag.
    #[error("{}:{line}: `{key}` {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value.
        line: usize,
        /// The key.
        key: String,
        /// What the key takes.
        expected: String,
    },
    /// A value its flag's parser refuses.
    #[error("{}:{line}: invalid value for `{key}`: {message}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value.
        line: usize,
        /// The key.
        key: String,
        /// The flag parser's complaint.
        message: String,
    },
}

/// The values a configuration file sets, by flag id, already checked by each flag's parser.
#[derive(Debug, Clone, Default)]
pub struct FileValues {
    /// Where they came from, for messages.
    pub path: Option<PathBuf>,
    values: Vec<(String, Vec<String>)>,
}

impl FileValues {
    /// Reads `path` and checks every key and value against `command`'s flags.
    pub fn read(path: &Path, command: &Command) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, command)
    }

    /// Checks the TOML `text` (read from `path`) against `command`'s flags.
    pub fn parse(path: &Path, text: &str, command: &Command) -> Result<Self, ConfigFileError> {
        let table = DeTable::parse(text).map_err(|error| ConfigFileError::Syntax {
            path: path.to_owned(),
            message: error.to_string().trim().to_owned(),
        })?;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut values = Vec::new();
        for (key, value) in table.get_ref() {
            let name = key.get_ref().as_ref();
            let Some(arg) = settable_flag(command, name) else {
                return Err(ConfigFileError::UnknownKey {
                    path: path.to_owned(),
                    line: line_of(key.span().start),
                    key: name.to_owned(),
                    hint: suggestion(command, name),
                });
            };
            let line = line_of(value.span().start);
            let strings = flag_strings(arg, value.get_ref()).map_err(|expected| {
                ConfigFileError::WrongType {
                    path: path.to_owned(),
                    line,
                    key: name.to_owned(),
                    expected,
                }
            })?;
            for string in strings.iter().filter(|_| !is_switch(arg)) {
                check_value(arg, string).map_err(|message| ConfigFileError::InvalidValue {
                    path: path.to_owned(),
                    line,
                    key: name.to_owned(),
                    message,
                })?;
            }
            values.push((arg.get_id().to_string(), strings));
        }
        Ok(FileValues {
            path: Some(path.to_owned()),
            values,
        })
    }

    /// `command` with the file's values as its flags' defaults.
    ///
    /// clap's `requires` between flags counts only flags given on the command line or in the
    /// environment, so a certificate in the file and its key as a flag would be refused; with
    /// a file, those rules are left to [`GatewayConfig::validate`](crate::config::GatewayConfig::validate),
    /// which sees every source.
    pub fn apply(&self, mut command: Command) -> Command {
        if !self.values.is_empty() {
            command =
                command.mut_args(|arg| arg.requires(clap::builder::Resettable::<clap::Id>::Reset));
        }
        for (id, strings) in &self.values {
            let strings = strings.clone();
            command = command.mut_arg(id, move |arg| {
                if is_switch(&arg) {
                    // A switch's "default" is the value it takes when absent.
                    arg.default_value(strings.concat())
                } else {
                    arg.default_values(strings)
                }
            });
        }
        command
    }

    /// Whether the file set the flag `id`.
    pub fn sets(&self, id: &str) -> bool {
        self.values.iter().any(|(set, _)| set == id)
    }
}

/// The `--config` path from the command line (`--config FILE` or `--config=FILE`), else from
/// `NOTIFY_CONFIG`. Looked up before the full parse, which needs the file's values.
pub fn config_path(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|arg| arg.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    env("NOTIFY_CONFIG")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// The flag a file key sets: a long flag that takes a value or is a switch.
pub(crate) fn settable_flag<'c>(command: &'c Command, key: &str) -> Option<&'c Arg> {
    if COMMAND_LINE_ONLY.contains(&key) {
        return None;
    }
    command.get_arguments().find(|arg| {
        arg.get_long() == Some(key)
            && (arg.get_action().takes_values() || is_switch(arg))
            && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
    })
}

pub(crate) fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

pub(crate) fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The flag's value(s) as they would be typed on the command line.
fn flag_strings(arg: &Arg, value: &DeValue<'_>) -> Result<Vec<String>, String> {
    let scalar = |value: &DeValue<'_>| match value {
        DeValue::String(string) => Some(string.to_string()),
        DeValue::Integer(integer) if integer.radix() == 10 => Some(integer.as_str().to_owned()),
        DeValue::Float(float) => Some(float.as_str().to_owned()),
        DeValue::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    };
    if is_switch(arg) {
        return match value {
            DeValue::Boolean(flag) => Ok(vec![flag.to_string()]),
            _ => Err("takes true or false".to_owned()),
        };
    }
    match value {
        DeValue::Array(items) if takes_many(arg) => items
            .iter()
            .map(|item| scalar(item.get_ref()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "takes an array of strings".to_owned()),
        DeValue::Array(_) => Err("takes one value, not an array".to_owned()),
        other => scalar(other)
            .map(|string| vec![string])
            .ok_or_else(|| format!("takes a string or a number, not a {}", other.type_str())),
    }
}

/// Runs the flag's own value parser on `value`, alone: the same check the command line gets.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let mut probe = Arg::new("value")
        .long("value")
        .value_parser(arg.get_value_parser().clone())
        .action(arg.get_action().clone());
    if let Some(delimiter) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(delimiter);
    }
    Command::new("probe")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([OsString::from("--value"), OsString::from(value)])
        .map(drop)
        .map_err(|error| match std::error::Error::source(&error) {
            Some(source) => source.to_string(),
            None => error
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .replace("'--value <value>'", "it")
                .to_owned(),
        })
}

/// " (did you mean `queue-limit`?)" for a key one or two edits from a flag, else "".
fn suggestion(command: &Command, key: &str) -> String {
    let normalized = key.replace('_', "-").to_ascii_lowercase();
    command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !COMMAND_LINE_ONLY.contains(long))
        .map(|long| (edit_distance(&normalized, long), long))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, long)| format!(" (did you mean `{long}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, for suggestions between short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use clap::CommandFactory;

    fn parse(text: &str) -> Result<FileValues, ConfigFileError> {
        FileValues::parse(Path::new("gw.toml"), text, &GatewayConfig::command())
    }

    #[test]
    fn unknown_keys_name_their_line_and_a_near_flag() {
        let error = parse("listen = \"127.0.0.1:1\"\n\nqueue_limit = 5\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "gw.toml:3: unknown key `queue_limit` (did you mean `queue-limit`?)"
        );
        let error = parse("[server]\nlisten = 1\n").unwrap_err();
        assert!(error
            .to_string()
            .starts_with("gw.toml:1: unknown key `server`"));
        let error = parse("config = \"other.toml\"\n").unwrap_err();
        assert!(error.to_string().contains("unknown key `config`"));
    }

    #[test]
    fn values_go_through_their_flags_parsers() {
        let error = parse("\nqueue-limit = 0\n").unwrap_err().to_string();
        assert!(
            error.starts_with("gw.toml:2: invalid value for `queue-limit`"),
            "{error}"
        );
        assert!(error.contains("between 1 and 65536"), "{error}");
        let error = parse("regions = [\"AE\", \"UK\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("UK"), "{error}");
        let error = parse("listen = [\"a\", \"b\"]\n").unwrap_err().to_string();
        assert!(error.contains("not an array"), "{error}");
        let error = parse("proxy-protocol = \"yes\"\n").unwrap_err().to_string();
        assert!(error.contains("true or false"), "{error}");
        let error = parse("queue-limit = ").unwrap_err().to_string();
        assert!(error.contains("not valid TOML"), "{error}");
    }

    #[test]
    fn config_path_comes_from_flag_then_env() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let env = |_: &str| Some(OsString::from("/etc/env.toml"));
        let none = |_: &str| None;
        assert_eq!(
            config_path(&args(&["gw", "--config", "a.toml"]), env),
            Some("a.toml".into())
        );
        assert_eq!(
            config_path(&args(&["gw", "--config=b.toml"]), env),
            Some("b.toml".into())
        );
        assert_eq!(
            config_path(&args(&["gw"]), env),
            Some("/etc/env.toml".into())
        );
        assert_eq!(config_path(&args(&["gw"]), none), None);
    }
}
