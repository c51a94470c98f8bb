//! The text of an SSE stream (the WHATWG `text/event-stream` format): events, heartbeats,
//! `retry:`, and the last event a stream ends with.
//!
//! Pure functions appending to a buffer, so the encoding is tested on its own:
//! - a notification with an id: `id: <stream id>` then `data: <json>`; the browser's
//!   `EventSource` remembers the id and sends it back as `Last-Event-ID` when it reconnects;
//!   on a stream of several regions the `id:` is the last id per region so far
//!   (`id: AE:<id>,FI:<id>`);
//! - a notification without an id (plain `PUBLISH`): `data:` only, so the browser keeps the
//!   last id it had;
//! - a control message (`resync`, `close`): a named event, `event: <name>`, never an id;
//! - a heartbeat: a comment line, which `EventSource` ignores and proxies see as traffic;
//! - `retry: <ms>`: how long the browser waits before it reconnects.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use notify_proto::StreamId;
use serde::Serialize;

/// The heartbeat comment.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// The `event` of a notification: sent as the default (`message`) event type.
const NOTIFICATION_EVENT: &str = "new_trending";

/// Appends one message frame (canonical JSON, as the WebSocket sends it) as an event: a
/// notification as the default event type with its id when it has one, a control message as
/// a named event.
pub fn push_message(buffer: &mut BytesMut, id: Option<StreamId>, frame: &str) {
    push_message_at(buffer, id.as_ref().map(|id| id as &dyn fmt::Display), frame);
}

/// [`push_message`] with the event's id given as whatever prints it: on a stream of several
/// regions, the per-region position after this message (`AE:<id>,FI:<id>`,
/// [`crate::positions`]), so the browser's `Last-Event-ID` resumes every region.
pub fn push_message_at(buffer: &mut BytesMut, id: Option<&dyn fmt::Display>, frame: &str) {
    let name = event_name(frame);
    if let Some(name) = name {
        push_line(buffer, "event: ", name);
    } else if let Some(id) = id {
        push_line(buffer, "id: ", &id.to_string());
    }
    push_data(buffer, frame);
}

/// Appends `retry: <ms>`.
pub fn push_retry(buffer: &mut BytesMut, delay: Duration) {
    push_line(buffer, "retry: ", &delay.as_millis().to_string());
    buffer.extend_from_slice(b"\n");
}

/// The last event of a stream the gateway ends: `event: close` with the WebSocket close code
/// that means the same (1001 shutting down, 1008 slow consumer, 1013 retry later) and a
/// reason. The browser reconnects by itself after the `retry:` sent with it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEnd<'a> {
    /// Always `close`.
    event: &'static str,
    /// What the WebSocket would close with.
    code: u16,
    /// Why, in words.
    reason: &'a str,
}

/// Appends the `close` event and the `retry:` that spaces the browser's reconnect.
pub fn push_end(buffer: &mut BytesMut, code: u16, reason: &str, retry: Duration) {
    let end = StreamEnd {
        event: "close",
        code,
        reason,
    };
    push_retry(buffer, retry);
    match serde_json::to_string(&end) {
        Ok(json) => {
            push_line(buffer, "event: ", "close");
            push_data(buffer, &json);
        }
        // Serializing a struct of a string and a number cannot fail; were it to, the stream
        // still ends, and the browser still reconnects.
        Err(error) => tracing::warn!(%error, "cannot encode the close event"),
    }
}

/// The name of a control message's event (`resync`), or `None` for a notification. Frames
/// are the gateway's own canonical JSON, whose first field is `event`; a name that is not
/// plain lowercase ASCII is treated as a notification rather than written into the stream.
fn event_name(frame: &str) -> Option<&str> {
    let rest = frame.strip_prefix(r#"{"event":""#)?;
    let name = &rest[..rest.find('"')?];
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    (plain && name != NOTIFICATION_EVENT).then_some(name)
}

fn push_line(buffer: &mut BytesMut, field: &str, value: &str) {
    buffer.extend_from_slice(field.as_bytes());
    buffer.extend_from_slice(value.as_bytes());
    buffer.extend_from_slice(b"\n");
}

/// `data:` lines for `text` and the blank line that ends the event. Compact JSON has no line
/// breaks; were there any (CR, LF or CRLF), each line becomes its own `data:` line, which the
/// browser joins back with LF.
fn push_data(buffer: &mut BytesMut, text: &str) {
    let mut rest = text;
    loop {
        // memchr2 scans a word at a time; `str::find` with a char-set pattern decodes and
        // compares char by char, and this runs once per message per stream.
        match memchr::memchr2(b'\r', b'\n', rest.as_bytes()) {
            None => {
                push_line(buffer, "data: ", rest);
                break;
            }
            Some(at) => {
                push_line(buffer, "data: ", &rest[..at]);
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
        }
    }
    buffer.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buffer: &BytesMut) -> &str {
        std::str::from_utf8(buffer).unwrap()
    }

    #[test]
    fn notifications_carry_their_id_control_messages_their_name() {
        let mut buffer = BytesMut::new();
        let notification = r#"{"event":"new_trending","region":"AE","title":"عاجل"}"#;
        push_message(&mut buffer, Some(StreamId::new(5, 1)), notification);
        assert_eq!(text(&buffer), format!("id: 5-1\ndata: {notification}\n\n"));

        buffer.clear();
        push_message(&mut buffer, None, notification);
        assert_eq!(text(&buffer), format!("data: {notification}\n\n"));

        buffer.clear();
        let resync = r#"{"event":"resync","region":"AE","since":"1-0","reason":"x"}"#;
        push_message(&mut buffer, Some(StreamId::new(9, 0)), resync);
        assert_eq!(text(&buffer), format!("event: resync\ndata: {resync}\n\n"));
    }

    #[test]
    fn odd_frames_cannot_inject_fields() {
        let mut buffer = BytesMut::new();
        push_message(
            &mut buffer,
            None,
            "{\"event\":\"x\ny\"}\r\nid: 1-0\rretry: 1",
        );
        assert_eq!(
            text(&buffer),
            "data: {\"event\":\"x\ndata: y\"}\ndata: id: 1-0\ndata: retry: 1\n\n"
        );
        buffer.clear();
        push_message(&mut buffer, None, r#"{"event":"Bad Name","a":1}"#);
        assert!(text(&buffer).starts_with("data: "), "{}", text(&buffer));
    }

    #[test]
    fn the_end_says_why_and_when_to_come_back() {
        let mut buffer = BytesMut::new();
        push_end(
            &mut buffer,
            1001,
            "server shutting down",
            Duration::from_millis(750),
        );
        assert_eq!(
            text(&buffer),
            "retry: 750\n\nevent: close\ndata: {\"event\":\"close\",\"code\":1001,\"reason\":\"server shutting down\"}\n\n"
        );
    }
}
