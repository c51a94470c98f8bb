//! Server-Sent Events clients: `GET /events?region=XX` over HTTP/1.1 (hyper's client
//! connection, which also undoes the chunked encoding), and one reader task per client that
//! parses the stream ([`crate::event_stream`]) and verifies every notification exactly as a
//! WebSocket client's frames are verified ([`crate::client::on_frame`]).
//!
//! A client is one task holding its hyper connection, the response body and the parser: about
//! a 4 KiB read buffer and an event's worth of data, so 10,000 fit in one process. A `close`
//! event, the end of the body or a broken connection count as the gateway dropping the
//! client; an event whose `id:` is not the id its data carries counts as corrupt.

use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1::{self, Connection};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::client::{on_frame, ClientStats, Connector, Running};
use crate::event_stream::{Event, EventParser};
use crate::messages::MessageLog;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer per client, as the WebSocket clients' 4 KiB.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Longest line or event data accepted, as the WebSocket clients' largest message.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Most of a refusal's body quoted in the error.
const MAX_REFUSAL_BYTES: usize = 512;

/// A client connection whose response head said 200 `text/event-stream`.
type Http = Connection<TokioIo<TcpStream>, String>;

/// An open stream: the connection (to be polled for the body to move) and the body.
#[derive(Debug)]
pub struct SseStream {
    /// `None` once it has ended.
    connection: Option<Pin<Box<Http>>>,
    body: Incoming,
}

/// TCP connect from the connector's next source address, then `GET
/// /events?region={region}`, within 10 s; a refusal (any answer but 200 `text/event-stream`)
/// is an error quoting the status and the gateway's reason.
pub async fn connect(connector: &Connector, region: &str) -> Result<SseStream> {
    if connector.is_tls() {
        bail!("SSE clients speak plain HTTP only (no --tls-ca)");
    }
    let _permit = connector.permit().await?;
    let socket = connector.tcp_socket()?;
    let gateway = connector.gateway();
    let open = async {
        let stream = socket.connect(gateway).await?;
        let (mut sender, connection) = http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUFFER_BYTES))
            .handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 connection")?;
        let mut connection = Box::pin(connection);
        let request = Request::get(format!("/events?region={region}"))
            .header(HOST, gateway.to_string())
            .header(ACCEPT, "text/event-stream")
            .body(String::new())
            .context("building the request")?;
        let response = tokio::select! {
            response = sender.send_request(request) => response.context("GET /events")?,
            ended = connection.as_mut() => bail!("connection ended before the response: {}", describe(ended)),
        };
        accept(response, connection).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| anyhow!("GET /events timed out after {CONNECT_TIMEOUT:?}"))?
}

fn describe(ended: hyper::Result<()>) -> String {
    match ended {
        Ok(()) => "closed".into(),
        Err(error) => format!("{error:#}"),
    }
}

/// The stream when the response is one, else the refusal as an error.
async fn accept(response: Response<Incoming>, connection: Pin<Box<Http>>) -> Result<SseStream> {
    let status = response.status();
    let event_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    let mut stream = SseStream {
        connection: Some(connection),
        body: response.into_body(),
    };
    if status == StatusCode::OK && event_stream {
        return Ok(stream);
    }
    let mut reason = Vec::new();
    while reason.len() < MAX_REFUSAL_BYTES {
        match stream.next_chunk().await {
            Some(Ok(chunk)) => reason.extend_from_slice(&chunk),
            Some(Err(error)) => {
                reason.extend_from_slice(format!(" (body unreadable: {error:#})").as_bytes());
                break;
            }
            None => break,
        }
    }
    reason.truncate(MAX_REFUSAL_BYTES);
    let kind = if event_stream {
        ""
    } else {
        " (not text/event-stream)"
    };
    bail!(
        "GET /events refused: HTTP {status}{kind} {}",
        String::from_utf8_lossy(&reason).trim()
    )
}

impl SseStream {
    /// The next piece of the body, moving the connection meanwhile; `None` at its end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Bytes>>> {
        // The connection reads the socket and feeds the body; once it is done, the body says
        // how the stream ended.
        if let Some(connection) = &mut self.connection {
            if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                self.connection = None;
                if let Err(error) = ended {
                    return Poll::Ready(Some(Err(anyhow!(error).context("SSE connection"))));
                }
            }
        }
        loop {
            return match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers: nothing to verify.
                    Err(_trailers) => continue,
                },
                Some(Err(error)) => Poll::Ready(Some(Err(anyhow!(error).context("SSE body")))),
                None => Poll::Ready(None),
            };
        }
    }
}

/// Starts the reader task for a freshly opened `stream` of region `region`.
pub fn spawn_reader(stream: SseStream, region: usize, log: Arc<MessageLog>) -> Running {
    let stats = Arc::new(ClientStats::new(region));
    let (leave, left) = oneshot::channel();
    let task = tokio::spawn(read_loop(stream, stats.clone(), log, left));
    Running { stats, leave, task }
}

async fn read_loop(
    mut stream: SseStream,
    stats: Arc<ClientStats>,
    log: Arc<MessageLog>,
    mut leave: oneshot::Receiver<()>,
) {
    let mut parser = EventParser::new(MAX_EVENT_BYTES);
    loop {
        tokio::select! {
            biased;
            chunk = stream.next_chunk() => match chunk {
                Some(Ok(chunk)) => {
                    let mut closed = false;
                    let parsed = parser.feed(&chunk, |event| {
                        closed = on_event(&stats, &log, event);
                        !closed
                    });
                    if parsed.is_err() {
                        // A line past the bound is not a message of ours.
                        stats.count_corrupt();
                        closed = true;
                    }
                    if closed {
                        stats.mark_dropped_by_server();
                        break;
                    }
                }
                Some(Err(_)) | None => {
                    stats.mark_dropped_by_server();
                    break;
                }
            },
            _ = &mut leave => {
                // Dropping the connection closes the socket; the gateway sees the end of
                // the stream at its next write.
                stats.mark_left();
                break;
            }
        }
    }
    drop(stream);
    stats.mark_closed();
}

/// Verifies one event; true when it ends the stream (`close`).
fn on_event(stats: &ClientStats, log: &MessageLog, event: Event<'_>) -> bool {
    match event.name {
        Some("close") => return true,
        // A notification's `id:` must be the id in its data.
        None if event.id.is_some_and(|id| !carries_id(event.data, id)) => {
            stats.count_corrupt();
        }
        // Notifications and other control messages, verified as a WebSocket frame is.
        _ => on_frame(stats, log, event.data),
    }
    false
}

/// Whether the canonical JSON `data` has `"id":"<id>"`.
fn carries_id(data: &[u8], id: &[u8]) -> bool {
    let mut needle = Vec::with_capacity(id.len() + 8);
    needle.extend_from_slice(b"\"id\":\"");
    needle.extend_from_slice(id);
    needle.push(b'"');
    data.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_must_match_its_data() {
        let data = br#"{"event":"new_trending","region":"AE","id":"5-1"}"#;
        assert!(carries_id(data, b"5-1"));
        assert!(!carries_id(data, b"5-2"));
        assert!(!carries_id(data, b"5-"));
        assert!(!carries_id(b"{}", b"5-1"));
    }
}
