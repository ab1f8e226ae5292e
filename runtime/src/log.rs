use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use skiff_spec::api::LogLine;
pub use skiff_spec::api::LogStream;
use tokio::sync::broadcast;

/// Longest line kept; longer output is split so one guest cannot balloon the ring.
const MAX_LINE: usize = 16 * 1024;
/// Bytes of lines one book keeps, whatever its line count: what a reader of
/// `tail=all` copies is bounded by this (its JSON encoding is made line by line).
const MAX_BOOK_BYTES: usize = 2 << 20;

/// The recent output of one app's containers: a bounded ring of lines plus a broadcast
/// channel for followers (`skiff logs -f`). Writers never block on slow readers: a
/// follower that lags loses lines, the guest does not wait.
#[derive(Debug)]
pub struct LogBook {
    lines: Mutex<Ring>,
    capacity: usize,
    /// Made on the first follow: a broadcast channel preallocates its whole ring, and a
    /// node holds thousands of apps nobody follows.
    tx: Mutex<Option<broadcast::Sender<LogLine>>>,
}

/// The kept lines and their bytes.
#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

/// Lines a follower may fall behind before it skips ahead.
const FOLLOW_BUFFER: usize = 256;

impl LogBook {
    /// A book keeping the last `capacity` lines.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            lines: Mutex::new(Ring::default()),
            capacity,
            tx: Mutex::new(None),
        })
    }

    /// Appends one line (without its newline).
    pub fn push(&self, container: &str, stream: LogStream, line: &str) {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = LogLine {
            ts_ms,
            container: container.to_string(),
            stream,
            line: line.to_string(),
        };
        let mut ring = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        ring.bytes += entry.line.len();
        ring.lines.push_back(entry.clone());
        while ring.lines.len() > self.capacity || ring.bytes > MAX_BOOK_BYTES {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.line.len();
        }
        // Sent under the lines lock so that `tail_and_subscribe` sees every line exactly
        // once. No receivers is fine: nobody is following.
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(entry);
        }
    }

    /// The last `n` lines and a receiver of every line written after them, with no
    /// line missed or repeated between the two.
    pub fn tail_and_subscribe(&self, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let ring = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let lines = &ring.lines;
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let rx = tx
            .get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe();
        (
            lines
                .iter()
                .skip(lines.len().saturating_sub(n))
                .cloned()
                .collect(),
            rx,
        )
    }

    /// A writer that splits what a guest writes into lines of this book.
    pub(crate) fn writer(self: &Arc<Self>, container: Arc<str>, stream: LogStream) -> LogWriter {
        LogWriter {
            book: self.clone(),
            container,
            stream,
            partial: Vec::new(),
        }
    }
}

/// Line-splitting sink for one guest stream; flushes a partial last line on shutdown
/// or drop.
pub(crate) struct LogWriter {
    book: Arc<LogBook>,
    container: Arc<str>,
    stream: LogStream,
    partial: Vec<u8>,
}

impl LogWriter {
    fn emit(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        self.book.push(&self.container, self.stream, text);
    }

    fn take(&mut self, mut buf: &[u8]) {
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.emit(&buf[..pos]);
            } else {
                self.partial.extend_from_slice(&buf[..pos]);
                let line = std::mem::take(&mut self.partial);
                self.emit(&line);
            }
            buf = &buf[pos + 1..];
        }
        self.partial.extend_from_slice(buf);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            self.emit(&line);
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_the_tail() {
        let book = LogBook::new(3);
        let (past, mut rx) = book.tail_and_subscribe(5);
        assert!(past.is_empty());
        {
            let mut w = book.writer("c1".into(), LogStream::Stdout);
            w.take(b"one\ntw");
            w.take(b"o\r\nthree\nfour\nunterminated");
        }
        let tail: Vec<String> = book
            .tail_and_subscribe(10)
            .0
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(tail, ["three", "four", "unterminated"]);
        assert_eq!(book.tail_and_subscribe(1).0[0].line, "unterminated");
        assert_eq!(rx.try_recv().unwrap().line, "one");
        assert_eq!(rx.try_recv().unwrap().line, "two");
    }

    #[test]
    fn splits_endless_lines() {
        let book = LogBook::new(10);
        let mut w = book.writer("c".into(), LogStream::Stderr);
        w.take(&vec![b'x'; MAX_LINE * 2 + 5]);
        drop(w);
        let lens: Vec<usize> = book
            .tail_and_subscribe(10)
            .0
            .iter()
            .map(|l| l.line.len())
            .collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 5]);
    }

    #[test]
    fn a_book_keeps_at_most_its_byte_budget() {
        let book = LogBook::new(100_000);
        let line = "\0".repeat(MAX_LINE);
        for _ in 0..1000 {
            book.push("c", LogStream::Stdout, &line);
        }
        let kept = book.tail_and_subscribe(usize::MAX).0;
        let bytes: usize = kept.iter().map(|l| l.line.len()).sum();
        assert!(bytes <= MAX_BOOK_BYTES, "{bytes}");
        assert_eq!(kept.len(), MAX_BOOK_BYTES / MAX_LINE);
    }
}
