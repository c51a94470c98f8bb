//! WebSocket clients: connecting from several loopback source addresses with bounded
//! handshakes in flight, and one lean reader task per client that verifies every frame.
//!
//! # Verification
//! A client of region R expects R's messages in sequence order, each exactly once. For each
//! frame the reader compares the bytes with the logged frame of the next expected sequence
//! number (`last + 1`); a match is a correct delivery and the latency comes from the log. Only
//! a mismatch is parsed, to classify it: not a valid notification or not what was published
//! (corrupt), another region (wrong region), an earlier sequence number (duplicate), a later
//! one (gap; the skipped messages are counted), or a notification this run did not publish
//! (unexpected). Which messages a client *had* to get is decided after the run from its
//! connect and leave times ([`ClientStats::required`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use notify_proto::Notification;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, Semaphore, SemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::latency;
use crate::messages::{now_ns, MessageLog};
use crate::report::Verdict;

/// A connected client socket, plain or TLS.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const NONE: u64 = u64::MAX;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens client sockets to one gateway.
#[derive(Debug)]
pub struct Connector {
    gateway: SocketAddr,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    permits: Semaphore,
    config: WebSocketConfig,
    /// Set: `wss://` with this rustls configuration.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A rustls client configuration trusting only the CA certificates in the PEM file `ca`.
pub fn tls_config(ca: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading --tls-ca {}", ca.display()))?
    {
        let cert = cert.with_context(|| format!("--tls-ca {}: not PEM", ca.display()))?;
        roots.add(cert).context("--tls-ca: not a CA certificate")?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

impl Connector {
    /// Clients connect to `gateway` from `sources` in turn, at most `concurrency` handshakes at
    /// once.
    pub fn new(gateway: SocketAddr, sources: Vec<IpAddr>, concurrency: usize) -> Self {
        // Frames are a few hundred bytes: small buffers keep 20,000 clients lean.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        Connector {
            gateway,
            sources,
            next_source: AtomicUsize::new(0),
            permits: Semaphore::new(concurrency),
            config,
            tls: None,
        }
    }

    /// Connects with `wss://`, verifying the gateway with `tls`.
    pub fn with_tls(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// TCP connect from the next source address, then the WebSocket handshake for
    /// `/?region={region}`, within 10 s.
    pub async fn connect(&self, region: &str) -> Result<Socket> {
        self.connect_to(self.gateway, &format!("/?region={region}"))
            .await
    }

    /// TCP connect from the next source address to `gateway` (any node, not only the one
    /// given to [`new`](Self::new)), then the WebSocket handshake for `path_and_query`, within
    /// 10 s.
    pub async fn connect_to(&self, gateway: SocketAddr, path_and_query: &str) -> Result<Socket> {
        let _permit = self.permit().await?;
        let socket = self.tcp_socket()?;
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{gateway}{path_and_query}");
        let handshake = async {
            let stream = socket.connect(gateway).await?;
            let connector = match &self.tls {
                Some(tls) => tokio_tungstenite::Connector::Rustls(tls.clone()),
                None => tokio_tungstenite::Connector::Plain,
            };
            match tokio_tungstenite::client_async_tls_with_config(
                url,
                stream,
                Some(self.config),
                Some(connector),
            )
            .await
            {
                Ok((socket, _response)) => Ok(socket),
                Err(WsError::Http(response)) => {
                    let body = response
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    bail!(
                        "handshake refused: HTTP {} {}",
                        response.status(),
                        body.trim()
                    )
                }
                Err(error) => Err(anyhow!(error).context("WebSocket handshake")),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("handshake timed out after {CONNECT_TIMEOUT:?}"))?
    }

    /// The gateway given to [`new`](Self::new).
    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// One of the `concurrency` handshake turns; held until the handshake is done.
    pub async fn permit(&self) -> Result<SemaphorePermit<'_>> {
        self.permits.acquire().await.context("connector closed")
    }

    /// A TCP socket bound to the next source address, to connect with
    /// [`SourceSocket::connect`].
    pub fn tcp_socket(&self) -> Result<SourceSocket> {
        let turn = self.next_source.fetch_add(1, Ordering::Relaxed);
        let source = self.sources[turn % self.sources.len()];
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("creating a TCP socket (out of file descriptors?)")?;
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("binding to {source}"))?;
        Ok(SourceSocket { socket, source })
    }

    /// Whether clients connect with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A TCP socket bound to one of the generator's loopback source addresses.
#[derive(Debug)]
pub struct SourceSocket {
    socket: TcpSocket,
    source: IpAddr,
}

impl SourceSocket {
    /// Connects to `gateway`, with Nagle off (events are small and latency is measured).
    pub async fn connect(self, gateway: SocketAddr) -> Result<TcpStream> {
        let source = self.source;
        let stream = self
            .socket
            .connect(gateway)
            .await
            .with_context(|| format!("TCP connect {source} -> {gateway}"))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// What one client saw. Written only by its own reader task (plain load/store), read by the
/// scenario while the run is in progress and after it ends.
#[derive(Debug)]
pub struct ClientStats {
    /// Index of the client's region in the message log.
    pub region: usize,
    /// When the handshake completed ([`now_ns`]).
    pub ready_ns: u64,
    closed_ns: AtomicU64,
    first_seq: AtomicU64,
    last_seq: AtomicU64,
    frames: AtomicU64,
    accepted: AtomicU64,
    gaps: AtomicU64,
    skipped: AtomicU64,
    duplicates: AtomicU64,
    wrong_region: AtomicU64,
    corrupt: AtomicU64,
    unexpected: AtomicU64,
    dropped_by_server: AtomicBool,
    left: AtomicBool,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// Messages a client had to receive: sequence numbers `start..end` of its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Required {
    /// First required sequence number.
    pub start: u64,
    /// One past the last.
    pub end: u64,
}

impl ClientStats {
    /// A client of region `region` (its index in the message log), ready now.
    pub fn new(region: usize) -> Self {
        ClientStats {
            region,
            ready_ns: now_ns(),
            closed_ns: AtomicU64::new(0),
            first_seq: AtomicU64::new(NONE),
            last_seq: AtomicU64::new(NONE),
            frames: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            wrong_region: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            dropped_by_server: AtomicBool::new(false),
            left: AtomicBool::new(false),
        }
    }

    /// Distinct in-order messages received so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Counts a message that was not exactly one published (a frame of the wrong kind, an
    /// event whose `id:` disagrees with its data).
    pub fn count_corrupt(&self) {
        bump(&self.corrupt, 1);
    }

    /// The gateway ended the connection before the client left.
    pub fn mark_dropped_by_server(&self) {
        self.dropped_by_server.store(true, Ordering::Relaxed);
    }

    /// The client left on its own.
    pub fn mark_left(&self) {
        self.left.store(true, Ordering::Relaxed);
    }

    /// The reader has finished; call last.
    pub fn mark_closed(&self) {
        self.closed_ns.store(now_ns().max(1), Ordering::Release);
    }

    /// Whether the reader has finished (left, or dropped by the server).
    pub fn is_closed(&self) -> bool {
        self.closed_ns.load(Ordering::Acquire) != 0
    }

    /// The messages this client had to receive.
    ///
    /// `strict`: every message published on its region (clients connected before the first
    /// publish and stayed to the end). Otherwise those published from `grace` after the
    /// handshake until `grace` before the client left (or until `end_ns` if it did not leave
    /// on its own).
    pub fn required(&self, log: &MessageLog, strict: bool, grace_ns: u64, end_ns: u64) -> Required {
        let region = &log.regions[self.region];
        let published = region.published();
        if strict {
            return Required {
                start: 0,
                end: published,
            };
        }
        // A client the gateway dropped is judged as if it had stayed to the end.
        let closed = match self.closed_ns.load(Ordering::Acquire) {
            closed if closed != 0 && self.left.load(Ordering::Relaxed) => closed,
            _ => end_ns,
        };
        let start = region.first_sent_at_or_after(self.ready_ns.saturating_add(grace_ns));
        let end = match closed.checked_sub(grace_ns) {
            Some(limit) => region.first_sent_at_or_after(limit.saturating_add(1)),
            None => 0,
        };
        Required {
            start,
            end: end.max(start),
        }
    }

    /// Judges the client against what it had to receive.
    pub fn verdict(&self, required: Required) -> Verdict {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let first = load(&self.first_seq);
        let last = load(&self.last_seq);
        let mut lost = load(&self.skipped);
        let span = required.end - required.start;
        if first == NONE {
            lost = span;
        } else {
            // Missing at the head (first frame later than required) and at the tail.
            lost += first.min(required.end).saturating_sub(required.start);
            lost += required
                .end
                .saturating_sub(last.saturating_add(1).max(required.start));
            lost = lost.min(span.max(load(&self.skipped)));
        }
        Verdict {
            expected: span,
            delivered: load(&self.accepted),
            lost,
            duplicates: load(&self.duplicates),
            gaps: load(&self.gaps),
            wrong_region: load(&self.wrong_region),
            corrupt: load(&self.corrupt),
            unexpected: load(&self.unexpected),
            dropped_by_server: self.dropped_by_server.load(Ordering::Relaxed)
                && !self.left.load(Ordering::Relaxed),
            ..Verdict::default()
        }
    }
}

/// A running client: its stats and the handle that makes it leave.
#[derive(Debug)]
pub struct Running {
    /// What it saw.
    pub stats: Arc<ClientStats>,
    /// Dropping or sending makes the client close its socket and stop.
    pub leave: oneshot::Sender<()>,
    /// The reader task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the reader task for a freshly connected `socket` of region `region`.
pub fn spawn_reader(socket: Socket, region: usize, log: Arc<MessageLog>) -> Running {
    let stats = Arc::new(ClientStats::new(region));
    let (leave, left) = oneshot::channel();
    let task = tokio::spawn(read_loop(socket, stats.clone(), log, left));
    Running { stats, leave, task }
}

async fn read_loop(
    mut socket: Socket,
    stats: Arc<ClientStats>,
    log: Arc<MessageLog>,
    mut leave: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            biased;
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => on_frame(&stats, &log, text.as_bytes()),
                // The contract is text frames only.
                Some(Ok(Message::Binary(_))) => stats.count_corrupt(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    stats.mark_dropped_by_server();
                    break;
                }
                Some(Ok(_)) => {}
            },
            _ = &mut leave => {
                stats.mark_left();
                // Close handshake, then wait for the gateway to close the TCP connection
                // first, so TIME-WAIT lands on its side and not on this host's ephemeral
                // ports (which a run of 20,000 clients would otherwise exhaust for the next).
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = socket.close(None).await;
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
                break;
            }
        }
    }
    stats.mark_closed();
}

/// Verifies one received message (a WebSocket text frame, an SSE event's data) against the
/// log: the fast path compares bytes with the next expected one.
#[inline]
pub fn on_frame(stats: &ClientStats, log: &MessageLog, bytes: &[u8]) {
    bump(&stats.frames, 1);
    let region = &log.regions[stats.region];
    let last = stats.last_seq.load(Ordering::Relaxed);
    if last != NONE {
        if let Some(slot) = region.slot(last + 1) {
            if slot.matches(bytes) {
                accept(stats, last + 1, slot.sent_ns);
                return;
            }
        }
    }
    classify(stats, log, bytes, last);
}

#[inline]
fn accept(stats: &ClientStats, seq: u64, sent_ns: u64) {
    stats.last_seq.store(seq, Ordering::Relaxed);
    bump(&stats.accepted, 1);
    latency::record_ns(now_ns().saturating_sub(sent_ns));
}

/// The slow path: parse the frame to say what is wrong with it (or, for a client's first
/// frame, where its sequence starts).
#[cold]
fn classify(stats: &ClientStats, log: &MessageLog, bytes: &[u8], last: u64) {
    let Ok(message) = Notification::from_slice(bytes, usize::MAX) else {
        bump(&stats.corrupt, 1);
        return;
    };
    let own = &log.regions[stats.region];
    if message.region != own.region {
        if log.index_of(message.region).is_some() {
            bump(&stats.wrong_region, 1);
        } else {
            bump(&stats.unexpected, 1);
        }
        return;
    }
    let Some(seq) = message.extra.get("seq").and_then(|seq| seq.as_u64()) else {
        bump(&stats.unexpected, 1);
        return;
    };
    let Some(slot) = own.slot(seq) else {
        bump(&stats.unexpected, 1);
        return;
    };
    if !slot.matches(bytes) {
        bump(&stats.corrupt, 1);
        return;
    }
    if last == NONE {
        stats.first_seq.store(seq, Ordering::Relaxed);
    } else if seq <= last {
        bump(&stats.duplicates, 1);
        return;
    } else {
        bump(&stats.gaps, 1);
        bump(&stats.skipped, seq - last - 1);
    }
    accept(stats, seq, slot.sent_ns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_proto::Region;

    fn log() -> MessageLog {
        MessageLog::published_for_tests()
    }

    fn frame(log: &MessageLog, region: usize, seq: u64) -> Vec<u8> {
        log.regions[region]
            .slot(seq)
            .unwrap()
            .frame
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn in_order_delivery_is_clean() {
        let log = log();
        let stats = ClientStats::new(0);
        for seq in 0..6 {
            on_frame(&stats, &log, &frame(&log, 0, seq));
        }
        let verdict = stats.verdict(stats.required(&log, true, 0, 0));
        assert_eq!(verdict.expected, 6);
        assert_eq!(verdict.delivered, 6);
        assert_eq!(
            (
                verdict.lost,
                verdict.duplicates,
                verdict.gaps,
                verdict.corrupt
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn every_fault_is_classified() {
        let log = log();
        let stats = ClientStats::new(0);
        on_frame(&stats, &log, &frame(&log, 0, 1)); // head loss: 0 missing
        on_frame(&stats, &log, &frame(&log, 0, 1)); // duplicate
        on_frame(&stats, &log, &frame(&log, 0, 3)); // gap: seq 2 skipped
        on_frame(&stats, &log, &frame(&log, 1, 4)); // wrong region
        on_frame(&stats, &log, b"{not json"); // corrupt
        let altered = String::from_utf8(frame(&log, 0, 4))
            .unwrap()
            .replace("bench", "BENCH");
        on_frame(&stats, &log, altered.as_bytes()); // corrupt: valid but altered
        let foreign = notify_proto::Notification::new(
            Region::parse("AE").unwrap(),
            "x",
            "t",
            "https://x/y.jpg",
            "c",
            1,
        );
        on_frame(&stats, &log, foreign.to_json().as_bytes()); // unexpected: no seq
        on_frame(&stats, &log, &frame(&log, 0, 4));
        let verdict = stats.verdict(stats.required(&log, true, 0, 0));
        assert_eq!(verdict.delivered, 3);
        assert_eq!(verdict.duplicates, 1);
        assert_eq!(verdict.gaps, 1);
        assert_eq!(verdict.wrong_region, 1);
        assert_eq!(verdict.corrupt, 2);
        assert_eq!(verdict.unexpected, 1);
        // Missing: 0 (head), 2 (gap), 5 (tail).
        assert_eq!(verdict.lost, 3);
    }

    #[test]
    fn churn_requirements_follow_connection_lifetime() {
        let regions = [Region::parse("AE").unwrap()];
        let log = MessageLog::new(&regions, 10);
        let stats = ClientStats::new(0);
        let ready = stats.ready_ns;
        for seq in 0..10 {
            std::thread::sleep(Duration::from_millis(2));
            log.prepare(0, seq).unwrap();
        }
        log.regions[0].set_published(10);
        let sent = |seq: u64| log.regions[0].slot(seq).unwrap().sent_ns;
        // Grace chosen so that message 0 is inside it; leaving just after message 7.
        let grace = sent(0) - ready + 1;
        stats.left.store(true, Ordering::Relaxed);
        stats.closed_ns.store(sent(7) + grace, Ordering::Release);
        let required = stats.required(&log, false, grace, 0);
        assert_eq!(required, Required { start: 1, end: 8 });
        for seq in 1..8 {
            on_frame(&stats, &log, &frame_of(&log, seq));
        }
        let verdict = stats.verdict(required);
        assert_eq!((verdict.expected, verdict.lost), (7, 0));
    }

    fn frame_of(log: &MessageLog, seq: u64) -> Vec<u8> {
        frame(log, 0, seq)
    }
}
