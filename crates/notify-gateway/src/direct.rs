//! Direct writes: a plain-TCP WebSocket written straight from its region's fan-out.
//!
//! At a steady rate most clients are caught up: their socket's send buffer is empty when a
//! message arrives. For those the fan-out itself writes the message's frame into the socket
//! (one `write(2)`, the frame encoded once per message for the whole region), instead of
//! waking the connection's task to do it. The task only writes when a client is behind.
//!
//! Every accepted plain-TCP connection is served through a [`SharedStream`]: reads go to the
//! socket's read half as before; every write — HTTP, and after the upgrade everything
//! tungstenite sends (its pongs, pings, close frames, batches) — goes through the
//! connection's [`SocketOutlet`], whose one lock decides who writes, so frames never
//! interleave. TLS connections (encrypted per connection) keep the task path and the ring.
//!
//! # Who writes
//! A WebSocket's outlet is attached to its region's hub ([`notify_core::Hub::attach`]) when its
//! connection starts, in [`Mode::TaskWrites`]: its task writes what its ring subscription
//! holds (the one taken at admission), then hands over to the fan-out ([`Mode::Direct`]) by
//! giving the subscription back ([`notify_core::Hub::release`], under the region's lock) once
//! nothing is waiting: the ring drained, no unsent bytes, its own write buffer flushed, and any
//! resume replay past its seam. Then each message is written with one non-blocking
//! `try_write` under the outlet's lock:
//! - written whole: counted as delivered, its fan-out latency recorded — no task wake-up;
//! - written in part: the unsent tail is kept and written first by whatever writes next; the
//!   task is woken with a ring subscription that starts after this message;
//! - not written (the socket's buffer is full), or published in a burst (the hub was idle
//!   less than [`BURST_GAP`] before it: messages are waiting, and the task batches them into
//!   far fewer writes): the task is woken with a ring subscription that starts with this
//!   message ([`notify_core::Published::subscribe`]). The task keeps reading the ring until
//!   the hub has been idle for [`BURST_GAP`].
//!
//! A write of tungstenite's (pongs, pings, close frames) that the socket takes only in part
//! may end mid-frame: the fan-out stops writing ([`Mode::Held`]) and the next message opens
//! a ring subscription for the task, which writes everything after the rest of that frame.
//!
//! # Slow consumers
//! A client behind is a ring subscriber like any other: past the queue limit it is closed
//! with 1008, and its task writes through tungstenite, so `--ws-max-write-buffer-bytes` and
//! `--write-timeout` apply unchanged; the publisher never waits for a socket. Memory per
//! client behind is a ring position, as before — frames are never queued per connection.
//!
//! A connection to one region (nearly all) is written this way. A connection to several
//! (`?region=AE,FI`) keeps the task path: its task takes the regions' messages round-robin
//! from their rings ([`crate::feed`]), which one outlet per region could not interleave.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use metrics::{Counter, Histogram};
use notify_core::{Attachment, Handled, Outlet, Published, Subscription};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A plain-TCP connection as hyper and tungstenite see it: the socket's read half, and its
/// writes routed through the connection's [`SocketOutlet`].
#[derive(Debug)]
pub struct SharedStream {
    reader: OwnedReadHalf,
    outlet: Arc<SocketOutlet>,
}

impl SharedStream {
    /// Splits `stream`; the outlet is what a WebSocket on it attaches to its region.
    pub fn new(stream: TcpStream) -> (Self, Arc<SocketOutlet>) {
        let (reader, writer) = stream.into_split();
        let outlet = Arc::new(SocketOutlet {
            state: Mutex::new(WriteState {
                writer,
                mode: Mode::TaskWrites,
                partial: None,
                handover: None,
                skip_through: 0,
                waker: None,
            }),
        });
        let stream = SharedStream {
            reader,
            outlet: Arc::clone(&outlet),
        };
        (stream, outlet)
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.outlet.lock();
        ready!(state.poll_write_partial(cx))?;
        let written = ready!(Pin::new(&mut state.writer).poll_write(cx, buf))?;
        if written < buf.len() && state.mode == Mode::Direct {
            // What is left may end mid-frame: nothing else may be written before it.
            state.mode = Mode::Held;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.outlet.lock();
        ready!(state.poll_write_partial(cx))?;
        Pin::new(&mut state.writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.outlet.lock();
        Pin::new(&mut state.writer).poll_shutdown(cx)
    }
}

/// One connection's write side, shared by its task (through [`SharedStream`]) and, once its
/// WebSocket is attached, its region's fan-out ([`Outlet`]).
#[derive(Debug)]
pub struct SocketOutlet {
    state: Mutex<WriteState>,
}

/// A message published less than this after the hub's previous publish finished is part of
/// a burst (or of a load that keeps the publisher busy): left to the connection's task, which
/// writes it in batches (a write per batch, not per message).
pub const BURST_GAP: Duration = Duration::from_millis(2);

/// Who may write next (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The connection's task writes what its ring subscription holds; the fan-out leaves
    /// every message to the ring.
    TaskWrites,
    /// The fan-out writes each message at once when the socket takes it whole.
    Direct,
    /// A write of the task's ended mid-frame: the fan-out must not write, and the next
    /// message opens a ring subscription for the task.
    Held,
    /// The connection is ending: the fan-out writes nothing more.
    Closed,
}

#[derive(Debug)]
struct WriteState {
    writer: OwnedWriteHalf,
    mode: Mode,
    /// The unsent tail of a frame the fan-out wrote in part, and when its message was
    /// received; written before anything else.
    partial: Option<Box<(Bytes, Instant)>>,
    /// A ring subscription the fan-out opened for the task when it stopped writing.
    handover: Option<Subscription<Utf8Bytes>>,
    /// Messages up to this sequence number were written (at least in part) by the fan-out:
    /// the task's ring skips them.
    skip_through: u64,
    /// The task, when it waits for a handover.
    waker: Option<Waker>,
}

/// What a direct write counts: the same counters for every connection, registered once
/// (not held per connection: an idle connection's memory is what it holds).
static DELIVERY: LazyLock<Delivery> = LazyLock::new(|| {
    let direct_writes = metrics::counter!("notify_websocket_direct_writes_total");
    direct_writes.absolute(0);
    Delivery {
        delivered: metrics::counter!("notify_messages_delivered_total", "transport" => "websocket"),
        fanout_latency: metrics::histogram!("notify_fanout_latency_seconds"),
        direct_writes,
    }
});

/// Registers the direct-write counters with the installed metrics recorder, so they are
/// exported from the start (call after installing it).
pub fn register_metrics() {
    LazyLock::force(&DELIVERY);
}

/// What a direct write counts.
#[derive(Debug, Clone)]
struct Delivery {
    /// `notify_messages_delivered_total{transport="websocket"}`.
    pub delivered: Counter,
    /// `notify_fanout_latency_seconds`.
    pub fanout_latency: Histogram,
    /// `notify_websocket_direct_writes_total`.
    pub direct_writes: Counter,
}

impl Delivery {
    fn written(&self, received_at: Instant) {
        self.delivered.increment(1);
        self.fanout_latency
            .record(received_at.elapsed().as_secs_f64());
    }
}

impl SocketOutlet {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the fan-out left for the task since it last looked: a ring subscription to read
    /// (and take), or — with no subscription — the tail of a direct write to flush. Pending,
    /// with the task woken later, while there is neither.
    pub fn poll_handover(&self, cx: &mut Context<'_>) -> Poll<Option<Subscription<Utf8Bytes>>> {
        let mut state = self.lock();
        if let Some(ring) = state.handover.take() {
            return Poll::Ready(Some(ring));
        }
        if state.partial.is_some() {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A ring subscription the fan-out left, if any, without waiting.
    pub fn take_handover(&self) -> Option<Subscription<Utf8Bytes>> {
        self.lock().handover.take()
    }

    /// Whether the fan-out wrote the message with this sequence number (at least in part).
    pub fn wrote(&self, sequence: u64) -> bool {
        sequence <= self.lock().skip_through
    }

    /// Hands writing to the fan-out when nothing waits: called by the task after a flush that
    /// left its own buffer empty, with its ring subscription if it has one (given back
    /// through the outlet's `attachment` to its region when drained; otherwise returned).
    /// Returns the subscription still to read.
    pub fn release(
        &self,
        ring: Option<Subscription<Utf8Bytes>>,
        attachment: &Attachment<Utf8Bytes>,
    ) -> Option<Subscription<Utf8Bytes>> {
        let hand_over = || {
            let mut state = self.lock();
            let idle = matches!(state.mode, Mode::TaskWrites | Mode::Held)
                && state.handover.is_none()
                && state.partial.is_none();
            if idle {
                state.mode = Mode::Direct;
            }
            idle
        };
        match ring {
            Some(ring) => attachment.release(ring, BURST_GAP, hand_over).err(),
            None => {
                // Without a subscription nothing was left to the ring since the last handover
                // (a message would have opened one), so only the outlet's lock is needed.
                let mut state = self.lock();
                if state.mode == Mode::Held && state.handover.is_none() && state.partial.is_none() {
                    state.mode = Mode::Direct;
                }
                None
            }
        }
    }

    /// Stops the fan-out's writes for good (the connection is ending; only its task writes
    /// from now on: its close frame). The caller then drops the outlet's attachment.
    pub fn close(&self) {
        let mut state = self.lock();
        state.mode = Mode::Closed;
        state.handover = None;
        state.waker = None;
    }

    /// Who writes now.
    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Whether the tail of a direct write is still unsent.
    pub fn has_unsent_tail(&self) -> bool {
        self.lock().partial.is_some()
    }
}

impl WriteState {
    /// Writes the tail of a partly written direct frame, if any.
    fn poll_write_partial(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(partial) = &mut self.partial {
            let (tail, received_at) = &mut **partial;
            let written = ready!(Pin::new(&mut self.writer).poll_write(cx, tail))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            tail.advance(written);
            if tail.is_empty() {
                DELIVERY.written(*received_at);
                self.partial = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Leaves messages from this one on to the task, through a ring subscription.
    fn hand_over(&mut self, published: &Published<'_, Utf8Bytes>) {
        self.handover = Some(published.subscribe());
        self.mode = Mode::TaskWrites;
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Outlet<Utf8Bytes> for SocketOutlet {
    fn deliver(&self, published: &Published<'_, Utf8Bytes>) -> Handled {
        let mut state = self.lock();
        match state.mode {
            Mode::Closed | Mode::TaskWrites => return Handled::Ring,
            Mode::Held => {
                state.hand_over(published);
                return Handled::Ring;
            }
            Mode::Direct => {}
        }
        if published
            .since_previous()
            .is_some_and(|gap| gap < BURST_GAP)
        {
            state.hand_over(published);
            return Handled::Ring;
        }
        let envelope = published.envelope();
        let wire = published.wire(encode_text_frame);
        match state.writer.try_write(wire) {
            Ok(written) if written == wire.len() => {
                DELIVERY.written(envelope.received_at);
                DELIVERY.direct_writes.increment(1);
                Handled::Took
            }
            Ok(written) => {
                state.partial = Some(Box::new((wire.slice(written..), envelope.received_at)));
                state.skip_through = envelope.sequence();
                state.hand_over(published);
                Handled::TookThenRing
            }
            Err(error) => {
                // Would block, or the socket failed: the task writes it (and meets the
                // failure, if any, with its cause).
                if error.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(%error, "direct write failed; the connection's task takes over");
                }
                state.hand_over(published);
                Handled::Ring
            }
        }
    }
}

/// A server-to-client text frame (unmasked, final) carrying `payload`: the same bytes
/// tungstenite writes for `Message::Text(payload)`, built once per message.
pub fn encode_text_frame(payload: &Utf8Bytes) -> Bytes {
    let payload = payload.as_str().as_bytes();
    let length = payload.len();
    let mut frame = BytesMut::with_capacity(length + 10);
    frame.put_u8(0x81); // FIN + text
    if length < 126 {
        frame.put_u8(length as u8);
    } else if let Ok(length) = u16::try_from(length) {
        frame.put_u8(126);
        frame.put_u16(length);
    } else {
        frame.put_u8(127);
        frame.put_u64(length as u64);
    }
    frame.extend_from_slice(payload);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_core::Hub;
    use notify_proto::Region;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    #[test]
    fn the_frame_is_what_tungstenite_writes() {
        for length in [0, 1, 125, 126, 300, 65_535, 65_536, 70_000] {
            let text = "x".repeat(length);
            let mut expected = Vec::new();
            Frame::message(text.clone(), OpCode::Data(Data::Text), true)
                .format(&mut expected)
                .unwrap();
            let encoded = encode_text_frame(&Utf8Bytes::from(text));
            assert_eq!(&encoded[..], &expected[..], "payload of {length} B");
        }
    }

    /// A frame as the client reads it: opcode and payload; panics on a malformed one.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 2, "a truncated frame header");
            assert_eq!(bytes[0] & 0xF0, 0x80, "FIN set, no reserved bits");
            assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
            let (length, header) = match bytes[1] & 0x7F {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => panic!("no frame here is that long"),
                length => (usize::from(length), 2),
            };
            assert!(bytes.len() >= header + length, "a truncated frame");
            frames.push((bytes[0] & 0x0F, bytes[header..header + length].to_vec()));
            bytes = &bytes[header + length..];
        }
        frames
    }

    /// The fan-out writes into a socket until one frame goes out only in part; a write of the
    /// task's (a pong, through the same stream tungstenite writes to) must wait for that
    /// frame's tail. Real loopback sockets with small buffers, a peer that reads only at the
    /// end and checks every frame.
    #[tokio::test]
    async fn a_task_write_waits_for_the_tail_of_a_direct_write() {
        let region = Region::parse("AE").unwrap();
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let (stream, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (mut peer, _) = accepted.unwrap();
        let (mut shared, outlet) = SharedStream::new(stream.unwrap());

        let hub = Arc::new(Hub::<Utf8Bytes>::new([region], 1024));
        let subscription = hub.subscribe(region).unwrap();
        let attachment = hub.attach(region, Arc::clone(&outlet) as _).unwrap();
        assert!(
            outlet.release(Some(subscription), &attachment).is_none(),
            "caught up"
        );
        assert_eq!(outlet.mode(), Mode::Direct);

        let mut published = 0;
        while outlet.mode() == Mode::Direct {
            assert!(published < 1000, "the socket never filled");
            let text = format!("m{published:04}{}", "x".repeat(2995));
            hub.publish(region, None, Utf8Bytes::from(text));
            published += 1;
            // Past the burst gap, so each message is written directly.
            tokio::time::sleep(BURST_GAP + Duration::from_millis(1)).await;
        }
        assert!(
            outlet.has_unsent_tail(),
            "the last frame went out in part (rerun if the socket took none of it)"
        );

        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            peer.read_to_end(&mut received).await.unwrap();
            received
        });
        let pong = [0x8A, 0x03, b'p', b'o', b'n'];
        tokio::time::timeout(Duration::from_secs(5), async {
            shared.write_all(&pong).await.unwrap();
            shared.flush().await.unwrap();
            shared.shutdown().await.unwrap();
        })
        .await
        .expect("the pong was written once the peer read");
        let received = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();

        let frames = frames(&received);
        assert_eq!(
            frames.len(),
            published + 1,
            "every frame whole, then the pong"
        );
        for (n, (opcode, payload)) in frames[..published].iter().enumerate() {
            assert_eq!(*opcode, 1, "a text frame");
            assert!(payload.starts_with(format!("m{n:04}").as_bytes()));
        }
        assert_eq!(frames[published], (0xA, b"pon".to_vec()));
    }
}
