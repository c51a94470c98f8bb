//! Reading NDJSON input (a file or stdin) one line at a time, with bounded memory.
//!
//! A line is read into memory only up to the payload limit: a longer one is reported as bad
//! (by its number) and skipped to its newline without being kept, so `yes | notify-publish
//! --input -` or a file without newlines cannot grow the process. Lines are numbered from 1,
//! blank lines included, so `line 3` is line 3 in an editor; blank lines are skipped, `\r\n`
//! endings and a leading UTF-8 byte-order mark are accepted.

use std::io;

use bytes::{Bytes, BytesMut};
use notify_proto::{Notification, PayloadError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

use crate::input::parse_line;

/// Bytes a raw line may carry beyond the payload limit: a byte-order mark and a `\r`.
const LINE_SLACK: usize = 4;

/// Bytes asked of the reader at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Why one line is not a notification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    /// Longer than the payload limit; the rest of it was skipped unread.
    #[error("line is longer than the {limit}-byte payload limit")]
    TooLong {
        /// The limit in force (`--max-payload-bytes`).
        limit: usize,
    },
    /// Not a valid notification.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// One non-blank input line and what it parsed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 1-based line number in the input, blank lines included.
    pub number: usize,
    /// Its length in bytes, as far as it was read (at most the limit and a few bytes).
    pub bytes: usize,
    /// The notification, or why the line is not one.
    pub parsed: Result<Notification, LineError>,
}

/// The non-blank lines of an NDJSON input, parsed one by one. The codec's buffer holds at
/// most one line up to the limit plus one read.
#[derive(Debug)]
pub struct InputLines<R> {
    reader: R,
    buffer: BytesMut,
    codec: AnyDelimiterCodec,
    at_end: bool,
    number: usize,
    now: i64,
    max_bytes: usize,
}

impl<R: AsyncRead + Unpin> InputLines<R> {
    /// Lines of `reader`; `now` fills a missing `ts`, `max_bytes` is the payload limit.
    pub fn new(reader: R, now: i64, max_bytes: usize) -> Self {
        let codec = AnyDelimiterCodec::new_with_max_length(
            b"\n".to_vec(),
            Vec::new(),
            max_bytes.saturating_add(LINE_SLACK),
        );
        InputLines {
            reader,
            buffer: BytesMut::new(),
            codec,
            at_end: false,
            number: 0,
            now,
            max_bytes,
        }
    }

    /// The next non-blank line; `None` at the end of the input. Cancel-safe: a call dropped
    /// before it completes loses nothing.
    pub async fn next(&mut self) -> Option<io::Result<Line>> {
        loop {
            let frame = self.next_frame().await?;
            self.number += 1;
            let raw = match frame {
                Ok(raw) => raw,
                Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                    return Some(Ok(Line {
                        number: self.number,
                        bytes: self.max_bytes,
                        parsed: Err(LineError::TooLong {
                            limit: self.max_bytes,
                        }),
                    }));
                }
                Err(AnyDelimiterCodecError::Io(error)) => return Some(Err(error)),
            };
            let mut line = &raw[..];
            if self.number == 1 {
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(Line {
                number: self.number,
                bytes: line.len(),
                parsed: parse_line(line, self.now, self.max_bytes).map_err(LineError::from),
            }));
        }
    }

    /// The next raw line. Unlike `FramedRead`, which ends its stream at the first error,
    /// this goes on after an overlong line: the codec skips the rest of it.
    async fn next_frame(&mut self) -> Option<Result<Bytes, AnyDelimiterCodecError>> {
        loop {
            let decoded = if self.at_end {
                self.codec.decode_eof(&mut self.buffer)
            } else {
                self.codec.decode(&mut self.buffer)
            };
            match decoded {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Err(error) => return Some(Err(error)),
                Ok(None) if self.at_end => return None,
                Ok(None) => {}
            }
            self.buffer.reserve(READ_CHUNK);
            match self.reader.read_buf(&mut self.buffer).await {
                Ok(0) => self.at_end = true,
                Ok(_) => {}
                Err(error) => return Some(Err(error.into())),
            }
        }
    }

    /// Lines read so far, blank ones included.
    pub fn lines_read(&self) -> usize {
        self.number
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_proto::DEFAULT_MAX_PAYLOAD_BYTES as MAX;

    const NOW: i64 = 1_764_290_000;
    const GOOD: &str = r#"{"event":"new_trending","region":"DK","video_id":"v","title":"ø å","thumbnail":"https://x.dk/a.jpg","channel":"c"}"#;

    async fn all(input: &[u8], max: usize) -> Vec<Line> {
        let mut lines = InputLines::new(input, NOW, max);
        let mut out = Vec::new();
        while let Some(line) = lines.next().await {
            out.push(line.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn numbers_lines_and_skips_blanks() {
        let input = format!("\u{feff}{GOOD}\r\n\n   \n{{\"event\":\"new_trending\"}}\n{GOOD}\n");
        let lines = all(input.as_bytes(), MAX).await;
        let numbers: Vec<usize> = lines.iter().map(|line| line.number).collect();
        assert_eq!(numbers, [1, 4, 5]);
        assert!(lines[0].parsed.is_ok());
        assert_eq!(
            lines[1].parsed.as_ref().unwrap_err().to_string(),
            "field `region` is missing"
        );
        assert_eq!(lines[2].parsed.as_ref().unwrap().title, "ø å");
        assert!(all(b"", MAX).await.is_empty());
        assert!(all(b"\n\n", MAX).await.is_empty());
        // The last line needs no newline.
        assert_eq!(all(GOOD.as_bytes(), MAX).await.len(), 1);
    }

    #[tokio::test]
    async fn an_overlong_line_is_bad_and_skipped_unread() {
        let long = format!("{{\"title\":\"{}\"}}", "x".repeat(10_000));
        let input = format!("{GOOD}\n{long}\n{GOOD}\n{long}");
        let lines = all(input.as_bytes(), 1000).await;
        let numbers: Vec<usize> = lines.iter().map(|line| line.number).collect();
        assert_eq!(numbers, [1, 2, 3, 4]);
        assert!(lines[0].parsed.is_ok());
        assert_eq!(lines[1].parsed, Err(LineError::TooLong { limit: 1000 }));
        assert!(
            lines[2].parsed.is_ok(),
            "the line after a long one is whole"
        );
        assert_eq!(lines[3].parsed, Err(LineError::TooLong { limit: 1000 }));
        // Just over the limit, but within the slack for `\r`: still too large.
        let exact = GOOD.len();
        let lines = all(format!("{GOOD}\r\n").as_bytes(), exact - 1).await;
        assert_eq!(
            lines[0]
                .parsed
                .as_ref()
                .unwrap_err()
                .to_string()
                .split(' ')
                .next(),
            Some("payload")
        );
    }
}
