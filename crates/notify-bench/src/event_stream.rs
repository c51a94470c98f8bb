//! The client side of the `text/event-stream` format (WHATWG HTML, "Server-sent events",
//! §9.2.6 "Interpreting an event stream"): bytes in, events out, as a browser's `EventSource`
//! sees them.
//!
//! Lines end with CRLF, LF or CR (also split across reads); a line starting with `:` is a
//! comment (the gateway's heartbeat); `field: value` sets `event`, `data` (joined with LF)
//! or `id`, one space after the colon removed; `retry` (the browser's business) and unknown
//! fields are ignored; a blank line dispatches the event, unless it has no data. What the parser holds is bounded: a line
//! and an event's data may each be at most [`EventParser::new`]'s `max_bytes`.

use thiserror::Error;

/// One dispatched event, borrowed from the parser until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// `event:`; `None` for the default type (`message`).
    pub name: Option<&'a str>,
    /// The `data:` lines joined with LF.
    pub data: &'a [u8],
    /// `id:` when this event set one (the browser would also keep an earlier one).
    pub id: Option<&'a [u8]>,
}

/// A stream the parser gives up on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// A line or an event's data longer than the bound.
    #[error("SSE line or event data over {limit} bytes")]
    TooLong {
        /// The bound.
        limit: usize,
    },
}

/// Incremental parser of one stream.
#[derive(Debug)]
pub struct EventParser {
    /// The unfinished line of the last read.
    line: Vec<u8>,
    /// The last read ended with CR: an LF starting the next one belongs to it.
    after_cr: bool,
    data: Vec<u8>,
    /// Some `data:` line was seen (data may be empty but present).
    has_data: bool,
    name: String,
    id: Vec<u8>,
    has_id: bool,
    max_bytes: usize,
}

impl EventParser {
    /// A parser refusing lines or event data over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        EventParser {
            line: Vec::new(),
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            name: String::new(),
            id: Vec::new(),
            has_id: false,
            max_bytes,
        }
    }

    /// Parses `bytes`, the next piece of the stream, calling `on_event` for each complete
    /// event. `on_event` returns false to stop parsing (the rest of `bytes` is dropped).
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(Event<'_>) -> bool,
    ) -> Result<(), ParseError> {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, rest) = bytes.split_at(end);
            bytes = match rest {
                [b'\r', b'\n', rest @ ..] => rest,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, rest @ ..] => rest,
                [] => &[],
            };
            let keep_going = if self.line.is_empty() {
                self.on_line(head, &mut on_event)?
            } else {
                self.append_line(head)?;
                let line = std::mem::take(&mut self.line);
                let keep_going = self.on_line(&line, &mut on_event);
                self.line = line;
                self.line.clear();
                keep_going?
            };
            if !keep_going {
                return Ok(());
            }
        }
        self.append_line(bytes)
    }

    fn append_line(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        if self.line.len() + bytes.len() > self.max_bytes {
            return Err(ParseError::TooLong {
                limit: self.max_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// One complete line; false when `on_event` asked to stop.
    fn on_line(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(Event<'_>) -> bool,
    ) -> Result<bool, ParseError> {
        if line.is_empty() {
            return Ok(self.dispatch(on_event));
        }
        if line[0] == b':' {
            return Ok(true);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_bytes {
                    return Err(ParseError::TooLong {
                        limit: self.max_bytes,
                    });
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.push_str(&String::from_utf8_lossy(value));
            }
            // An id with NUL is ignored, as the browser ignores it.
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(value);
                self.has_id = true;
            }
            _ => {}
        }
        Ok(true)
    }

    /// The blank line: hands the event over (when it has data) and starts the next one.
    fn dispatch(&mut self, on_event: &mut impl FnMut(Event<'_>) -> bool) -> bool {
        let keep_going = if self.has_data {
            on_event(Event {
                name: (!self.name.is_empty() && self.name != "message").then_some(&self.name),
                data: &self.data,
                id: self.has_id.then_some(&self.id[..]),
            })
        } else {
            true
        };
        self.data.clear();
        self.has_data = false;
        self.name.clear();
        self.has_id = false;
        keep_going
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, data, id) of every event in `pieces`, fed one after the other.
    fn events(pieces: &[&[u8]]) -> Vec<(Option<String>, String, Option<String>)> {
        let mut parser = EventParser::new(1024);
        let mut seen = Vec::new();
        for piece in pieces {
            parser
                .feed(piece, |event| {
                    seen.push((
                        event.name.map(str::to_owned),
                        String::from_utf8(event.data.to_vec()).unwrap(),
                        event.id.map(|id| String::from_utf8(id.to_vec()).unwrap()),
                    ));
                    true
                })
                .unwrap();
        }
        seen
    }

    fn event(
        name: Option<&str>,
        data: &str,
        id: Option<&str>,
    ) -> (Option<String>, String, Option<String>) {
        (
            name.map(str::to_owned),
            data.to_owned(),
            id.map(str::to_owned),
        )
    }

    #[test]
    fn the_gateways_events_come_out_as_sent() {
        let stream = b"retry: 412\n\nid: 5-1\ndata: {\"a\":1}\n\ndata: {\"b\":2}\n\n:\n\nevent: resync\ndata: {\"event\":\"resync\"}\n\n";
        assert_eq!(
            events(&[stream]),
            vec![
                event(None, "{\"a\":1}", Some("5-1")),
                event(None, "{\"b\":2}", None),
                event(Some("resync"), "{\"event\":\"resync\"}", None),
            ]
        );
    }

    #[test]
    fn every_split_and_line_ending_gives_the_same_events() {
        let expected = vec![
            event(None, "x\ny", Some("1-0")),
            event(Some("close"), "z", None),
        ];
        for ending in ["\n", "\r\n", "\r"] {
            let text = "id: 1-0\ndata: x\ndata:y\n\n: beat\n\nevent: close\ndata: z\n\n"
                .replace('\n', ending);
            let bytes = text.as_bytes();
            assert_eq!(events(&[bytes]), expected, "{ending:?} in one piece");
            for split in 1..bytes.len() {
                let (a, b) = bytes.split_at(split);
                assert_eq!(events(&[a, b]), expected, "{ending:?} split at {split}");
            }
            let mut single: Vec<&[u8]> = bytes.chunks(1).collect();
            single.insert(3, b"");
            single.push(b"");
            assert_eq!(events(&single), expected, "{ending:?} byte by byte");
        }
    }

    #[test]
    fn fields_follow_the_browser_rules() {
        assert_eq!(
            events(&[b"data\n\ndata:  two spaces\nfoo: ignored\n\nid\ndata: empty id\n\nid: a\0b\ndata: nul\n\n"]),
            vec![
                event(None, "", None),
                event(None, " two spaces", None),
                event(None, "empty id", Some("")),
                event(None, "nul", None),
            ]
        );
        // No data, no event; the name does not carry over.
        assert_eq!(
            events(&[b"event: resync\n\ndata: d\n\n"]),
            vec![event(None, "d", None)]
        );
        assert_eq!(
            events(&[b"event: message\ndata: d\n\n"]),
            vec![event(None, "d", None)]
        );
        // An unfinished event is not dispatched.
        assert_eq!(events(&[b"data: half"]), vec![]);
    }

    #[test]
    fn a_stop_drops_the_rest() {
        let mut parser = EventParser::new(64);
        let mut seen = 0;
        parser
            .feed(b"data: 1\n\ndata: 2\n\n", |_| {
                seen += 1;
                false
            })
            .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn long_lines_and_data_are_refused() {
        let mut parser = EventParser::new(16);
        let error = parser.feed(&[b'x'; 17], |_| true).unwrap_err();
        assert_eq!(error, ParseError::TooLong { limit: 16 });
        let mut parser = EventParser::new(16);
        for _ in 0..4 {
            parser.feed(&[b'x'; 4], |_| true).unwrap();
        }
        let error = parser.feed(b"x", |_| true).unwrap_err();
        assert_eq!(error, ParseError::TooLong { limit: 16 });
        let mut parser = EventParser::new(16);
        parser.feed(b"data: 0123456789\n", |_| true).unwrap();
        let error = parser.feed(b"data: 0123456789\n", |_| true).unwrap_err();
        assert_eq!(error, ParseError::TooLong { limit: 16 });
    }
}
