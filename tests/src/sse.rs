//! A Server-Sent Events client for the tests: opens `GET /events…` over a real socket with
//! reqwest and parses the `text/event-stream` it reads the way a browser's `EventSource`
//! does (events end at a blank line; `id:`, `event:`, `data:`, `retry:` fields; `:` comments).

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::install_crypto_provider;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, when the event had one.
    pub id: Option<String>,
    /// `event:`, when named; `None` is the default `message` type.
    pub event: Option<String>,
    /// The `data:` lines joined with LF.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|error| panic!("event data is not JSON ({error}): {}", self.data))
    }
}

/// What waiting for the next event found.
#[derive(Debug)]
pub enum Next {
    /// An event.
    Event(SseEvent),
    /// The server ended the stream.
    Ended,
    /// Nothing within the wait.
    TimedOut,
}

/// An open SSE stream.
#[derive(Debug)]
pub struct SseClient {
    response: reqwest::Response,
    /// Bytes read and not yet parsed into a whole event.
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no event end (so large events are not
    /// rescanned from their start on every chunk).
    scanned: usize,
    /// Comments seen (the gateway's heartbeats).
    pub heartbeats: usize,
    /// The last `retry:` value, in ms.
    pub retry_ms: Option<u64>,
    ended: bool,
}

/// An HTTP client without a total timeout (a stream lasts as long as the test wants).
fn streaming_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
        .build()
        .expect("http client")
}

/// Sends `GET url` with `Last-Event-ID` when given; returns the response as it is.
pub async fn request(url: &str, last_event_id: Option<&str>) -> Result<reqwest::Response> {
    let mut request = streaming_client()
        .get(url)
        .header("Accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.with_context(|| format!("GET {url}"))
}

impl SseClient {
    /// Opens `url`; fails unless the answer is `200 text/event-stream`.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Result<Self> {
        let response = request(url, last_event_id).await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status != 200 || content_type != "text/event-stream" {
            let body = response.text().await.unwrap_or_default();
            bail!("GET {url}: {status} {content_type}: {body}");
        }
        Ok(SseClient {
            response,
            pending: Vec::new(),
            scanned: 0,
            heartbeats: 0,
            retry_ms: None,
            ended: false,
        })
    }

    /// The next event within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Next> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return Ok(Next::Event(event));
            }
            if self.ended {
                return Ok(Next::Ended);
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Ok(Next::TimedOut),
                Ok(Ok(Some(chunk))) => self.pending.extend_from_slice(&chunk),
                Ok(Ok(None)) => self.ended = true,
                Ok(Err(error)) => return Err(error).context("reading the event stream"),
            }
        }
    }

    /// The next event within `timeout`; fails on the end of the stream or a timeout.
    pub async fn event(&mut self, timeout: Duration) -> Result<SseEvent> {
        match self.next(timeout).await? {
            Next::Event(event) => Ok(event),
            Next::Ended => bail!("the stream ended"),
            Next::TimedOut => bail!("no event within {timeout:?}"),
        }
    }

    /// Asserts the stream stays open and sends no event for `quiet` (heartbeats may arrive);
    /// an event or the end of the stream fails the check (a dead stream is not silence).
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<()> {
        match self.next(quiet).await? {
            Next::TimedOut => Ok(()),
            Next::Ended => bail!("expected silence, but the stream ended"),
            Next::Event(event) => bail!("expected silence, got {event:?}"),
        }
    }

    /// Reads until the stream ends, within `timeout`; returns the events read meanwhile.
    pub async fn until_end(&mut self, timeout: Duration) -> Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        loop {
            match self.next(timeout).await? {
                Next::Event(event) => events.push(event),
                Next::Ended => return Ok(events),
                Next::TimedOut => bail!("the stream did not end within {timeout:?}"),
            }
        }
    }

    /// Parses one whole event off the front of what was read, skipping blocks that dispatch
    /// nothing (comments, `retry:` alone).
    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let from = self.scanned.saturating_sub(1);
            let Some(found) = self.pending[from..]
                .windows(2)
                .position(|pair| pair == b"\n\n")
            else {
                self.scanned = self.pending.len();
                return None;
            };
            let end = from + found;
            self.scanned = 0;
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let block = String::from_utf8(block).expect("the stream is UTF-8");
            let mut event = SseEvent {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.heartbeats += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "retry" => self.retry_ms = value.parse().ok(),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Some(event);
            }
        }
    }
}
