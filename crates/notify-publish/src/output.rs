//! What the command prints: one result per message and, for batches, a summary.
//!
//! Human format: successes on stdout (`published AE dQw4w9WgXcQ to tvs:AE: reached 2 gateway
//! nodes`; through an embedded-broker gateway `… via http://…: reached 3 clients`),
//! bad or failed lines and the summary on stderr (`line 3: field `title` is missing`,
//! `published 998 of 1000 lines (2 bad) in 41 ms`). JSON format: one object per message on
//! stdout, then `{"summary":{…}}` for batches, so a script reads one stream. A published
//! message's object names its destination (`redis_channel` or `gateway`) and its reach
//! (`gateway_nodes_reached` or `clients_reached`, see [`notify_proto::Reach`]); `subscribers`,
//! the same number under its old name, is deprecated.
//!
//! A closed stdout (`notify-publish … | head -1`) is not an error: output stops, publishing
//! and the exit code do not change.

use std::io::{self, Write};
use std::time::Duration;

use clap::ValueEnum;
use notify_proto::Notification;
use serde_json::{json, Map, Value};

use crate::sink::{Delivery, Destination};

/// Output format (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Sentences for people and cron mail.
    Human,
    /// One JSON object per line, for scripts.
    Json,
}

/// Counts of what happened to the input's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages the destination accepted.
    pub published: usize,
    /// Lines that are not valid notifications (locally, or rejected by the gateway).
    pub bad: usize,
    /// Valid messages that were not published (destination unavailable or erroring).
    pub failed: usize,
}

/// Writes results in the chosen format and counts them.
#[derive(Debug)]
pub struct Reporter<O: Write, E: Write> {
    out: O,
    err: E,
    format: Format,
    quiet: bool,
    out_closed: bool,
    counts: Counts,
}

impl<O: Write, E: Write> Reporter<O, E> {
    /// A reporter writing results to `out` and diagnostics to `err`. `quiet` drops the
    /// human per-message success lines (errors and the summary are still printed).
    pub fn new(out: O, err: E, format: Format, quiet: bool) -> Self {
        Reporter {
            out,
            err,
            format,
            quiet,
            out_closed: false,
            counts: Counts::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// One message was published. `line` is `None` for a message from flags.
    pub fn published(
        &mut self,
        line: Option<usize>,
        notification: &Notification,
        destination: &Destination,
        delivery: &Delivery,
    ) {
        self.counts.published += 1;
        match self.format {
            Format::Human if self.quiet => {}
            Format::Human => {
                let target = match destination {
                    Destination::Channel(channel) => format!("to {channel}"),
                    Destination::Gateway(url) => format!("via {url}"),
                };
                let id = match &delivery.id {
                    Some(id) => format!(" (id {id})"),
                    None => String::new(),
                };
                let text = format!(
                    "published {} {} {target}: reached {}{id}",
                    notification.region,
                    notification.video_id,
                    delivery.reach.describe()
                );
                self.write_out(&text);
            }
            Format::Json => {
                let mut object = Map::new();
                if let Some(line) = line {
                    object.insert("line".into(), line.into());
                }
                object.insert("region".into(), notification.region.as_str().into());
                object.insert("video_id".into(), notification.video_id.clone().into());
                match destination {
                    // Not `channel`: that is the notification's own field (the video's channel).
                    Destination::Channel(channel) => {
                        object.insert("redis_channel".into(), channel.clone().into())
                    }
                    Destination::Gateway(url) => {
                        object.insert("gateway".into(), url.clone().into())
                    }
                };
                delivery.reach.write_into(&mut object);
                if let Some(id) = &delivery.id {
                    object.insert("id".into(), id.clone().into());
                }
                self.write_out(&Value::Object(object).to_string());
            }
        }
    }

    /// A line is not a valid notification.
    pub fn bad(&mut self, line: usize, reason: &str) {
        self.counts.bad += 1;
        self.line_error(line, reason);
    }

    /// A valid line was not published.
    pub fn failed(&mut self, line: usize, reason: &str) {
        self.counts.failed += 1;
        self.line_error(line, reason);
    }

    /// Valid lines that were never attempted because the run stopped: counted as failed,
    /// listed one by one only in JSON (a script may retry them); a person gets the summary.
    pub fn not_attempted(&mut self, lines: &[usize], reason: &str) {
        self.counts.failed += lines.len();
        if self.format == Format::Json {
            for line in lines {
                self.line_error(*line, &format!("not published: {reason}"));
            }
        }
    }

    fn line_error(&mut self, line: usize, reason: &str) {
        match self.format {
            Format::Human => {
                let _ = writeln!(self.err, "line {line}: {reason}");
            }
            Format::Json => {
                let text = json!({ "line": line, "error": reason }).to_string();
                self.write_out(&text);
            }
        }
    }

    /// The run stopped before the end of the input: lines after `line` were never read.
    pub fn unread_after(&mut self, line: usize) {
        match self.format {
            Format::Human => {
                let _ = writeln!(self.err, "input after line {line} was not read");
            }
            Format::Json => {
                let text = json!({ "unread_after_line": line }).to_string();
                self.write_out(&text);
            }
        }
    }

    /// The batch summary: `published 998 of 1000 lines (2 bad) in 41 ms` on stderr, or
    /// `{"summary":{…}}` on stdout.
    pub fn summary(&mut self, lines: usize, elapsed: Duration) {
        let Counts {
            published,
            bad,
            failed,
        } = self.counts;
        let millis = elapsed.as_millis();
        match self.format {
            Format::Human => {
                let mut problems = Vec::new();
                if bad > 0 {
                    problems.push(format!("{bad} bad"));
                }
                if failed > 0 {
                    problems.push(format!("{failed} failed"));
                }
                let problems = if problems.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", problems.join(", "))
                };
                let _ = writeln!(
                    self.err,
                    "published {published} of {lines} line{}{problems} in {millis} ms",
                    if lines == 1 { "" } else { "s" }
                );
            }
            Format::Json => {
                let text = json!({ "summary": {
                    "published": published,
                    "bad": bad,
                    "failed": failed,
                    "lines": lines,
                    "elapsed_ms": millis,
                }})
                .to_string();
                self.write_out(&text);
            }
        }
    }

    /// Flushes stdout (a closed pipe is ignored).
    pub fn finish(&mut self) {
        if !self.out_closed {
            let _ = self.out.flush();
        }
        let _ = self.err.flush();
    }

    fn write_out(&mut self, text: &str) {
        if self.out_closed {
            return;
        }
        if let Err(error) = writeln!(self.out, "{text}") {
            // Broken pipe: the reader went away. Anything else: stdout is unusable too.
            // Either way publishing carries on and the exit code is unchanged.
            self.out_closed = true;
            if error.kind() != io::ErrorKind::BrokenPipe {
                let _ = writeln!(self.err, "notify-publish: cannot write to stdout: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_proto::{Reach, Region};

    fn notification() -> Notification {
        Notification::new(
            Region::parse("AE").unwrap(),
            "dQw4w9WgXcQ",
            "t",
            "https://x/a.jpg",
            "c",
            1,
        )
    }

    fn delivery(nodes: u64) -> Delivery {
        Delivery {
            reach: Reach::GatewayNodes(nodes),
            id: None,
        }
    }

    #[test]
    fn human_lines_and_summary() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut reporter = Reporter::new(&mut out, &mut err, Format::Human, false);
        let channel = Destination::Channel("tvs:AE".into());
        reporter.published(Some(1), &notification(), &channel, &delivery(2));
        reporter.published(Some(2), &notification(), &channel, &delivery(1));
        reporter.bad(3, "field `title` is missing");
        reporter.summary(3, Duration::from_millis(41));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "published AE dQw4w9WgXcQ to tvs:AE: reached 2 gateway nodes\n\
             published AE dQw4w9WgXcQ to tvs:AE: reached 1 gateway node\n"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "line 3: field `title` is missing\npublished 2 of 3 lines (1 bad) in 41 ms\n"
        );
    }

    #[test]
    fn json_lines_and_summary() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut reporter = Reporter::new(&mut out, &mut err, Format::Json, false);
        let channel = Destination::Channel("tvs:AE".into());
        reporter.published(Some(1), &notification(), &channel, &delivery(2));
        reporter.bad(2, "field `title` is missing");
        reporter.not_attempted(&[4, 5], "Redis is down");
        reporter.summary(5, Duration::from_millis(3));
        assert_eq!(
            reporter.counts(),
            Counts {
                published: 1,
                bad: 1,
                failed: 2
            }
        );
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"line":1,"region":"AE","video_id":"dQw4w9WgXcQ","redis_channel":"tvs:AE","gateway_nodes_reached":2,"subscribers":2})
        );
        assert_eq!(
            lines[1],
            json!({"line":2,"error":"field `title` is missing"})
        );
        assert_eq!(lines[3]["line"], 5);
        assert_eq!(lines[4]["summary"]["failed"], 2);
        assert!(err.is_empty());
    }

    #[test]
    fn a_gateway_with_the_embedded_broker_reports_clients() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let gateway = Destination::Gateway("http://127.0.0.1:8765".into());
        let clients = Delivery {
            reach: Reach::Clients(3),
            id: Some("5-0".into()),
        };
        let mut human = Reporter::new(&mut out, &mut err, Format::Human, false);
        human.published(None, &notification(), &gateway, &clients);
        assert_eq!(
            String::from_utf8(std::mem::take(&mut out)).unwrap(),
            "published AE dQw4w9WgXcQ via http://127.0.0.1:8765: reached 3 clients (id 5-0)\n"
        );
        let mut json_reporter = Reporter::new(&mut out, &mut err, Format::Json, false);
        json_reporter.published(None, &notification(), &gateway, &clients);
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            line,
            json!({"region":"AE","video_id":"dQw4w9WgXcQ","gateway":"http://127.0.0.1:8765",
                   "clients_reached":3,"subscribers":3,"id":"5-0"})
        );
    }

    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn broken_pipe_is_silent() {
        let mut err = Vec::new();
        let mut reporter = Reporter::new(ClosedPipe, &mut err, Format::Human, false);
        let channel = Destination::Channel("tvs:AE".into());
        reporter.published(None, &notification(), &channel, &delivery(0));
        reporter.published(None, &notification(), &channel, &delivery(0));
        reporter.finish();
        assert_eq!(reporter.counts().published, 2);
        assert!(err.is_empty());
    }
}
