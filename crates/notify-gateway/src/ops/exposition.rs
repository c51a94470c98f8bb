//! Reads back the gateway's own Prometheus text exposition, so the ops page shows exactly the
//! numbers `/metrics` shows, from the same registry, without a second set of counters on the
//! hot path.
//!
//! Only what `metrics-exporter-prometheus` writes is read: `# HELP`/`# TYPE` comments, blank
//! lines, and samples `name{label="value",…} value`, with label values escaped as the format
//! says (`\\`, `\"`, `\n`). A general parser (the `prometheus-parse` crate) would add `regex`
//! and `chrono` to the build for this dozen-line subset of one known writer. A line this reader
//! does not understand is skipped and counted in [`Samples::unreadable`], never guessed at.

use std::collections::BTreeMap;

/// One sample line: metric name, labels in the order written, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with any `_bucket`/`_sum`/`_count` suffix as written.
    pub name: String,
    /// `(label, value)` pairs, unescaped.
    pub labels: Vec<(String, String)>,
    /// The sample's value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of `label`, if the sample has it.
    pub fn label(&self, label: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(name, _)| name == label)
            .map(|(_, value)| value.as_str())
    }
}

/// Every sample of one rendering.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    samples: Vec<Sample>,
    /// Lines that were neither comments nor readable samples.
    pub unreadable: usize,
}

impl Samples {
    /// Reads a text exposition.
    pub fn parse(text: &str) -> Self {
        let mut parsed = Samples::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Some(sample) => parsed.samples.push(sample),
                None => parsed.unreadable += 1,
            }
        }
        parsed
    }

    /// Every sample named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |sample| sample.name == name)
    }

    /// The sum of every sample named `name` (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.named(name).map(|sample| sample.value).sum()
    }

    /// The samples named `name` summed per value of `label` (samples without it are left out).
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for sample in self.named(name) {
            if let Some(value) = sample.label(label) {
                *sums.entry(value.to_owned()).or_insert(0.0) += sample.value;
            }
        }
        sums
    }
}

/// `name{labels} value [timestamp]` → a sample.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|character: char| character == '{' || character.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `label="value",…}` into `labels`; returns what follows the closing brace.
fn parse_labels<'a>(mut text: &'a str, labels: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some(rest);
        }
        let (label, after) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut characters = after.char_indices();
        let end = loop {
            let (index, character) = characters.next()?;
            match character {
                '"' => break index,
                '\\' => match characters.next()?.1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                other => value.push(other),
            }
        };
        labels.push((label.trim().to_owned(), value));
        text = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP notify_connections Open WebSocket connections, by region.
# TYPE notify_connections gauge
notify_connections{region="AE"} 3
notify_connections{region="FI"} 0

notify_bad_payloads_total{reason="not_json"} 2
notify_bad_payloads_total{reason="odd \"quoted\" \\ reason"} 1
notify_messages_delivered_total 1.5e3
notify_fanout_latency_seconds_bucket{le="+Inf"} 7
notify_fanout_latency_seconds_sum 0.25
garbage{unterminated="x
"#;

    #[test]
    fn reads_what_the_exporter_writes() {
        let samples = Samples::parse(TEXT);
        assert_eq!(samples.sum("notify_connections"), 3.0);
        assert_eq!(
            samples.by_label("notify_connections", "region"),
            BTreeMap::from([("AE".to_owned(), 3.0), ("FI".to_owned(), 0.0)])
        );
        assert_eq!(samples.sum("notify_messages_delivered_total"), 1500.0);
        let reasons = samples.by_label("notify_bad_payloads_total", "reason");
        assert_eq!(reasons["odd \"quoted\" \\ reason"], 1.0);
        assert_eq!(reasons["not_json"], 2.0);
        let bucket = samples
            .named("notify_fanout_latency_seconds_bucket")
            .next()
            .unwrap();
        assert_eq!(bucket.label("le"), Some("+Inf"));
        assert_eq!(samples.sum("absent"), 0.0);
        assert_eq!(samples.unreadable, 1);
    }
}
